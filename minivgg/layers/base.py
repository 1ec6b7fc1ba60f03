"""The contract every layer keeps.

A layer computes ``y = f(x)`` in ``forward`` and keeps, in its own ``_cache``, exactly
what its backward needs; ``backward(dy)`` returns ``dx = (df/dx)^T dy`` for the last
forward call (the chain rule: dL/dx = (dy/dx)^T dL/dy). Layers with parameters also
compute ``dW`` and ``db`` when asked (``param_grads=True``): image optimization never
needs them, training-style checks do.

Each layer file holds the derivation (docs/conv.md derives conv, ReLU and pooling), a
reference forward and backward in plain array code (``xp`` is numpy or CuPy, from the
arrays), and the layer class, whose arithmetic is its backend's ``ops`` (the reference
itself, numpy + numba on the CPU, our CUDA kernels on the GPU; minivgg/backend.py).

A fused layer (layers/fused.py) stands for several consecutive layers and keeps the same
contract; the net's plan chooses it. Its ``names`` are the layers it covers; gradients
arriving at an inner layer's output come in ``backward_step(..., inner=)``.
"""


def default_ops():
    from ..backend import get_backend

    return get_backend("cpu").ops


class Layer:
    """Base class: ``forward(x) -> y``, ``backward(dy, param_grads=False) -> dx``."""

    has_params = False
    takes_extra = False  # backward_step adds a second output gradient inside its own pass

    def __init__(self, ops=None, name=None):
        self.ops = default_ops() if ops is None else ops
        self.name = name
        self._cache = None

    @property
    def names(self):
        """The layers this one stands for (one; a fused layer several)."""
        return (self.name,)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, dy, param_grads=False):
        raise NotImplementedError

    def backward_step(self, dy, extra=None, inner=None):
        """The net's call: dy the gradient at the output (plus ``extra``, a second one, for
        layers that take it), ``inner`` {name: gradient} at inner outputs (fused layers)."""
        if inner:
            raise ValueError(f"{type(self).__name__} has no inner outputs; got gradients for {sorted(inner)}")
        return self.backward(dy if extra is None else dy + extra)

    def outputs(self, y):
        """{name: array} of the outputs the last forward made: its own, and a fused layer's inner ones."""
        return {self.name: y}

    def out_shape(self, shape):
        """The output shape for an input of ``shape`` (layers that keep it: the same)."""
        return tuple(shape)

    def compact(self):
        """Keep less of the cached output once the next layer has read it (ReLU: a byte mask)."""

    def clear(self):
        """Drop what the last forward kept for backward."""
        self._cache = None

    def _need_cache(self):
        if self._cache is None:
            raise RuntimeError(f"{type(self).__name__}.backward called before forward")
        return self._cache

    def __repr__(self):
        return f"{type(self).__name__}({'+'.join(str(n) for n in self.names)})"
