"""Turn a published VGG weights file into minivgg's HDF5 (``minivgg.weights``).

Every reader returns the same thing, a :class:`Source`: the convolution layers and the
fully connected layers in network order, each already in our layout (``(out, in, kh,
kw)`` / ``(out, in)``, float32), with the input convention the weights were trained
with. :func:`assemble` then names them ``conv1_1`` ... / ``fc6`` ``fc7`` ``fc8`` by
position, decides VGG-16 or VGG-19 from the number of convolutions, and checks every
shape against the architecture, so a ResNet, a truncated network or a transposed
kernel is refused with the layer it concerns.
"""

import hashlib
import os
import re
from dataclasses import dataclass, field

import numpy as np

from minivgg import arch as varch
from minivgg import weights as mw
from minivgg.errors import MiniVGGError

CONVERTER_VERSION = "1.0"

BLOCK_CONVS = varch.BLOCKS
BLOCK_CHANNELS = varch.WIDTHS
FC_SPECS = tuple((name, fout, fin) for name, fin, fout in varch.fc_specs())  # (name, out, in)
CONVENTIONS = {"caffe": mw.CAFFE, "torchvision": mw.TORCHVISION, "matconvnet": mw.MATCONVNET}

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def conv_specs(arch):
    """``[(name, out, in)]`` for the 3x3 convolutions of ``arch`` (minivgg/arch.py)."""
    return [(name, cout, cin) for name, cin, cout in varch.conv_specs(arch)]


@dataclass
class Source:
    format: str  # caffe | torch-legacy | torch-zip | keras | matconvnet | onnx | minivgg
    convs: list = field(default_factory=list)  # [(source name, W, b)]
    fcs: list = field(default_factory=list)  # [(source name, W, b)]
    convention: dict = None
    meta: dict = field(default_factory=dict)  # for a minivgg file: its attributes
    decided: str = ""  # how the convention was decided: "fingerprint: ...", "flag: ...", "format: ...", ...
    warning: str = ""  # one line for the user when the convention was assumed
    notes: list = field(default_factory=list)  # what the reader left out and why
    info: dict = field(default_factory=dict)  # reader details (ONNX: input layout, pooling, producer)


# ---------------------------------------------------------------- format detection

def detect_format(path):
    """Name the format of ``path`` from its content (the extension is only a tie-breaker)."""
    from . import caffe, onnx_reader, torch_pickle

    where = os.path.basename(path)
    mw.check_regular_file(path, "weights file", missing="file")  # a FIFO would block the read below
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        raise MiniVGGError(f"{where}: empty file")
    if head.startswith(b"MATLAB 7.3 MAT-file"):
        raise MiniVGGError(f"{where}: MATLAB v7.3 (HDF5) files are not supported; save it with -v7 from MATLAB")
    if head.startswith(HDF5_MAGIC):
        return _hdf5_kind(path)
    if head.startswith(b"MATLAB 5.0 MAT-file"):
        return "matconvnet"
    if head.startswith(b"PK\x03\x04"):
        if torch_pickle.is_torch_zip(path):
            return "torch-zip"
        raise MiniVGGError(f"{where}: a zip archive without data.pkl: not a PyTorch checkpoint")
    if head[0] == 0x80 and len(head) > 1 and head[1] <= 5:
        return "torch-legacy"
    if len(head) >= 262 and head[257:262] == b"ustar":
        raise MiniVGGError(f"{where}: a tar archive (PyTorch's pre-0.4 format?) is not supported; re-save it with torch.save")
    text = head.lstrip()
    if text.startswith((b"name:", b"input:", b"layer {", b"layers {", b"layer{", b"layers{")):
        raise MiniVGGError(f"{where}: a text prototxt (the network description) holds no weights; give the .caffemodel")
    if onnx_reader.looks_like_onnx(head):
        return "onnx"
    if caffe.looks_like_caffemodel(head):
        return "caffe"
    raise MiniVGGError(
        f"{where}: unknown format (not a Caffe model, ONNX model, PyTorch checkpoint, Keras HDF5, MatConvNet .mat"
        " or minivgg file)"
    )


def _hdf5_kind(path):
    import h5py

    from . import keras

    where = os.path.basename(path)
    try:
        with h5py.File(path, "r") as f:
            if keras.is_keras(f):
                return "keras"
            if "converter_version" in f.attrs or "conv1_1" in f:
                return "minivgg"
            names = sorted(f.keys())[:5]
    except MiniVGGError:
        raise
    except Exception as e:  # h5py raises OSError, RuntimeError, KeyError, ValueError on damaged files
        raise MiniVGGError(f"{where}: truncated or corrupt HDF5 file ({type(e).__name__}: {mw.quote(str(e), 120)})") from None
    raise MiniVGGError(
        f"{where}: an HDF5 file that is neither Keras weights (no layer_names attribute) nor a minivgg weights file"
        f" (top-level entries: {', '.join(mw.quote(n, 40) for n in names) or 'none'})"
    )


# ---------------------------------------------------------------- readers

def read_source(path, convention=None, strict=True, reason=None):
    """Read any supported file into a :class:`Source` whose convention is decided (see
    :func:`decide_convention`). ``convention``: an override, a name from ``CONVENTIONS``.
    ``strict=False`` (inspect) leaves an undecidable convention as ``None`` instead of
    raising.

    The reader boundary: the file is untrusted, and whatever goes wrong inside a reader
    (h5py, scipy, zipfile, struct, numpy errors, a recursion or memory limit) leaves it as
    one :class:`MiniVGGError` naming the file, its text escaped and cut to one line, and
    what comes out has finite weights and a checked input convention."""
    if convention is not None and convention not in CONVENTIONS:
        raise MiniVGGError(f"unknown input convention {mw.quote(convention)}; choose one of {', '.join(CONVENTIONS)}")
    where = os.path.basename(path)
    try:
        fmt = detect_format(path)
        reader = {"caffe": _read_caffe, "torch-legacy": _read_torch, "torch-zip": _read_torch, "onnx": _read_onnx,
                  "keras": _read_keras, "matconvnet": _read_matconvnet, "minivgg": _read_minivgg}[fmt]
        src = reader(path)
        src.format = fmt
        decide_convention(src, where, convention, strict, reason)
        _check_source(src, where)
    except MiniVGGError as e:
        raise MiniVGGError(mw.clean_message(str(e))) from None
    except RecursionError:
        raise MiniVGGError(f"{where}: not a readable weights file (nested too deeply)") from None
    except MemoryError:
        raise MiniVGGError(f"{where}: not enough memory to read this weights file") from None
    except Exception as e:
        raise MiniVGGError(mw.clean_message(f"{where}: not a readable weights file (truncated or corrupt: "
                                            f"{type(e).__name__}: {mw.quote(str(e), 120)})")) from None
    return src


def decide_convention(src, where, flag=None, strict=True, reason=None):
    """Set ``src.convention`` and ``src.decided`` (and ``src.warning`` when assumed).

    Order: the ``--convention`` flag; a minivgg file's stored convention; a release
    recognized by its values (``fingerprint.identify``), except for MatConvNet files,
    whose stored normalization is kept; the format's own convention (Caffe and Keras
    files are BGR 0-255 by their frameworks' releases); for torch files torchvision's,
    assumed with a warning; for ONNX, which has no usual convention, an error asking
    for ``--convention``.
    """
    from . import fingerprint

    if flag is not None:
        src.convention = dict(CONVENTIONS[flag])
        src.decided = reason or f"flag (--convention {flag})"
        return
    if src.format == "minivgg":
        before = src.meta.get("convention_decided")
        src.decided = "stored in the file" + (f" (at conversion: {before})" if before else "")
        return
    found = fingerprint.identify(src.convs)
    if src.format == "matconvnet":
        src.decided = "stored: the file's meta.normalization, RGB as MatConvNet's releases"
        if found:
            src.decided += f"; fingerprint: {found[1]}"
        return
    if found:
        src.convention, what = found
        src.decided = f"fingerprint: {what}"
        return
    if src.format in ("caffe", "keras"):
        src.convention = dict(mw.CAFFE)
        src.decided = f"format: {'Caffe' if src.format == 'caffe' else 'Keras VGG'} weights take BGR, 0-255, mean-subtracted input"
        return
    if src.format in ("torch", "torch-legacy", "torch-zip"):
        src.convention = dict(mw.TORCHVISION)
        src.decided = "assumed: torchvision's (the usual one for .pth files; the values match no known release)"
        src.warning = (f"{where}: input convention assumed to be torchvision's (RGB, 0-1, ImageNet mean/std):"
                       " the weights match no known release; if they are Caffe's, convert with --convention caffe")
        return
    if strict:
        raise MiniVGGError(f"{where}: an ONNX model does not record how its input is preprocessed, and its weights"
                           " match no known release; give --convention caffe|torchvision|matconvnet")
    src.convention = None
    src.decided = "unknown: no known release recognized; converting needs --convention caffe|torchvision|matconvnet"


def _read_onnx(path):
    from . import onnx_reader

    convs, fcs, info = onnx_reader.read_onnx(path)
    src = Source("onnx", convs=convs, fcs=fcs, info=info)
    src.notes.extend(info.pop("notes"))
    return src


def _check_source(src, where):
    """Every layer a pair of finite numeric arrays of plausible size, the convention valid."""
    total = 0
    for kind, layers in (("convolution", src.convs), ("fully connected", src.fcs)):
        if len(layers) > 64:
            raise MiniVGGError(f"{where}: {len(layers)} {kind} layers: not a VGG network")
        for i, (sname, W, b) in enumerate(layers):
            label = mw.quote(sname)
            if not isinstance(sname, str) or len(sname) > mw.QUOTE_LIMIT or not sname.isprintable():
                # names reach inspect's listing and later messages: escaped and cut here, once
                layers[i] = (mw.clean_message(sname, mw.QUOTE_LIMIT), W, b)
            for what, a in (("weights", W), ("bias", b)):
                if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiub":
                    raise MiniVGGError(f"{where}: layer {label}: {what} are not an array of numbers")
                if a.size > mw.MAX_LAYER_ELEMENTS or a.ndim > 4:
                    raise MiniVGGError(f"{where}: layer {label}: {what} of shape {a.shape} cannot be a VGG layer's")
                total += a.size
            if total > mw.MAX_TOTAL_ELEMENTS:
                raise MiniVGGError(f"{where}: more than {mw.MAX_TOTAL_ELEMENTS} weights in all: not a VGG network")
            mw.check_finite(W, where, f"layer {label}")
            mw.check_finite(b, where, f"layer {label}")
    if src.convention is not None:
        src.convention = mw.check_convention(src.convention, where)


def _read_caffe(path):
    from . import caffe

    where = os.path.basename(path)
    _, layers = caffe.read_layers(path)
    src = Source("caffe", convention=dict(mw.CAFFE))
    for name, ltype, blobs in layers:
        if not blobs:
            continue
        if ltype not in ("Convolution", "InnerProduct"):
            raise MiniVGGError(f"{where}: layer {mw.quote(name)} of type {mw.quote(ltype)} has parameters: not a plain VGG network")
        if len(blobs) != 2:
            raise MiniVGGError(f"{where}: layer {mw.quote(name)} has {len(blobs)} blobs, expected weights and bias")
        W, b = blobs
        b = b.reshape(-1)
        if ltype == "Convolution":
            if W.ndim != 4:
                raise MiniVGGError(f"{where}: layer {mw.quote(name)}: convolution weights of shape {W.shape} are not 4-D")
            src.convs.append((name, W, b))
        else:  # legacy blobs are (1, 1, out, in); new ones (out, in)
            W = W.reshape(W.shape[-2], W.shape[-1]) if W.ndim >= 2 else W
            src.fcs.append((name, W, b))
    return src


_FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
_CLASSIFIER_KEY = re.compile(r"^classifier\.(\d+)\.(weight|bias)$")


def _find_state_dict(obj):
    if isinstance(obj, dict):
        if any(isinstance(v, np.ndarray) for v in obj.values()):
            return obj
        for k in ("state_dict", "model_state_dict", "model", "net", "params"):
            if k in obj and isinstance(obj[k], dict):
                found = _find_state_dict(obj[k])
                if found is not None:
                    return found
    return None


def _read_torch(path):
    from . import torch_pickle

    where = os.path.basename(path)
    obj = torch_pickle.load(path)
    sd = _find_state_dict(obj)
    if sd is None:
        raise MiniVGGError(f"{where}: no state dict of tensors found (a whole pickled model is not supported; save model.state_dict())")
    sd = {str(k)[7:] if str(k).startswith("module.") else str(k): v for k, v in sd.items()}
    feats, cls, unknown = {}, {}, []
    for k, v in sd.items():
        m = _FEATURE_KEY.match(k) or _CLASSIFIER_KEY.match(k)
        if not m or not isinstance(v, np.ndarray):
            unknown.append(k)
            continue
        (feats if k.startswith("features.") else cls).setdefault(int(m.group(1)), {})[m.group(2)] = v
    if not feats:
        src = _generic_vgg_state_dict(sd)
        if src is not None:
            return src
        shown = ", ".join(mw.quote(k, 40) for k in list(sd)[:4])
        raise MiniVGGError(f"{where}: not a VGG state dict: no 'features.N.weight' keys (found {shown}, ...)")
    if unknown:
        shown = ", ".join(mw.quote(k, 40) for k in unknown[:4])
        raise MiniVGGError(f"{where}: not a plain VGG-16/19 state dict: unexpected key(s) {shown}"
                           + (" (batch-norm VGG is not supported)" if any("running_" in u for u in unknown) else ""))
    src = Source("torch", convention=dict(mw.TORCHVISION))
    for group, out in ((feats, src.convs), (cls, src.fcs)):
        for idx in sorted(group):
            wb = group[idx]
            prefix = "features" if out is src.convs else "classifier"
            if "weight" not in wb or "bias" not in wb:
                missing = "weight" if "weight" not in wb else "bias"
                raise MiniVGGError(f"{where}: {prefix}.{idx} has no {missing}")
            out.append((f"{prefix}.{idx}", wb["weight"], wb["bias"]))
    return src


def _generic_vgg_state_dict(sd):
    """A state dict with other key names (``conv1_1.weight``, ``body.3.weight`` ...): accepted
    when it is nothing but weight/bias pairs, in order, of thirteen or sixteen 3x3
    convolutions followed by zero or three linear layers. Otherwise None."""
    groups = {}
    for k, v in sd.items():
        m = re.match(r"^(.+)\.(weight|bias)$", k)
        if not m or not isinstance(v, np.ndarray):
            return None
        groups.setdefault(m.group(1), {})[m.group(2)] = v
    convs, fcs = [], []
    for prefix, wb in groups.items():
        if set(wb) != {"weight", "bias"}:
            return None
        W = wb["weight"]
        if W.ndim == 4 and W.shape[2:] == (3, 3) and not fcs:
            convs.append((prefix, W, wb["bias"]))
        elif W.ndim == 2:
            fcs.append((prefix, W, wb["bias"]))
        else:
            return None
    if len(convs) not in (13, 16) or len(fcs) not in (0, 3):
        return None
    return Source("torch", convs=convs, fcs=fcs, convention=dict(mw.TORCHVISION))


def _read_keras(path):
    import h5py

    from . import keras

    where = os.path.basename(path)
    src = Source("keras", convention=dict(mw.CAFFE))
    try:
        with h5py.File(path, "r") as f:
            layers = keras.read_layers(path, f)
    except MiniVGGError:
        raise
    except Exception as e:
        raise MiniVGGError(f"{where}: truncated or corrupt Keras HDF5 file ({type(e).__name__}: {mw.quote(str(e), 120)})") from None
    last_conv_channels = None
    for lname, arrays in layers:
        if any(a.ndim == 4 for a in arrays):
            W, b = keras.to_conv(lname, arrays, where)
            src.convs.append((lname, W, b))
            last_conv_channels = W.shape[0]
        else:
            first = not src.fcs and last_conv_channels is not None
            flat = None
            if first and last_conv_channels > 0:
                kernel = max(arrays, key=lambda a: a.ndim)
                n = kernel.shape[0] // last_conv_channels if kernel.ndim == 2 else 0
                side = int(round(n ** 0.5))
                if side * side * last_conv_channels == kernel.shape[0]:
                    flat = (last_conv_channels, side, side)
            W, b = keras.to_dense(lname, arrays, where, flat)
            src.fcs.append((lname, W, b))
    return src


def _read_matconvnet(path):
    from . import matconvnet

    where = os.path.basename(path)
    layers, mean = matconvnet.read_mat(path)
    conv = dict(mw.MATCONVNET)
    if mean is not None:
        conv["mean"] = mean
    src = Source("matconvnet", convention=conv)
    for name, ltype, W, b in layers:
        if W is None:
            if ltype in ("bnorm", "batchnorm"):
                raise MiniVGGError(f"{where}: layer {mw.quote(name)} is batch normalization: not a plain VGG network")
            continue
        if ltype != "conv":
            raise MiniVGGError(f"{where}: layer {mw.quote(name)} of type {mw.quote(ltype)} has weights: not a plain VGG network")
        if b is None:
            raise MiniVGGError(f"{where}: layer {mw.quote(name)} has no bias")
        if name.startswith("fc") or W.shape[:2] != (3, 3):
            src.fcs.append((name, *matconvnet.fc_to_ours(W, b)))
        else:
            if src.fcs:
                raise MiniVGGError(f"{where}: convolution {mw.quote(name)} after the fully connected layers: not a VGG network")
            src.convs.append((name, *matconvnet.conv_to_ours(W, b)))
    return src


def _read_minivgg(path):
    params, meta = mw.read_weights(path)
    src = Source("minivgg", convention=dict(meta["convention"]), meta=meta)
    for name in sorted((n for n in params if varch.kind(n) == "conv"), key=_conv_order):
        src.convs.append((name, *params[name]))
    for name, _, _ in FC_SPECS:
        if name in params:
            src.fcs.append((name, *params[name]))
    return src


def _conv_order(name):
    m = re.match(r"conv(\d+)_(\d+)$", name)
    return (int(m.group(1)), int(m.group(2))) if m else (99, 99)


# ---------------------------------------------------------------- assembling

def assemble(src, where, arch=None, keep_classifier=False):
    """Name and check the layers of ``src``: ``(params, arch)``."""
    n = len(src.convs)
    counts = {sum(c): a for a, c in BLOCK_CONVS.items()}
    if arch is not None and arch not in BLOCK_CONVS:
        raise MiniVGGError(f"unknown architecture {arch!r}; choose vgg16 or vgg19")
    if arch is None:
        if n not in counts:
            raise MiniVGGError(
                f"{where}: found {n} convolution layer(s); VGG-16 has 13 and VGG-19 has 16 (missing layers, or not a VGG network)"
            )
        arch = counts[n]
    want = sum(BLOCK_CONVS[arch])
    if n != want:
        raise MiniVGGError(f"{where}: found {n} convolution layer(s) but {arch} has {want}" +
                           (" (missing layers)" if n < want else " (extra layers)"))
    params = {}
    for (name, cout, cin), (sname, W, b) in zip(conv_specs(arch), src.convs):
        W = np.asarray(W, dtype=np.float32)
        b = np.asarray(b, dtype=np.float32).reshape(-1)
        label = name if sname == name else f"{name} (source layer {mw.quote(sname)})"
        if W.shape != (cout, cin, 3, 3):
            raise MiniVGGError(f"{where}: {label}: weight shape {tuple(W.shape)}, expected {(cout, cin, 3, 3)}")
        if b.shape != (cout,):
            raise MiniVGGError(f"{where}: {label}: bias shape {tuple(b.shape)}, expected ({cout},)")
        _check_finite(W, b, where, label)
        params[name] = (np.ascontiguousarray(W), b)
    if keep_classifier:
        if not src.fcs:
            raise MiniVGGError(f"{where}: has no classifier layers (fc6, fc7, fc8) to keep (a 'notop' file?)")
        if len(src.fcs) != 3:
            raise MiniVGGError(f"{where}: found {len(src.fcs)} fully connected layer(s), VGG has 3 (fc6, fc7, fc8)")
        for (name, cout, cin), (sname, W, b) in zip(FC_SPECS, src.fcs):
            W = np.asarray(W, dtype=np.float32)
            b = np.asarray(b, dtype=np.float32).reshape(-1)
            label = name if sname == name else f"{name} (source layer {mw.quote(sname)})"
            if W.shape != (cout, cin):
                raise MiniVGGError(f"{where}: {label}: weight shape {tuple(W.shape)}, expected {(cout, cin)}")
            if b.shape != (cout,):
                raise MiniVGGError(f"{where}: {label}: bias shape {tuple(b.shape)}, expected ({cout},)")
            _check_finite(W, b, where, label)
            params[name] = (np.ascontiguousarray(W), b)
    return params, arch


def _check_finite(W, b, where, label):
    if not (np.isfinite(W).all() and np.isfinite(b).all()):
        raise MiniVGGError(f"{where}: {label}: weights contain NaN or infinity (corrupt file?)")


def _stderr(msg):
    import sys

    sys.stderr.write(msg + "\n")


def file_digests(path, chunk=1 << 22):
    """``(sha256, md5)`` hex digests of a file."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            sha.update(block)
            md5.update(block)
    return sha.hexdigest(), md5.hexdigest()


def convert(src_path, out_path, arch=None, keep_classifier=False, convention=None, log=None, reason=None):
    """Convert ``src_path`` to our HDF5 at ``out_path`` (written atomically). Returns the meta dict.

    ``log``: where the one warning line goes when the input convention had to be
    assumed, and the reader's notes (default: stderr). ``reason``: how ``convention``
    was chosen, recorded instead of "flag" (fetch knows the release it downloaded)."""
    if log is None:
        log = _stderr
    where = os.path.basename(src_path)
    mw.check_output_path(out_path, inputs=[src_path])  # before any reading: fail fast, never replace a device
    src = read_source(src_path, convention=convention, reason=reason)
    if keep_classifier and src.format == "onnx" and not src.fcs and src.notes:
        raise MiniVGGError(f"{where}: --keep-classifier: {src.notes[0]}")
    params, arch = assemble(src, where, arch=arch, keep_classifier=keep_classifier)
    if src.warning:
        log(f"warning: {src.warning}")
    for note in src.notes:
        log(f"note: {where}: {note}")
    sha, _ = file_digests(src_path)
    meta = {
        "arch": arch,
        "source_format": src.format,
        "source_file": os.path.basename(src_path),
        "source_sha256": sha,
        "normalized": False,
        "converter_version": CONVERTER_VERSION,
        "convention": src.convention,
        "convention_decided": src.decided,
    }
    if src.info.get("pooling"):
        meta["source_pooling"] = src.info["pooling"]
    if src.format == "minivgg":  # re-saving one of ours keeps its history
        for k in ("source_format", "source_file", "source_sha256", "normalized", "source_pooling"):
            if k in src.meta:
                meta[k] = src.meta[k]
        if convention is None and "convention_decided" in src.meta:
            meta["convention_decided"] = src.meta["convention_decided"]
    mw.check_output_path(out_path, inputs=[src_path])
    try:
        mw.write_weights(out_path, params, meta)
    except OSError as e:
        raise MiniVGGError(f"{out_path}: cannot write ({e.strerror or e})") from None
    return meta
