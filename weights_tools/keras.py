"""Read Keras VGG weight files (``vgg16/vgg19_weights_tf_dim_ordering_tf_kernels[_notop].h5``).

Layout (Keras 1/2 ``save_weights`` HDF5): the root (or a ``model_weights`` group, for a
whole saved model) has an attribute ``layer_names``; each named group has an attribute
``weight_names`` listing its datasets in order, e.g. ``block1_conv1/kernel:0``,
``block1_conv1/bias:0`` (Keras 2) or ``block1_conv1_W_1:0``, ``block1_conv1_b_1:0``
(Keras 1). Conv kernels are ``(kh, kw, in, out)`` and applied as a cross-correlation
(TensorFlow's convention), so ours is ``kernel.transpose(3, 2, 0, 1)``. Dense kernels are
``(in, out)``; ``fc1``'s input is the channels-last flatten of ``block5_pool`` (index
``(h*7 + w)*512 + c``), ours the channels-first one (``c*49 + h*7 + w``), so its columns
are permuted. The weights came from the Caffe model: BGR input, 0-255, Caffe mean.

The file is untrusted: names are read through bounded attribute reads, groups and
datasets only through hard links, and every dataset through
``minivgg.weights.read_dataset`` (shape, type, storage inside the file and stored bytes
checked before anything is read), so external storage, links to other files and
fill-value bombs are refused.
"""

import os

import numpy as np

from minivgg import weights as mw
from minivgg.errors import MiniVGGError

MAX_LAYERS = 256  # VGG-19 with its classifier has about 30 named layers
MAX_WEIGHTS = 8  # per layer: a kernel and a bias


def _s(v):
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)


def _names(obj, attr, where, limit):
    v = mw.read_attr(obj, attr, where) if attr in obj.attrs else []
    if isinstance(v, (str, bytes)):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(n, (str, bytes)) for n in v):
        raise MiniVGGError(f"{where}: attribute {attr} is {mw.quote(v)}; expected a list of names")
    if len(v) > limit:
        raise MiniVGGError(f"{where}: attribute {attr} lists {len(v)} names; at most {limit} expected")
    return [_s(n) for n in v]


def is_keras(f):
    import h5py

    if "layer_names" in f.attrs:
        return True
    return "model_weights" in f and isinstance(f.get("model_weights", getlink=True), h5py.HardLink) \
        and "layer_names" in f["model_weights"].attrs


def read_layers(path, f):
    """``[(layer_name, [arrays in weight_names order])...]`` for layers that hold weights."""
    where = os.path.basename(path)
    root = mw.hard_get(f, "model_weights", where) if "layer_names" not in f.attrs else f
    out = []
    total = 0
    for lname in _names(root, "layer_names", where, MAX_LAYERS):
        if not lname or lname not in root:
            raise MiniVGGError(f"{where}: layer {mw.quote(lname)} is listed in layer_names but has no group")
        g = mw.hard_get(root, lname, where)
        wnames = _names(g, "weight_names", where, MAX_WEIGHTS)
        if not wnames:
            continue
        arrays = []
        for wn in wnames:
            if not wn or wn not in g:
                raise MiniVGGError(f"{where}: weight {mw.quote(wn)} of layer {mw.quote(lname)} is listed but missing")
            arrays.append(mw.read_dataset(mw.hard_get(g, wn, where), where, f"{lname}/{wn}",
                                          max_elements=min(mw.MAX_LAYER_ELEMENTS, mw.MAX_TOTAL_ELEMENTS - total)))
            total += arrays[-1].size
        out.append((lname, arrays))
    return out


def to_conv(lname, arrays, where):
    kernel, bias = _kernel_bias(lname, arrays, where)
    if kernel.ndim != 4:
        raise MiniVGGError(f"{where}: layer {mw.quote(lname)}: kernel of shape {kernel.shape} is not a 2-D convolution kernel")
    return kernel.transpose(3, 2, 0, 1), bias


def to_dense(lname, arrays, where, first_dense_after_conv=None):
    """``first_dense_after_conv``: ``(C, H, W)`` of the flattened input for ``fc1``."""
    kernel, bias = _kernel_bias(lname, arrays, where)
    if kernel.ndim != 2:
        raise MiniVGGError(f"{where}: layer {mw.quote(lname)}: kernel of shape {kernel.shape} is not a dense kernel")
    W = kernel.T
    if first_dense_after_conv is not None:
        C, H, Wd = first_dense_after_conv
        if W.shape[1] != C * H * Wd:
            raise MiniVGGError(f"{where}: layer {mw.quote(lname)}: {W.shape[1]} inputs, expected {C}x{H}x{Wd} = {C * H * Wd}")
        W = W.reshape(W.shape[0], H, Wd, C).transpose(0, 3, 1, 2).reshape(W.shape[0], -1)
    return np.ascontiguousarray(W), bias


def _kernel_bias(lname, arrays, where):
    if len(arrays) != 2:
        raise MiniVGGError(f"{where}: layer {mw.quote(lname)} has {len(arrays)} weights, expected a kernel and a bias")
    a, b = arrays
    if a.ndim == 1 and b.ndim > 1:
        a, b = b, a
    if b.ndim != 1:
        raise MiniVGGError(f"{where}: layer {mw.quote(lname)}: no 1-D bias among its weights")
    return a, b
