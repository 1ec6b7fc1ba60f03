"""Reading and writing minivgg's converted weights file (HDF5), and finding one.

The file format (documented in docs/weights_format.md):

- one group per layer name (``conv1_1`` ... ``conv5_4``, optionally ``fc6`` ``fc7``
  ``fc8``) holding datasets ``W`` (float32, (out, in, kh, kw) for convs, (out, in) for fc)
  and ``b`` (float32, (out,));
- file attributes: ``arch`` (vgg16|vgg19), ``source_format``, ``source_file``,
  ``source_sha256``, ``channel_order`` (BGR|RGB), ``scale`` (255 or 1: the value of a
  white pixel), ``mean`` and ``std`` (3 floats each, in the network's channel order and
  value scale), ``normalized`` (bool), ``converter_version``; normalized files also
  carry ``normalize_pooling``, ``normalize_images``, ``normalize_size``.

Files are produced by ``python -m weights_tools convert|fetch|normalize`` (docs/weights_tools.md).
"""

import math
import os
import re
import signal
import stat
import threading

import numpy as np

from . import options
from .errors import MiniVGGError

# The input conventions of the published weights. ``mean``/``std`` are in the
# network's channel order and value scale: x = (img[..., order] * scale/255 - mean) / std.
CAFFE = {"channel_order": "BGR", "scale": 255.0, "mean": (103.939, 116.779, 123.68), "std": (1.0, 1.0, 1.0)}
TORCHVISION = {"channel_order": "RGB", "scale": 1.0, "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
MATCONVNET = {"channel_order": "RGB", "scale": 255.0, "mean": (123.68, 116.779, 103.939), "std": (1.0, 1.0, 1.0)}

CONVENTION_KEYS = ("channel_order", "scale", "mean", "std")


def read_weights(path):
    """Load a converted weights file: ``(params, meta)``.

    ``params`` maps layer names to ``(W, b)`` float32 arrays; ``meta`` holds the file's
    known attributes (type-, shape- and range-checked; others are ignored), with
    ``meta["convention"]`` the input convention dict (keys as ``CAFFE``).

    The file is untrusted input: only regular files are opened, only hard-linked,
    in-file datasets of VGG layer shapes are read (see :func:`read_dataset`), every
    value must be finite, and every failure is a :class:`MiniVGGError` naming the file.
    """
    where = os.fspath(path)
    try:
        return _read_weights(where)
    except MiniVGGError as e:
        raise MiniVGGError(clean_message(str(e))) from None
    except RecursionError:
        raise MiniVGGError(f"{where}: not a readable minivgg weights file (nested too deeply)") from None
    except MemoryError:
        raise MiniVGGError(f"{where}: not enough memory to read this weights file") from None
    except Exception as e:  # h5py raises OSError/KeyError/ValueError/RuntimeError for damaged files
        raise MiniVGGError(clean_message(f"{where}: not a readable minivgg weights file ({type(e).__name__}: {e})")) from None


LAYER_NAME = re.compile(r"^(conv[1-5]_[1-4]|fc[678])$")
STRING_ATTRS = ("arch", "source_format", "source_file", "source_sha256", "converter_version", "normalize_pooling",
                "convention_decided", "source_pooling")
INT_ATTRS = ("normalize_images", "normalize_size")
ARCHS = ("vgg16", "vgg19")
CHANNEL_ORDERS = ("BGR", "RGB")


def _read_weights(path):
    import h5py

    check_regular_file(path, "weights file")
    with h5py.File(path, "r") as f:
        names = list(f.attrs.keys())
        if len(names) > MAX_ATTRIBUTES:
            raise MiniVGGError(f"{path}: {len(names)} attributes; a weights file has at most {MAX_ATTRIBUTES}")
        raw = {k: read_attr(f, k, path) for k in names if k in KNOWN_ATTRS}
        entries = list(f.keys())
        if len(entries) > MAX_ENTRIES:
            raise MiniVGGError(f"{path}: {len(entries)} top-level entries; a weights file has at most {MAX_ENTRIES}")
        params = {}
        total = 0
        for name in entries:
            if not LAYER_NAME.match(name):
                continue  # not a layer of ours: never read
            grp = hard_get(f, name, path)
            if not isinstance(grp, h5py.Group) or "W" not in grp or "b" not in grp:
                continue
            W = read_dataset(hard_get(grp, "W", path), path, f"{name}/W")
            b = read_dataset(hard_get(grp, "b", path), path, f"{name}/b", max_elements=MAX_BIAS_ELEMENTS)
            total += W.size + b.size
            if total > MAX_TOTAL_ELEMENTS:
                raise MiniVGGError(f"{path}: more than {MAX_TOTAL_ELEMENTS} weights in all: not a VGG weights file")
            check_finite(W, path, f"{name}/W")
            check_finite(b, path, f"{name}/b")
            params[name] = (W, b)
    meta = _check_meta(raw, path)
    return params, meta


def _check_meta(raw, path):
    missing = [k for k in CONVENTION_KEYS if k not in raw]
    if missing:
        raise MiniVGGError(f"{path}: weights file lacks attribute(s) {', '.join(missing)}; convert it again with weights_tools")
    meta = {}
    for k in STRING_ATTRS:
        if k in raw:
            meta[k] = _string_attr(raw[k], path, k)
    if "arch" in meta and meta["arch"] not in ARCHS:
        raise MiniVGGError(f"{path}: attribute arch is {quote(meta['arch'])}; expected vgg16 or vgg19")
    for k in INT_ATTRS:
        if k in raw:
            v = raw[k]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 1 << 31:
                raise MiniVGGError(f"{path}: attribute {k} is {quote(v)}; expected an integer >= 0")
            meta[k] = v
    if "normalized" in raw:
        v = raw["normalized"]
        if v not in (True, False, 0, 1):
            raise MiniVGGError(f"{path}: attribute normalized is {quote(v)}; expected true or false")
        meta["normalized"] = bool(v)
    convention = {"channel_order": raw["channel_order"], "scale": raw["scale"], "mean": raw["mean"], "std": raw["std"]}
    meta["convention"] = check_convention(convention, path)
    for k, v in meta["convention"].items():
        meta[k] = v
    return meta


def _string_attr(v, where, name):
    if not isinstance(v, str):
        raise MiniVGGError(f"{where}: attribute {name} is {quote(v)}; expected a string")
    if len(v) > MAX_STRING or not v.isprintable():
        raise MiniVGGError(f"{where}: attribute {name} ({quote(v)}) is too long or holds control characters")
    return v


def check_convention(c, where):
    """Validate an input convention (``channel_order`` BGR|RGB, ``scale`` > 0, ``mean``
    3 finite numbers, ``std`` 3 finite numbers > 0); returns it with plain types."""

    def numbers(key, positive):
        v = c.get(key)
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 3:
            raise MiniVGGError(f"{where}: input convention {key} is {quote(v)}; expected 3 numbers")
        out = []
        for x in v:
            if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) or (positive and x <= 0):
                want = "3 finite numbers > 0" if positive else "3 finite numbers"
                raise MiniVGGError(f"{where}: input convention {key} is {quote(v)}; expected {want}")
            out.append(float(x))
        return tuple(out)

    if not isinstance(c, dict):
        raise MiniVGGError(f"{where}: no input convention")
    order = c.get("channel_order")
    if order not in CHANNEL_ORDERS:
        raise MiniVGGError(f"{where}: input convention channel_order is {quote(order)}; expected BGR or RGB")
    scale = c.get("scale")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale) or scale <= 0:
        raise MiniVGGError(f"{where}: input convention scale is {quote(scale)}; expected a finite number > 0 (255 or 1)")
    return {"channel_order": order, "scale": float(scale), "mean": numbers("mean", False), "std": numbers("std", True)}


def _plain(v):
    if isinstance(v, bytes):
        try:
            return v.decode()
        except UnicodeDecodeError:
            return v
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "O" or v.dtype.kind in "SU":
            return [_plain(x) for x in v.reshape(-1)] if v.ndim else _plain(v.item())
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


# ---------------------------------------------------------------- untrusted files
#
# Bounds from the architecture: VGG's largest tensor is fc6's 4096 x 25088 weight
# matrix; VGG-19 with its classifier has 143.7 million weights in all.
MAX_LAYER_ELEMENTS = 4096 * 25088
MAX_BIAS_ELEMENTS = 4096
MAX_TOTAL_ELEMENTS = 150_000_000
MAX_ATTR_ELEMENTS = 4096
MAX_ATTRIBUTES = 64
MAX_ENTRIES = 256
MAX_STRING = 1024
KNOWN_ATTRS = set(STRING_ATTRS) | set(INT_ATTRS) | {"normalized"} | set(CONVENTION_KEYS)
# HDF5 filters that only decode data inside the file: deflate, shuffle, fletcher32, lzf
SAFE_FILTERS = {1, 2, 3, 32000}
# deflate cannot shrink data by more than about 1032:1
MAX_INFLATION = 1100
QUOTE_LIMIT = 80
MESSAGE_LIMIT = 600


def quote(v, limit=QUOTE_LIMIT):
    """File content for an error message: repr-escaped (no raw newlines or terminal
    escapes) and cut to ``limit`` characters, so a hostile name cannot forge lines."""
    s = v if isinstance(v, str) else (v.decode("latin1") if isinstance(v, bytes) else str(v)[: limit * 4])
    cut = len(s) > limit
    s = repr(s[:limit])
    return s + "..." if cut else s


def clean_message(msg, limit=MESSAGE_LIMIT):
    """One printable line of at most ``limit`` characters: every non-printable
    character escaped (a last guard for messages that embed library text)."""
    out = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(msg))
    return out if len(out) <= limit else out[: limit - 3] + "..."


def check_regular_file(path, what="file", missing=None):
    """Refuse anything but a regular file (a FIFO would block the read, a device
    would stream forever) before it is opened."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise MiniVGGError(f"{path}: no such {missing or what}") from None
    except OSError as e:
        raise MiniVGGError(f"{path}: cannot read ({e.strerror or e})") from None
    if stat.S_ISDIR(st.st_mode):
        raise MiniVGGError(f"{path}: is a directory, not a {what}")
    if not stat.S_ISREG(st.st_mode):
        raise MiniVGGError(f"{path}: not a regular file (a pipe or device?); give a {what}")
    return st


def hard_get(group, path, where):
    """``group[path]``, following hard links only: soft and external links (which
    could name any file on the machine) are refused."""
    import h5py

    obj = group
    for part in [p for p in path.split("/") if p]:
        if not isinstance(obj, h5py.Group) or part not in obj:
            raise MiniVGGError(f"{where}: {quote(path)} is missing")
        link = obj.get(part, getlink=True)
        if not isinstance(link, h5py.HardLink):
            kind = "an external link" if isinstance(link, h5py.ExternalLink) else "a soft link"
            raise MiniVGGError(f"{where}: {quote(path)} is {kind}; refusing to follow it (this file may be hostile)")
        obj = obj[part]
    return obj


def read_dataset(ds, where, label, max_elements=MAX_LAYER_ELEMENTS, max_ndim=4):
    """Read an HDF5 dataset of numbers as float32 after checking, before any data is
    read, that it can be a VGG layer's: at most ``max_ndim`` dimensions and
    ``max_elements`` elements, a numeric type, stored inside this file (contiguous,
    chunked or compact; no external storage or virtual dataset), with only decoding
    filters, and with stored bytes that can hold it (a dataset that is only a fill value
    is refused)."""
    import h5py
    from h5py import h5d

    if not isinstance(ds, h5py.Dataset):
        raise MiniVGGError(f"{where}: {quote(label)} is not a dataset")
    dt = ds.dtype
    if dt.kind not in "fiub" or dt.itemsize > 8 or dt.fields is not None:
        raise MiniVGGError(f"{where}: {quote(label)} has type {quote(str(dt))}; expected numbers")
    shape = ds.shape
    if shape is None or len(shape) > max_ndim:
        raise MiniVGGError(f"{where}: {quote(label)} has {len(shape or ())} dimensions; at most {max_ndim} expected")
    count = 1
    for d in shape:
        count *= int(d)
    if count > max_elements:
        raise MiniVGGError(f"{where}: {quote(label)} of shape {tuple(shape)} has {count} elements; "
                           f"a VGG layer has at most {max_elements}")
    plist = ds.id.get_create_plist()
    layout = plist.get_layout()
    if layout not in (h5d.CONTIGUOUS, h5d.CHUNKED, h5d.COMPACT):
        raise MiniVGGError(f"{where}: {quote(label)} is a virtual dataset; refusing to read other files")
    if plist.get_external_count() > 0:
        raise MiniVGGError(f"{where}: {quote(label)} keeps its data in an external file; refusing to read it "
                           f"(this file may be hostile)")
    filters = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
    unknown = [f for f in filters if f not in SAFE_FILTERS]
    if unknown:
        raise MiniVGGError(f"{where}: {quote(label)} uses HDF5 filter {unknown[0]}; only gzip, shuffle, fletcher32 "
                           f"and lzf are read")
    nbytes = count * dt.itemsize
    stored = ds.id.get_storage_size()
    if count and stored == 0:
        raise MiniVGGError(f"{where}: {quote(label)} has no stored data (only a fill value): truncated or corrupt")
    if not filters and stored < nbytes:
        raise MiniVGGError(f"{where}: {quote(label)} needs {nbytes} bytes but {stored} are stored: truncated or corrupt")
    if filters and nbytes > stored * MAX_INFLATION:
        raise MiniVGGError(f"{where}: {quote(label)} would inflate {stored} stored bytes to {nbytes}: corrupt or hostile")
    arr = ds[()]
    return np.asarray(arr, dtype=np.float32)


def read_attr(obj, name, where, max_elements=MAX_ATTR_ELEMENTS):
    """An HDF5 attribute as plain Python (str, number, list), its size checked first."""
    import h5py

    aid = obj.attrs.get_id(name)
    shape = aid.shape or ()
    count = 1
    for d in shape:
        count *= int(d)
    if count > max_elements:
        raise MiniVGGError(f"{where}: attribute {quote(name)} has {count} elements; at most {max_elements} expected")
    dt = aid.dtype
    if dt.kind == "O" and h5py.check_string_dtype(dt) is None:
        raise MiniVGGError(f"{where}: attribute {quote(name)} has type {quote(str(dt))}; expected numbers or strings")
    if dt.kind not in "fiubSUO" or dt.fields is not None:
        raise MiniVGGError(f"{where}: attribute {quote(name)} has type {quote(str(dt))}; expected numbers or strings")
    v = _plain(obj.attrs[name])
    if isinstance(v, str) and len(v) > 1 << 20:
        raise MiniVGGError(f"{where}: attribute {quote(name)} is a string of {len(v)} characters")
    return v


def check_finite(a, where, label):
    if not np.isfinite(a).all():
        raise MiniVGGError(f"{where}: {label}: weights contain NaN or infinity (corrupt file?)")


def check_output_path(path, inputs=(), what="output", folder_must_exist=True):
    """Refuse an output path that is not (or would not be) a regular file, or that is
    one of ``inputs``: no command replaces a device node or one of its own inputs.
    ``what`` names the output in the messages (e.g. "result image")."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise MiniVGGError(f"{path}: cannot be used as the {what} ({e.strerror or e})") from None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise MiniVGGError(f"{path}: exists and is not a regular file; refusing to replace it with the {what}")
    for p in inputs:
        if p is None:
            continue
        if same_path(path, p):
            raise MiniVGGError(f"{path}: is also an input ({p}); the {what} would overwrite the input")
    folder = os.path.dirname(os.path.abspath(path))
    if folder_must_exist and not os.path.isdir(folder):
        raise MiniVGGError(f"{path}: the {what} directory does not exist")
    return path


def same_path(a, b):
    """True when ``a`` and ``b`` name the same file (or would: same resolved path)."""
    try:
        if os.path.exists(a) and os.path.exists(b) and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    return os.path.realpath(a) == os.path.realpath(b)


class _DeferSignals:
    """While a file is written: SIGINT, SIGTERM and SIGHUP are only recorded, and
    :meth:`check` raises KeyboardInterrupt between datasets, so the temporary file is
    always removed (a handler raising inside h5py's C code could be lost)."""

    SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))

    def __init__(self):
        self.signum = None
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                try:
                    self.previous[s] = signal.signal(s, self._record)
                except (ValueError, OSError):
                    pass
        return self

    def _record(self, signum, frame):
        self.signum = signum

    def check(self):
        if self.signum is not None:
            raise KeyboardInterrupt

    def __exit__(self, *exc):
        for s, h in self.previous.items():
            signal.signal(s, h)
        return False


def write_weights(path, params, meta):
    """Write ``params`` and ``meta`` (attributes, convention keys included) atomically.

    Every value is checked finite and every attribute plain before the file is made;
    a SIGINT/SIGTERM/SIGHUP during the write removes the temporary file and raises
    KeyboardInterrupt (no output is left)."""
    import h5py

    path = os.fspath(path)
    attrs = {}
    for k, v in meta.items():
        if k == "convention":
            continue
        attrs[k] = _attr_value(k, v, path)
    if "convention" in meta:
        attrs.update(check_convention(meta["convention"], path))
    for name, (W, b) in params.items():
        check_finite(np.asarray(W), path, f"{name}/W")
        check_finite(np.asarray(b), path, f"{name}/b")
    tmp = f"{path}.tmp-{os.getpid()}"
    with _DeferSignals() as signals:
        try:
            with h5py.File(tmp, "w") as f:
                for k, v in attrs.items():
                    f.attrs[k] = v
                for name, (W, b) in params.items():
                    signals.check()
                    grp = f.create_group(name)
                    grp.create_dataset("W", data=np.asarray(W, dtype=np.float32))
                    grp.create_dataset("b", data=np.asarray(b, dtype=np.float32))
            signals.check()
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)


def _attr_value(k, v, where):
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            raise MiniVGGError(f"{where}: attribute {k} is {v}; expected a finite number")
        return float(v)
    if isinstance(v, str):
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v) \
            and all(math.isfinite(x) for x in v) and len(v) <= MAX_ATTR_ELEMENTS:
        return np.asarray(v, dtype=np.float64)
    raise MiniVGGError(f"{where}: attribute {k} is {quote(v)}; expected a number, a string or a list of numbers")


def cache_dir():
    """``$MINIVGG_HOME``, default ``~/.cache/minivgg``: where fetched/converted weights live."""
    return options.get("home") or os.path.join(os.path.expanduser("~"), ".cache", "minivgg")


def default_weights_path(arch, classifier=False):
    """The weights file to use when none is given: ``$MINIVGG_WEIGHTS``, else a converted
    file for ``arch`` in the cache (``<arch>-*.h5``, as ``weights_tools fetch`` names them;
    with ``classifier=True`` one converted with the classifier, ``*-fc.h5``, is preferred),
    else ``None`` (random weights)."""
    env = options.get("weights")
    if env:
        return env
    d = cache_dir()
    if not os.path.isdir(d):
        return None
    found = [n for n in sorted(os.listdir(d)) if n.startswith(arch + "-") and n.endswith(".h5")]
    if classifier:
        found.sort(key=lambda n: not n.endswith("-fc.h5"))
    return os.path.join(d, found[0]) if found else None


ARCH_PREFERENCE = ("vgg19", "vgg16")  # which cached weights a command without --arch takes


def file_sha256(path):
    """The SHA-256 of a file's bytes, as hex (read in blocks: weights files are large)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def file_arch(path):
    """The ``arch`` attribute of a converted file, or None when it cannot be read (the
    reader reports why when the file is loaded)."""
    import h5py

    try:
        if not os.path.isfile(path):
            return None
        with h5py.File(path, "r") as f:
            arch = _plain(f.attrs.get("arch"))
        return arch if arch in ARCHS else None
    except Exception:  # any unreadable file: read_weights names the problem later
        return None


def arch_for(weights=None):
    """The architecture to build when none is asked for: that of ``weights`` (a path) or of
    ``$MINIVGG_WEIGHTS``, else VGG-19 if converted VGG-19 weights are cached, else VGG-16
    if those are, else VGG-19 (random weights)."""
    path = weights or options.get("weights")
    if path:
        return file_arch(path) or "vgg19"
    for arch in ARCH_PREFERENCE:
        if default_weights_path(arch) is not None:
            return arch
    return "vgg19"


def other_arch_hint(arch):
    """'' or a sentence naming the other architecture's cached weights and how to use them."""
    if options.get("weights"):
        return ""
    for other in ARCH_PREFERENCE:
        if other != arch:
            path = default_weights_path(other)
            if path is not None:
                return f" The cache has {other} weights ({path}): use --arch {other} (or leave --arch out)."
    return ""


def describe(source, arch, meta=None):
    """One line naming the weights in use: the file (or random), arch and input convention."""
    if meta is None:
        return f"weights: {source} ({arch}; no pretrained file: results show an untrained network)"
    conv = meta.get("convention", {})
    name = {"BGR": "caffe"}.get(conv.get("channel_order"), "torchvision" if conv.get("scale") == 1.0 else "matconvnet")
    extra = ", Gatys-normalized" if meta.get("normalized") else ""
    how = f", decided by {meta['convention_decided']}" if meta.get("convention_decided") else ""
    return f"weights: {source} ({arch}, {name} convention{how}{extra})"
