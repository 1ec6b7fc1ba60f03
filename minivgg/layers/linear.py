r"""Fully connected layer (VGG's fc6, fc7, fc8).

Forward ``y = x W^T + b`` with x (N, in), W (out, in), b (out,). A 4-D input
(N, C, H, W) is flattened row-major first, as torch's ``flatten(1)`` and Caffe's
InnerProduct do, so pool5 (N, 512, 7, 7) feeds fc6 (4096, 25088).

Backward, from ``y[n, o] = sum_i x[n, i] W[o, i] + b[o]``: ``dx = dy W``,
``dW = dy^T x``, ``db = sum_n dy[n]``.
"""

from .base import Layer


def linear_forward_ref(x, W, b):
    return x @ W.T + b


def linear_backward_ref(dy, x, W, param_grads=False):
    if not param_grads:
        return dy @ W, None, None
    return dy @ W, dy.T @ x, dy.sum(axis=0)


class Linear(Layer):
    has_params = True

    def __init__(self, W, b, ops=None, name=None):
        super().__init__(ops, name)
        self.W, self.b = W, b
        self.dW = self.db = None

    def out_shape(self, shape):
        return (shape[0], self.W.shape[0])

    def forward(self, x):
        shape = x.shape
        x2 = x.reshape(shape[0], -1)
        self._cache = (x2, shape)
        return self.ops.linear_forward(x2, self.W, self.b)

    def backward(self, dy, param_grads=False):
        x2, shape = self._need_cache()
        dx, dW, db = self.ops.linear_backward(dy, x2, self.W, param_grads)
        if param_grads:
            self.dW, self.db = dW, db
        return dx.reshape(shape)
