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
"""

import os

import numpy as np

from minivgg.errors import MiniVGGError


def _s(v):
    return v.decode() if isinstance(v, bytes) else str(v)


def is_keras(f):
    return "layer_names" in f.attrs or ("model_weights" in f and "layer_names" in f["model_weights"].attrs)


def read_layers(path, f):
    """``[(layer_name, [arrays in weight_names order])...]`` for layers that hold weights."""
    where = os.path.basename(path)
    root = f["model_weights"] if "layer_names" not in f.attrs else f
    out = []
    for lname in (_s(n) for n in root.attrs["layer_names"]):
        if lname not in root:
            raise MiniVGGError(f"{where}: layer {lname} is listed in layer_names but has no group")
        g = root[lname]
        wnames = [_s(n) for n in g.attrs.get("weight_names", [])]
        if not wnames:
            continue
        arrays = []
        for wn in wnames:
            try:
                arrays.append(np.asarray(g[wn], dtype=np.float32))
            except KeyError:
                raise MiniVGGError(f"{where}: weight {wn} of layer {lname} is listed but missing") from None
        out.append((lname, arrays))
    return out


def to_conv(lname, arrays, where):
    kernel, bias = _kernel_bias(lname, arrays, where)
    if kernel.ndim != 4:
        raise MiniVGGError(f"{where}: layer {lname}: kernel of shape {kernel.shape} is not a 2-D convolution kernel")
    return kernel.transpose(3, 2, 0, 1), bias


def to_dense(lname, arrays, where, first_dense_after_conv=None):
    """``first_dense_after_conv``: ``(C, H, W)`` of the flattened input for ``fc1``."""
    kernel, bias = _kernel_bias(lname, arrays, where)
    if kernel.ndim != 2:
        raise MiniVGGError(f"{where}: layer {lname}: kernel of shape {kernel.shape} is not a dense kernel")
    W = kernel.T
    if first_dense_after_conv is not None:
        C, H, Wd = first_dense_after_conv
        if W.shape[1] != C * H * Wd:
            raise MiniVGGError(f"{where}: layer {lname}: {W.shape[1]} inputs, expected {C}x{H}x{Wd} = {C * H * Wd}")
        W = W.reshape(W.shape[0], H, Wd, C).transpose(0, 3, 1, 2).reshape(W.shape[0], -1)
    return np.ascontiguousarray(W), bias


def _kernel_bias(lname, arrays, where):
    if len(arrays) != 2:
        raise MiniVGGError(f"{where}: layer {lname} has {len(arrays)} weights, expected a kernel and a bias")
    a, b = arrays
    if a.ndim == 1 and b.ndim > 1:
        a, b = b, a
    if b.ndim != 1:
        raise MiniVGGError(f"{where}: layer {lname}: no 1-D bias among its weights")
    return a, b
