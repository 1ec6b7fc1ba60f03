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

import os

import numpy as np

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
    attributes, with ``meta["convention"]`` the input convention dict (keys as ``CAFFE``).
    """
    import h5py

    if not os.path.isfile(path):
        raise MiniVGGError(f"{path}: no such weights file")
    try:
        with h5py.File(path, "r") as f:
            meta = {k: _plain(v) for k, v in f.attrs.items()}
            params = {}
            for name in f:
                grp = f[name]
                if not isinstance(grp, h5py.Group) or "W" not in grp or "b" not in grp:
                    continue
                params[name] = (np.asarray(grp["W"], dtype=np.float32), np.asarray(grp["b"], dtype=np.float32))
    except MiniVGGError:
        raise
    except Exception as e:  # h5py raises OSError/KeyError/ValueError for damaged files
        raise MiniVGGError(f"{path}: not a readable minivgg weights file ({e})") from None
    missing = [k for k in CONVENTION_KEYS if k not in meta]
    if missing:
        raise MiniVGGError(f"{path}: weights file lacks attribute(s) {', '.join(missing)}; convert it again with weights_tools")
    meta["convention"] = {
        "channel_order": str(meta["channel_order"]),
        "scale": float(meta["scale"]),
        "mean": tuple(float(v) for v in meta["mean"]),
        "std": tuple(float(v) for v in meta["std"]),
    }
    return params, meta


def _plain(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    return v


def write_weights(path, params, meta):
    """Write ``params`` and ``meta`` (attributes, convention keys included) atomically."""
    import h5py

    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with h5py.File(tmp, "w") as f:
            for k, v in meta.items():
                if k == "convention":
                    continue
                f.attrs[k] = v
            for k in CONVENTION_KEYS:
                if k in meta.get("convention", {}):
                    f.attrs[k] = meta["convention"][k]
            for name, (W, b) in params.items():
                grp = f.create_group(name)
                grp.create_dataset("W", data=np.asarray(W, dtype=np.float32))
                grp.create_dataset("b", data=np.asarray(b, dtype=np.float32))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def cache_dir():
    """``$MINIVGG_HOME``, default ``~/.cache/minivgg``: where fetched/converted weights live."""
    return os.environ.get("MINIVGG_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "minivgg")


def default_weights_path(arch, classifier=False):
    """The weights file to use when none is given: ``$MINIVGG_WEIGHTS``, else a converted
    file for ``arch`` in the cache (``<arch>-*.h5``, as ``weights_tools fetch`` names them;
    with ``classifier=True`` one converted with the classifier, ``*-fc.h5``, is preferred),
    else ``None`` (random weights)."""
    env = os.environ.get("MINIVGG_WEIGHTS")
    if env:
        return env
    d = cache_dir()
    if not os.path.isdir(d):
        return None
    found = [n for n in sorted(os.listdir(d)) if n.startswith(arch + "-") and n.endswith(".h5")]
    if classifier:
        found.sort(key=lambda n: not n.endswith("-fc.h5"))
    return os.path.join(d, found[0]) if found else None


ARCHS = ("vgg19", "vgg16")


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
    path = weights or os.environ.get("MINIVGG_WEIGHTS")
    if path:
        return file_arch(path) or "vgg19"
    for arch in ARCHS:
        if default_weights_path(arch) is not None:
            return arch
    return "vgg19"


def other_arch_hint(arch):
    """'' or a sentence naming the other architecture's cached weights and how to use them."""
    if os.environ.get("MINIVGG_WEIGHTS"):
        return ""
    for other in ARCHS:
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
