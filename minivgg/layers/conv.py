r"""2-D convolution (cross-correlation, as in Caffe and torch); docs/conv.md derives it.

Forward, for one image, output channel o and position (i, j)::

    y[o, i, j] = b[o] + sum_{c, a, e} W[o, c, a, e] * xp[c, s*i + a, s*j + e]

with ``xp`` the input zero-padded by ``p`` on each side and stride ``s``. Output size
``Ho = floor((H + 2p - kh) / s) + 1`` (same for the width).

Backward. With ``dy = dL/dy`` given:

- ``dL/db[o] = sum_{n,i,j} dy[n, o, i, j]``.
- ``dL/dW[o, c, a, e] = sum_{n,i,j} dy[n, o, i, j] * xp[n, c, s*i + a, s*j + e]``: the
  GEMM ``dy2 @ cols^T`` with ``cols = im2col(x)``.
- ``dL/dx[c, u, v] = sum_{o,a,e} W[o, c, a, e] * dy[o, (u + p - a)/s, (v + p - e)/s]``
  over the (a, e) for which the index is a whole number inside the output: the GEMM
  ``W2^T @ dy2`` followed by col2im (the adjoint of im2col). For ``s = 1`` this is a
  correlation of ``dy`` padded by ``k - 1 - p`` with the flipped, transposed weights
  ``W.transpose(1, 0, 2, 3)[:, :, ::-1, ::-1]``, i.e. another forward convolution
  (docs/conv.md, section "Backward to the input").

The reference below loops over the kh x kw taps: each tap (a, e) is a strided window of
the padded input, and the sum over c a product with W[:, :, a, e]. The backends compute
the same sums as im2col + GEMM (cpu/ops.py, kernels/conv.cu) or Winograd F(4x4, 3x3)
(cpu/fast/winograd.py, docs/winograd.md), and are tested against this reference.
"""

import numpy as np

from ..backend import get_array_module
from .base import Layer


def _out_size(n, k, s, p):
    return (n + 2 * p - k) // s + 1


def conv2d_forward_ref(x, W, b, stride=1, pad=1):
    """y = conv2d(x, W) + b in plain array code: one product per kernel tap."""
    xp = get_array_module(x)
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = xp.zeros((N, F, Ho, Wo), dtype=np.result_type(x.dtype, W.dtype))
    for a in range(kh):
        for e in range(kw):
            window = xpad[:, :, a : a + stride * Ho : stride, e : e + stride * Wo : stride]
            y += xp.einsum("fc,nchw->nfhw", W[:, :, a, e], window)
    return y if b is None else y + b.reshape(1, F, 1, 1)


def conv2d_backward_ref(dy, x, W, stride=1, pad=1, param_grads=False):
    """(dx, dW, db) of conv2d_forward_ref: each tap's product transposed (dW, db only when asked)."""
    xp = get_array_module(dy)
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = dy.shape[2:]
    dt = np.result_type(dy.dtype, W.dtype)
    dxpad = xp.zeros((N, C, H + 2 * pad, Wd + 2 * pad), dtype=dt)
    dW = xp.zeros(W.shape, dtype=dt) if param_grads else None
    xpad = xp.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))) if param_grads else None
    for a in range(kh):
        for e in range(kw):
            rows, cols = slice(a, a + stride * Ho, stride), slice(e, e + stride * Wo, stride)
            dxpad[:, :, rows, cols] += xp.einsum("fc,nfhw->nchw", W[:, :, a, e], dy)
            if param_grads:
                dW[:, :, a, e] = xp.einsum("nfhw,nchw->fc", dy, xpad[:, :, rows, cols])
    dx = dxpad[:, :, pad : pad + H, pad : pad + Wd]
    if not param_grads:
        return dx, None, None
    return dx, dW, dy.sum(axis=(0, 2, 3))


class Conv2d(Layer):
    """Convolution with weights W (Cout, Cin, kh, kw) and bias b (Cout,)."""

    has_params = True

    def __init__(self, W, b, stride=1, pad=1, ops=None, name=None):
        super().__init__(ops, name)
        self.state = {}  # the backend's precomputed data for these weights
        self.W = self.ops.layer_weights(W, self.state)  # the backend may hold W in its own layout
        self.b, self.stride, self.pad = b, stride, pad
        self.dW = self.db = None

    def out_shape(self, shape):
        N, _, H, Wd = shape
        kh, kw = self.W.shape[2:]
        return (N, self.W.shape[0], _out_size(H, kh, self.stride, self.pad), _out_size(Wd, kw, self.stride, self.pad))

    def forward(self, x):
        y, self._cache = self.ops.conv2d_forward(x, self.W, self.b, self.stride, self.pad, self.state)
        return y

    def backward(self, dy, param_grads=False):
        dx, dW, db = self.ops.conv2d_backward(dy, self._need_cache(), param_grads)
        if param_grads:
            self.dW, self.db = dW, db
        return dx
