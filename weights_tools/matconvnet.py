"""Read MatConvNet's ``imagenet-vgg-verydeep-16/19.mat`` (SimpleNN layout) with scipy.

The file (MATLAB v5/v7) holds a struct array or cell array ``layers``; each layer has
``name``, ``type`` (``conv``, ``relu``, ``pool``, ``softmax``) and, for ``conv``,
``weights = {W, b}`` (older releases: ``filters`` and ``biases``). ``W`` is
``(h, w, in, out)`` and MatConvNet's ``vl_nnconv`` is a cross-correlation, so ours is
``W.transpose(3, 2, 0, 1)``. The fully connected layers are convolutions too: ``fc6``
``(7, 7, 512, 4096)``, ``fc7`` ``(1, 1, 4096, 4096)``, ``fc8`` ``(1, 1, 4096, 1000)``; with
the same transpose and a flatten they become our ``(out, C*H*W)`` matrices. Input:
RGB, 0-255, minus ``meta.normalization.averageImage`` (older files: top-level
``normalization``), a 1x1x3 mean pixel or a full mean image that is averaged to one.

scipy reads a whole variable at once and allocates what its header declares, so
before scipy sees the file :func:`prescan` walks the MAT v5 element tree itself (no
data is decoded): every array's declared dimensions are bounded (numbers: a VGG
layer's size; cells and structs: a few thousand entries), sparse arrays, objects and
function handles are refused, and compressed elements are inflated with a bound on
the inflated size (absolute, and relative to the file's size: a weights file barely
compresses, a zip bomb does). After loading, every value where numbers are due must
be a numeric array (not a string, cell or struct) of at most 4 dimensions.
"""

import math
import mmap
import os
import struct
import zlib

import numpy as np

from minivgg import weights as mw
from minivgg.errors import MiniVGGError

MI_INT8, MI_INT32, MI_UINT32, MI_MATRIX, MI_COMPRESSED = 1, 5, 6, 14, 15
MX_CELL, MX_STRUCT, MX_OBJECT, MX_CHAR, MX_SPARSE = 1, 2, 3, 4, 5
MI_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8, 16: 1, 17: 2, 18: 4}
MX_COMPLEX = 0x0800
MAX_CONTAINER = 1 << 12  # cells / struct elements in one array (VGG-19: 43 layers)
MAX_FIELDS = 64
MAX_NESTING = 16
MAX_INFLATED = 4 * mw.MAX_TOTAL_ELEMENTS + (64 << 20)
INFLATION_SLACK, INFLATION_RATIO = 16 << 20, 16


def prescan(path, where):
    """Check the MAT v5 structure of ``path`` before scipy allocates anything from it."""
    size = os.path.getsize(path)
    if size < 128:
        raise MiniVGGError(f"{where}: truncated MATLAB file (no 128-byte header)")
    limit = min(MAX_INFLATED, INFLATION_SLACK + INFLATION_RATIO * size)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        order = {b"IM": "<", b"MI": ">"}.get(bytes(buf[126:128]))
        if order is None:
            raise MiniVGGError(f"{where}: not a MATLAB v5 file (bad endian indicator)")
        inflated = 0
        pos = 128
        while pos + 8 <= size:
            mtype, nbytes, start, nxt = _tag(buf, pos, order, size, where)
            if mtype == MI_COMPRESSED:
                data = _inflate(buf[start:start + nbytes], limit - inflated, where)
                inflated += len(data)
                _walk(data, 0, len(data), order, where, 0, top=True)
                nxt = start + nbytes  # compressed elements are not padded
            elif mtype == MI_MATRIX:
                _matrix(buf, start, start + nbytes, order, where, 0)
            pos = nxt


def _tag(buf, pos, order, end, where):
    if pos + 8 > end:
        raise MiniVGGError(f"{where}: truncated MATLAB file (element tag at byte {pos})")
    first, second = struct.unpack_from(order + "II", buf, pos)
    if first >> 16:  # small data element: type and size in one word, 4 bytes of data
        nbytes = first >> 16
        if nbytes > 4:
            raise MiniVGGError(f"{where}: corrupt MATLAB file (small element of {nbytes} bytes)")
        return first & 0xFFFF, nbytes, pos + 4, pos + 8
    start = pos + 8
    if second > end - start:
        raise MiniVGGError(f"{where}: truncated MATLAB file (an element of {second} bytes at byte {pos})")
    return first, second, start, start + ((second + 7) & ~7)


def _inflate(data, limit, where):
    d = zlib.decompressobj()
    parts, total = [], 0
    while data:
        chunk = d.decompress(data, 1 << 20)
        total += len(chunk)
        if total > limit:
            raise MiniVGGError(f"{where}: compressed data inflates to more than {limit} bytes: corrupt or hostile")
        parts.append(chunk)
        data = d.unconsumed_tail
        if d.eof or not chunk and not data:
            break
    return b"".join(parts)


def _walk(buf, pos, end, order, where, depth, top=False):
    mtype, nbytes, start, nxt = _tag(buf, pos, order, end, where)
    if mtype != MI_MATRIX:
        if top:
            return nxt
        raise MiniVGGError(f"{where}: corrupt MATLAB file (element type {mtype} where an array is due)")
    _matrix(buf, start, start + nbytes, order, where, depth)
    return nxt


def _matrix(buf, pos, end, order, where, depth):
    """One miMATRIX element's content: flags, dimensions, name, then its parts."""
    if depth > MAX_NESTING:
        raise MiniVGGError(f"{where}: MATLAB arrays nested more than {MAX_NESTING} deep")
    if pos == end:  # an empty matrix
        return
    t, n, s, pos = _tag(buf, pos, order, end, where)
    if t != MI_UINT32 or n < 4:
        raise MiniVGGError(f"{where}: corrupt MATLAB file (array without flags)")
    flags = struct.unpack_from(order + "I", buf, s)[0]
    cls = flags & 0xFF
    t, n, s, pos = _tag(buf, pos, order, end, where)
    if t != MI_INT32 or n % 4 or n // 4 > 8:
        raise MiniVGGError(f"{where}: corrupt MATLAB file (array dimensions)")
    dims = struct.unpack_from(order + f"{n // 4}i", buf, s)
    if any(d < 0 for d in dims):
        raise MiniVGGError(f"{where}: corrupt MATLAB file (negative dimension)")
    count = math.prod(dims)
    if cls in (MX_SPARSE, MX_OBJECT) or cls > 15:
        raise MiniVGGError(f"{where}: a MATLAB object, sparse array or function handle: not a MatConvNet network")
    if cls in (MX_CELL, MX_STRUCT):
        if count > MAX_CONTAINER:
            raise MiniVGGError(f"{where}: a cell or struct array of {count} entries; at most {MAX_CONTAINER} expected")
    elif count > mw.MAX_LAYER_ELEMENTS:
        raise MiniVGGError(f"{where}: an array of {count} elements; a VGG layer has at most {mw.MAX_LAYER_ELEMENTS}")
    _, _, _, pos = _tag(buf, pos, order, end, where)  # the array's name
    if cls == MX_CELL:
        for _ in range(count):
            pos = _walk(buf, pos, end, order, where, depth + 1)
    elif cls == MX_STRUCT:
        t, n, s, pos = _tag(buf, pos, order, end, where)
        flen = struct.unpack_from(order + "i", buf, s)[0] if n >= 4 else 0
        t, n, s, pos = _tag(buf, pos, order, end, where)
        nfields = n // flen if flen > 0 else 0
        if nfields > MAX_FIELDS:
            raise MiniVGGError(f"{where}: a struct with {nfields} fields; at most {MAX_FIELDS} expected")
        for _ in range(count * nfields):
            pos = _walk(buf, pos, end, order, where, depth + 1)
    else:
        # numbers or characters: scipy's reader trusts the parts to be there and the
        # right size (a complex flag without an imaginary part crashes it)
        if flags & MX_COMPLEX:
            raise MiniVGGError(f"{where}: a complex array: not a MatConvNet network")
        t, n, s, pos = _tag(buf, pos, order, end, where)
        if t not in MI_SIZES:
            raise MiniVGGError(f"{where}: corrupt MATLAB file (data of unknown type {t})")
        if t not in (16, 17, 18) and n != count * MI_SIZES[t]:
            raise MiniVGGError(f"{where}: corrupt MATLAB file (an array of {count} elements with {n} bytes of data)")


def is_mat(head):
    return head.startswith(b"MATLAB 5.0 MAT-file")


def _field(s, name):
    """Field ``name`` of a loadmat struct (record array element) or None."""
    try:
        if s.dtype.names and name in s.dtype.names:
            return s[name]
    except AttributeError:
        pass
    return None


def _unwrap(v):
    """Strip MATLAB's 1x1 wrappers: object arrays of one element, 1x1 struct arrays."""
    while isinstance(v, np.ndarray) and v.size == 1 and (v.dtype == object or v.dtype.names):
        v = v.reshape(-1)[0]
    return v


def _str(v):
    v = _unwrap(v)
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "U" and v.size <= 4096:
            return "".join(v.reshape(-1).tolist())
        return ""
    return str(v)[:4096] if isinstance(v, str) else ""


def _numbers(v, where, layer, what):
    """``v`` as a numeric array of at most 4 dimensions, or a MiniVGGError naming the layer."""
    v = _unwrap(v)
    if not isinstance(v, np.ndarray) or v.dtype.kind not in "fiub" or v.dtype.names:
        kind = type(v).__name__ if not isinstance(v, np.ndarray) else ("a struct" if v.dtype.names else
                                                                       {"U": "a string", "O": "a cell"}.get(v.dtype.kind, str(v.dtype)))
        raise MiniVGGError(f"{where}: layer {mw.quote(layer)}: {what} are {kind}, not numbers")
    if v.ndim > 4:
        raise MiniVGGError(f"{where}: layer {mw.quote(layer)}: {what} have {v.ndim} dimensions; at most 4 expected")
    return v


def _elements(v):
    """The elements of a MATLAB struct array or cell array, in order."""
    if isinstance(v, np.ndarray):
        if v.dtype == object:
            return [_unwrap(x) for x in v.reshape(-1, order="F")]
        if v.dtype.names:
            return list(v.reshape(-1, order="F"))
    return [v]


def read_mat(path):
    """Return ``(layers, mean)``: ``layers`` is ``[(name, type, W or None, b or None)...]``
    in file order with MatConvNet's array layouts; ``mean`` is 3 floats (RGB) or None."""
    import scipy.io

    where = os.path.basename(path)
    prescan(path, where)
    try:
        m = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except NotImplementedError:
        raise MiniVGGError(f"{where}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7 from MATLAB") from None
    except MemoryError:
        raise MiniVGGError(f"{where}: not enough memory to read this MATLAB file") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on damaged files
        raise MiniVGGError(f"{where}: not a readable MATLAB file (truncated or corrupt: {type(e).__name__}: "
                           f"{mw.quote(str(e), 120)})") from None
    if "layers" not in m:
        if "params" in m:
            raise MiniVGGError(f"{where}: a MatConvNet DagNN file; only the SimpleNN layout (imagenet-vgg-verydeep-*.mat) is supported")
        raise MiniVGGError(f"{where}: a MATLAB file without 'layers': not a MatConvNet network")
    layers = []
    for L in _elements(m["layers"]):
        name = _str(_field(L, "name")) if _field(L, "name") is not None else ""
        ltype = _str(_field(L, "type")) if _field(L, "type") is not None else ""
        W = b = None
        wts = _field(L, "weights")
        if wts is not None:
            parts = _elements(_unwrap(wts)) if _unwrap(wts).dtype == object else _elements(wts)
            parts = [np.asarray(p) for p in parts if isinstance(p, np.ndarray) and p.size]
            if len(parts) >= 1:
                W = parts[0]
            if len(parts) >= 2:
                b = parts[1]
        elif _field(L, "filters") is not None:
            W = np.asarray(_unwrap(_field(L, "filters")))
            b = np.asarray(_unwrap(_field(L, "biases")))
        if W is not None and np.asarray(W).size == 0:  # struct arrays give every layer the field
            W = b = None
        if W is not None:
            W = _numbers(W, where, name, "weights")
            b = None if b is None else _numbers(b, where, name, "bias")
            W = np.asarray(W, dtype=np.float32)
            if W.ndim < 4:  # MATLAB drops trailing singleton dims: (h, w, in) for out == 1
                W = W.reshape(W.shape + (1,) * (4 - W.ndim))
            b = None if b is None else np.asarray(b, dtype=np.float32).reshape(-1)
        layers.append((name, ltype, W, b))
    try:
        mean = _mean(m)
    except MiniVGGError as e:
        raise MiniVGGError(f"{where}: {e}") from None
    return layers, mean


def _mean(m):
    norm = None
    if "meta" in m:
        norm = _field(_unwrap(m["meta"]), "normalization")
    if norm is None and "normalization" in m:
        norm = m["normalization"]
    if norm is None:
        return None
    avg = _field(_unwrap(norm), "averageImage")
    if avg is None:
        return None
    avg = _unwrap(avg)
    if not isinstance(avg, np.ndarray) or avg.dtype.kind not in "fiu" or avg.ndim > 4:
        raise MiniVGGError("normalization.averageImage is not an array of numbers")
    avg = np.asarray(avg, dtype=np.float64)
    if avg.size < 3 or avg.shape[-1] != 3 and avg.size != 3:
        return None
    mean = tuple(float(v) for v in avg.reshape(-1, 3).mean(axis=0))
    if not all(math.isfinite(v) for v in mean):
        raise MiniVGGError("normalization.averageImage holds NaN or infinity")
    return mean


def conv_to_ours(W, b):
    """``(h, w, in, out)`` -> ``(out, in, h, w)``."""
    return np.ascontiguousarray(W.transpose(3, 2, 0, 1)), b


def fc_to_ours(W, b):
    """A MatConvNet fully connected conv ``(h, w, in, out)`` -> ``(out, in*h*w)`` over a
    channels-first flatten."""
    Wo = W.transpose(3, 2, 0, 1)
    return np.ascontiguousarray(Wo.reshape(Wo.shape[0], -1)), b
