"""The contract every layer keeps.

A layer computes ``y = f(x)`` in ``forward`` and keeps exactly what its backward needs;
``backward(dy)`` returns ``dx = (df/dx)^T dy`` for the last forward call. Layers with
parameters also compute ``dW`` and ``db`` when asked (``param_grads=True``): image
optimization never needs them, training-style checks do. The arithmetic is done by the
backend's ``ops`` (numpy + numba on the CPU, our CUDA kernels on the GPU); the layer
file holds the math and its derivation.
"""


class Layer:
    """Base class: ``forward(x) -> y``, ``backward(dy, param_grads=False) -> dx``."""

    has_params = False

    def __init__(self, ops=None):
        if ops is None:
            from ..cpu import ops as cpu_ops

            ops = cpu_ops
        self.ops = ops
        self._cache = None

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, param_grads=False):
        raise NotImplementedError

    def clear(self):
        """Drop what the last forward kept for backward."""
        self._cache = None

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache
