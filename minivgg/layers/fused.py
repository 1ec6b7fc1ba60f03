r"""Fused layers and the plan that chooses them.

A fused layer computes exactly what its layers would in sequence, in fewer passes over
memory; it keeps the layer contract (forward, backward, its own ``_cache``), and tests
compare each with its unfused layers (tests/test_backends.py).

- ``ConvReLU``: ``y = relu(conv(x))`` in one pass (bias and ReLU in the conv's output
  transform). Backward ``dx = conv_backward(dy * [y > 0])``, the mask applied while the
  conv's backward reads dy (``ops.relu_conv2d_backward``). It keeps y and the conv's
  cache; on the CPU that cache holds x's shape only, since the input gradient needs no x.
- ``ConvReLUAvgPool``: the above, then a 2x2 average pool, whose backward
  ``g[u, v] = dy[u // 2, v // 2] / 4`` is folded into the same input transform, so the
  full-size g is never made (``relu_conv2d_backward(..., pooled=True)``).
- the mask compaction pass: a ReLU output nobody asked for, once the next step has read
  it (a pool, or a fused conv that keeps only its input's shape), is kept as ``y > 0`` in
  bytes (``ops.compact_mask``).

``plan(layers, wanted, backend)`` looks at the layer kinds in order and at what was asked
for, once per request; the net then only runs the steps. A fusion applies only to
a conv directly followed by a ReLU whose pre-activation nobody asked for, on a backend
that declares it (``Backend.fusions``): put any other layer between them and the plan
keeps them apart (``Plan.describe()`` shows the steps).
"""

from .base import Layer
from .conv import Conv2d
from .pool import AvgPool2d, MaxPool2d
from .relu import ReLU


def add_gradient(g, gi, ours, xp, fold=False):
    """g + gi for the backward: ``(g, extra, ours)``.

    gi may be a function making the array, or a deferred gradient that adds itself into
    g (``losses.style_loss_deferred``: ``add_to``). ours: g is a temporary, free to update
    in place. fold: the next step takes a second gradient (``extra``) into its own pass,
    so an array of g's shape and dtype is handed over instead of added."""
    if g is not None and ours and hasattr(gi, "add_to") and gi.fits(g):
        return gi.add_to(g), None, True  # made straight into g: no second array
    made = callable(gi)  # a function making the array: the array is ours
    gi = xp.asarray(gi() if made else gi)
    if g is None:
        return gi, None, made
    if fold and g.shape == gi.shape and g.dtype == gi.dtype:
        return g, gi, ours
    if ours and g.shape == gi.shape and g.dtype == xp.result_type(g.dtype, gi.dtype):
        g += gi
        return g, None, True
    return g + gi, None, True


class ConvReLU(Layer):
    """relu(conv(x)); ``pool_ties``: a 2x2 max pool comes next, its near-ties made exact."""

    takes_extra = True

    def __init__(self, conv, relu, pool_ties=False):
        super().__init__(conv.ops)
        self.conv, self.relu, self.pool_ties = conv, relu, pool_ties

    @property
    def names(self):
        return (self.conv.name, self.relu.name)

    def out_shape(self, shape):
        return self.conv.out_shape(shape)

    def forward(self, x):
        c = self.conv
        y, cache = self.ops.conv2d_relu_forward(x, c.W, c.b, c.stride, c.pad, c.state, pool_ties=self.pool_ties)
        self._cache = (y, cache)
        return y

    def outputs(self, y):
        return {self.relu.name: y}

    def backward(self, dy, param_grads=False):
        if not param_grads:
            return self.backward_step(dy)
        y, cache = self._need_cache()
        dx, self.conv.dW, self.conv.db = self.ops.conv2d_backward(self.ops.relu_backward(dy, y), cache, True)
        return dx

    def backward_step(self, dy, extra=None, inner=None):
        y, cache = self._need_cache()
        g_conv = (inner or {}).get(self.conv.name)
        if g_conv is None:
            return self.ops.relu_conv2d_backward(dy, y, cache, extra)
        g = None if dy is None else self.ops.relu_backward(dy, y, extra)
        g, _, _ = add_gradient(g, g_conv, True, self.ops.xp)
        return self.ops.conv2d_backward(g, cache, False)[0]

    def compact(self):
        y, cache = self._need_cache()
        self._cache = (self.ops.compact_mask(y), cache)


class ConvReLUAvgPool(Layer):
    """avg_pool2x2(relu(conv(x))); ``keep_relu``: the ReLU's output was asked for (else it
    is kept as a byte mask once the pool has read it, where the backend compacts)."""

    def __init__(self, conv, relu, pool, keep_relu=False, compact=False):
        super().__init__(conv.ops)
        self.conv, self.relu, self.pool = conv, relu, pool
        self.keep_relu, self.compact_relu = keep_relu, compact and not keep_relu
        self._relu_out = None

    @property
    def names(self):
        return (self.conv.name, self.relu.name, self.pool.name)

    def out_shape(self, shape):
        return self.pool.out_shape(self.conv.out_shape(shape))

    def forward(self, x):
        c = self.conv
        y, cache = self.ops.conv2d_relu_forward(x, c.W, c.b, c.stride, c.pad, c.state)
        p = self.ops.avg_pool2d_forward(y, 2, 2)
        self._relu_out = y if self.keep_relu else None
        self._cache = (self.ops.compact_mask(y) if self.compact_relu else y, cache)
        return p

    def outputs(self, y):
        out = {self.pool.name: y}
        if self._relu_out is not None:
            out[self.relu.name] = self._relu_out
        return out

    def backward(self, dy, param_grads=False):
        if param_grads:
            raise RuntimeError("weight gradients need the conv's input, which a fused conv + ReLU forward does not keep")
        return self.backward_step(dy)

    def backward_step(self, dy, extra=None, inner=None):
        if extra is not None:
            dy = dy + extra
        y, cache = self._need_cache()
        inner = inner or {}
        if not inner:
            return self.ops.relu_conv2d_backward(dy, y, cache, None, pooled=True)
        xp = self.ops.xp
        g = None if dy is None else self.ops.avg_pool2d_backward(dy, y.shape, 2, 2)
        extra = None
        if self.relu.name in inner:
            g, extra, _ = add_gradient(g, inner[self.relu.name], True, xp, fold=self.conv.name not in inner)
        if self.conv.name not in inner:
            return self.ops.relu_conv2d_backward(g, y, cache, extra)
        g = None if g is None else self.ops.relu_backward(g, y, extra)
        g, _, _ = add_gradient(g, inner[self.conv.name], True, xp)
        return self.ops.conv2d_backward(g, cache, False)[0]

    def clear(self):
        self._cache = self._relu_out = None


class Plan:
    """The steps of one request, in order; ``compact_after``: the indices of the steps whose
    ReLU output is compacted once the step after them has run."""

    def __init__(self, steps, compact_after):
        self.steps, self.compact_after = steps, frozenset(compact_after)
        self.index = {name: i for i, s in enumerate(steps) for name in s.names}

    def describe(self):
        return " -> ".join(repr(s) + (" [output then kept as a mask]" if i in self.compact_after else "") for i, s in enumerate(self.steps))

    def clear(self):
        for s in self.steps:
            s.clear()


def _reads_shape_only(step):
    """Whether a step keeps only its input's shape (so its input may be compacted)."""
    return isinstance(step, (AvgPool2d, MaxPool2d, ConvReLU, ConvReLUAvgPool))


def plan(layers, wanted, backend):
    """The steps that compute ``layers`` (in order, up to the deepest needed) on ``backend``,
    fusing where the kinds allow it, nobody asked for an inner output, and the backend
    has the fused code."""
    wanted = set(wanted)
    steps, i, n = [], 0, len(layers)
    while i < n:
        L = layers[i]
        nxt = layers[i + 1] if i + 1 < n else None
        after = layers[i + 2] if i + 2 < n else None
        if isinstance(L, Conv2d) and isinstance(nxt, ReLU) and L.name not in wanted and backend.fuses("conv_relu"):
            if (isinstance(after, AvgPool2d) and (after.k, after.s) == (2, 2) and backend.fuses("pool_relu_conv")
                    and backend.fuses("relu_conv")):
                steps.append(ConvReLUAvgPool(L, nxt, after, keep_relu=nxt.name in wanted,
                                             compact=backend.fuses("compact_mask")))
                i += 3
            else:
                steps.append(ConvReLU(L, nxt, pool_ties=isinstance(after, MaxPool2d)))
                i += 2
        else:
            steps.append(L)
            i += 1
    compact = []
    if backend.fuses("compact_mask"):
        for j in range(len(steps) - 1):
            s = steps[j]
            if isinstance(s, (ReLU, ConvReLU)) and s.names[-1] not in wanted and _reads_shape_only(steps[j + 1]):
                compact.append(j)
    return Plan(steps, compact)
