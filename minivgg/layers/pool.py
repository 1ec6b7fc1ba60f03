r"""2-D pooling over k x k windows every s pixels (VGG: k = s = 2).

Output size ``Ho = floor((H - k) / s) + 1``: floor rounding, as torch does, so a row
or column left over at an odd border is dropped. (Caffe rounds up instead,
``ceil((H - k) / s) + 1``, letting the last window hang over the border; for the even
sizes VGG was trained on both agree. We follow torch.)

Average pooling: ``y[i, j] = 1/k^2 sum_{a,e < k} x[s*i + a, s*j + e]``.
Backward: ``dx[u, v] = 1/k^2 sum over windows (i, j) containing (u, v) of dy[i, j]``.
Written as a gather (each input pixel reads the windows that cover it), so no two
threads write the same element. Gatys et al. (2016) use average pooling for image
synthesis: every input pixel receives gradient, not only the maxima.

Max pooling: ``y[i, j] = max_{a,e} x[s*i + a, s*j + e]``. Backward routes ``dy[i, j]``
to the first maximal element of window (i, j) (row-major scan, as torch); every other
element gets 0. Only the argmax offset (one byte per output) is kept for backward.
"""

from .base import Layer


class AvgPool2d(Layer):
    def __init__(self, k=2, s=2, ops=None):
        super().__init__(ops)
        self.k, self.s = k, s

    def forward(self, x):
        self._cache = x.shape
        return self.ops.avg_pool2d_forward(x, self.k, self.s)

    def backward(self, dy, param_grads=False):
        return self.ops.avg_pool2d_backward(dy, self._need_cache(), self.k, self.s)


class MaxPool2d(Layer):
    def __init__(self, k=2, s=2, ops=None):
        super().__init__(ops)
        self.k, self.s = k, s

    def forward(self, x):
        y, self._cache = self.ops.max_pool2d_forward(x, self.k, self.s)
        return y

    def backward(self, dy, param_grads=False):
        return self.ops.max_pool2d_backward(dy, self._need_cache())
