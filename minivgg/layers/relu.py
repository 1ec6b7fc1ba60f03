r"""Rectified linear unit; docs/conv.md, section "ReLU".

Forward ``y = max(x, 0)``. Backward ``dx = dy * [y > 0]``: the derivative is 1 where
the input was positive and 0 where it was negative; at the kink x = 0 we take 0, as
torch and Caffe do. Only the output is kept (the mask ``y > 0`` equals ``x > 0``), and
it is the next layer's input anyway, so backward costs no extra memory. Once the next
layer has read it and nobody asked for it, a backend may keep just the mask (``y > 0``
as bytes: ``ops.compact_mask``); every backward takes either as ``y``.
"""

from ..backend import get_array_module
from .base import Layer


def relu_forward_ref(x):
    return get_array_module(x).maximum(x, 0).astype(x.dtype, copy=False)


def relu_backward_ref(dy, y):
    return dy * (y > 0)


class ReLU(Layer):
    def forward(self, x):
        y = self.ops.relu_forward(x)
        self._cache = y
        return y

    def backward(self, dy, param_grads=False):
        return self.ops.relu_backward(dy, self._need_cache())

    def compact(self):
        self._cache = self.ops.compact_mask(self._need_cache())
