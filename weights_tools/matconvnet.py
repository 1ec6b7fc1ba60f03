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
"""

import os

import numpy as np

from minivgg.errors import MiniVGGError


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
        if v.dtype.kind == "U":
            return "".join(v.reshape(-1).tolist())
        return ""
    return str(v)


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
    try:
        m = scipy.io.loadmat(path, squeeze_me=False, struct_as_record=True)
    except NotImplementedError:
        raise MiniVGGError(f"{where}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7 from MATLAB") from None
    except Exception as e:  # scipy raises ValueError/TypeError/OSError on damaged files
        raise MiniVGGError(f"{where}: not a readable MATLAB file (truncated or corrupt: {e})") from None
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
            W = np.asarray(W, dtype=np.float32)
            if W.ndim < 4:  # MATLAB drops trailing singleton dims: (h, w, in) for out == 1
                W = W.reshape(W.shape + (1,) * (4 - W.ndim))
            b = None if b is None else np.asarray(b, dtype=np.float32).reshape(-1)
        layers.append((name, ltype, W, b))
    return layers, _mean(m)


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
    avg = np.asarray(_unwrap(avg), dtype=np.float64)
    if avg.size < 3 or avg.shape[-1] != 3 and avg.size != 3:
        return None
    return tuple(float(v) for v in avg.reshape(-1, 3).mean(axis=0))


def conv_to_ours(W, b):
    """``(h, w, in, out)`` -> ``(out, in, h, w)``."""
    return np.ascontiguousarray(W.transpose(3, 2, 0, 1)), b


def fc_to_ours(W, b):
    """A MatConvNet fully connected conv ``(h, w, in, out)`` -> ``(out, in*h*w)`` over a
    channels-first flatten."""
    Wo = W.transpose(3, 2, 0, 1)
    return np.ascontiguousarray(Wo.reshape(Wo.shape[0], -1)), b
