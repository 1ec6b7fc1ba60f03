r"""2-D convolution (cross-correlation, as in Caffe and torch).

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
  (docs/conv.md derives it).
"""

from .base import Layer


class Conv2d(Layer):
    """Convolution with weights W (Cout, Cin, kh, kw) and bias b (Cout,)."""

    has_params = True

    def __init__(self, W, b, stride=1, pad=1, ops=None):
        super().__init__(ops)
        self.state = {}  # the backend's precomputed data for these weights
        keep = getattr(self.ops, "layer_weights", None)  # the backend may hold W in its own layout
        self.W = W if keep is None else keep(W, self.state)
        self.b, self.stride, self.pad = b, stride, pad
        self.dW = self.db = None

    def forward(self, x):
        y, self._cache = self.ops.conv2d_forward(x, self.W, self.b, self.stride, self.pad, self.state)
        return y

    def backward(self, dy, param_grads=False):
        dx, dW, db = self.ops.conv2d_backward(dy, self._need_cache(), param_grads)
        if param_grads:
            self.dW, self.db = dW, db
        return dx
