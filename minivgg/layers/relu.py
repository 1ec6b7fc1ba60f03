r"""Rectified linear unit.

Forward ``y = max(x, 0)``. Backward ``dx = dy * [y > 0]``: the derivative is 1 where
the input was positive and 0 where it was negative; at the kink x = 0 we take 0, as
torch and Caffe do. Only the output is kept (the mask ``y > 0`` equals ``x > 0``), and
it is the next layer's input anyway, so backward costs no extra memory.
"""

from .base import Layer


class ReLU(Layer):
    def forward(self, x):
        y = self.ops.relu_forward(x)
        self._cache = y
        return y

    def backward(self, dy, param_grads=False):
        return self.ops.relu_backward(dy, self._need_cache())
