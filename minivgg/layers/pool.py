r"""2-D pooling over k x k windows every s pixels (VGG: k = s = 2); docs/conv.md, section "Pooling".

Output size ``Ho = floor((H - k) / s) + 1``: floor rounding, as torch does, so a row
or column left over at an odd border is dropped. (Caffe rounds up instead,
``ceil((H - k) / s) + 1``, letting the last window hang over the border; for the even
sizes VGG was trained on both agree. We follow torch.)

Average pooling: ``y[i, j] = 1/k^2 sum_{a,e < k} x[s*i + a, s*j + e]``.
Backward: ``dx[u, v] = 1/k^2 sum over windows (i, j) containing (u, v) of dy[i, j]``.
The kernels write it as a gather (each input pixel reads the windows that cover it), so
no two threads write the same element. Gatys et al. (2016) use average pooling for
image synthesis: every input pixel receives gradient, not only the maxima.

Max pooling: ``y[i, j] = max_{a,e} x[s*i + a, s*j + e]``. Backward routes ``dy[i, j]``
to the first maximal element of window (i, j) (row-major scan, as torch); every other
element gets 0. Only the argmax offset ``a*k + e`` is kept for backward.
"""

from ..backend import get_array_module
from ..tolerances import POOL_TIE_BELOW  # noqa: F401  (the near-tie refinement before a max pool)
from .base import Layer


def _windows(x, k, s):
    """The k*k strided views x[..., a::s, e::s] (a, e row-major), each (N, C, Ho, Wo)."""
    Ho, Wo = (x.shape[2] - k) // s + 1, (x.shape[3] - k) // s + 1
    return [x[:, :, a : a + s * Ho : s, e : e + s * Wo : s] for a in range(k) for e in range(k)]


def avg_pool2d_forward_ref(x, k, s):
    return sum(_windows(x, k, s)) / x.dtype.type(k * k)


def avg_pool2d_backward_ref(dy, x_shape, k, s):
    xp = get_array_module(dy)
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for w in _windows(dx, k, s):
        w += dy / dy.dtype.type(k * k)
    return dx


def max_pool2d_forward_ref(x, k, s):
    xp = get_array_module(x)
    stack = xp.stack(_windows(x, k, s))
    arg = stack.argmax(axis=0)  # the first maximum in row-major order
    return stack.max(axis=0), (arg, x.shape, k, s)


def max_pool2d_backward_ref(dy, cache):
    arg, x_shape, k, s = cache
    xp = get_array_module(dy)
    dx = xp.zeros(x_shape, dtype=dy.dtype)
    for t, w in enumerate(_windows(dx, k, s)):
        w += dy * (arg == t)
    return dx


class _Pool(Layer):
    def __init__(self, k=2, s=2, ops=None, name=None):
        super().__init__(ops, name)
        self.k, self.s = k, s

    def out_shape(self, shape):
        N, C, H, W = shape
        return (N, C, (H - self.k) // self.s + 1, (W - self.k) // self.s + 1)


class AvgPool2d(_Pool):
    def forward(self, x):
        self._cache = x.shape
        return self.ops.avg_pool2d_forward(x, self.k, self.s)

    def backward(self, dy, param_grads=False):
        return self.ops.avg_pool2d_backward(dy, self._need_cache(), self.k, self.s)


class MaxPool2d(_Pool):
    def forward(self, x):
        y, self._cache = self.ops.max_pool2d_forward(x, self.k, self.s)
        return y

    def backward(self, dy, param_grads=False):
        return self.ops.max_pool2d_backward(dy, self._need_cache())
