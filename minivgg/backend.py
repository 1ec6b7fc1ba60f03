"""One ``Backend`` per device: its array module, its ops, and the way back to the host.

Four backends exist:

- ``"reference"``: numpy arrays; every op is the plain array code written in the layer
  files (``minivgg/layers``), the losses (``minivgg/losses.py``) and the optimizer
  steps below. Slow and obviously right: what the others are tested against.
- ``"cpu"``: numpy arrays; hot loops in numba (``minivgg/cpu/ops.py``), GEMMs our own
  or BLAS.
- ``"gpu"``: CuPy arrays; element-wise and data-movement work in our CUDA kernels
  (``kernels/*.cu`` loaded by ``minivgg/gpu``), GEMMs through cuBLAS.
- ``"emulated"``: the GPU code path (same launch code, same ``.cu`` files) on numpy
  arrays, every kernel executed by a CPU emulation of the CUDA grid. Slow; for proving
  the GPU path correct on machines without a GPU.

Every backend's ``ops`` has the same op names (``OPS``) with the same signatures and
cache layouts. An op a device has no code of its own for is taken from the reference,
and the backend says so: ``Backend.fallbacks`` lists them, ``Backend.describe()`` prints
them. ``Backend.fusions`` names the fused steps the device has fast code for; the net's
plan (``minivgg/layers/fused.py``) reads it, nothing else probes a backend.
"""

import threading

import numpy as np

from .errors import MiniVGGError
from .gpu.cuda import NO_GPU_MESSAGE  # noqa: F401  (re-exported: callers import it from here)

DEVICES = ("cpu", "gpu", "emulated")  # what a user picks
BACKENDS = ("reference",) + DEVICES

# The ops of every backend: layers, fused layers, losses, optimizer steps.
OPS = (
    "layer_weights", "conv2d_forward", "conv2d_backward", "conv2d_relu_forward", "relu_conv2d_backward",
    "relu_forward", "relu_backward", "compact_mask",
    "avg_pool2d_forward", "avg_pool2d_backward", "max_pool2d_forward", "max_pool2d_backward",
    "linear_forward", "linear_backward",
    "content_loss", "gram_matrix", "style_loss", "style_loss_deferred", "total_variation", "alpha_norm",
    "adam_update", "sgd_update",
)

# The fusions a plan may choose (minivgg/layers/fused.py):
#   conv_relu       conv + ReLU forward in one pass (bias and ReLU in the output transform)
#   relu_conv       ReLU's mask folded into the conv's backward
#   pool_relu_conv  a 2x2 average pool's backward folded into the ReLU-conv backward below it
#   compact_mask    a ReLU output nobody asked for, once read, kept as a byte mask
FUSIONS = ("conv_relu", "relu_conv", "pool_relu_conv", "compact_mask")


def get_array_module(x):
    """Return ``cupy`` for a CuPy array and ``numpy`` for anything else."""
    mod = type(x).__module__
    if mod.startswith("cupy"):
        import cupy

        return cupy
    return np


def to_host(x):
    """A numpy array with the contents of ``x`` (a copy only when ``x`` is on the GPU)."""
    if get_array_module(x) is np:
        return np.asarray(x)
    return x.get()


def check_device(device):
    """Validate a device name, and for ``"gpu"`` that CuPy and a CUDA device are present."""
    if device not in BACKENDS:
        raise MiniVGGError(f"unknown device {device!r}; choose one of {', '.join(BACKENDS)}")
    if device == "gpu":
        from .gpu.cuda import require_gpu

        require_gpu()
    return device


def array_module_for(device):
    """The array module a device computes with."""
    if device == "gpu":
        import cupy

        return cupy
    return np


# ---- the reference ops ------------------------------------------------------------------


class ReferenceOps:
    """Every op in plain array code (``xp`` = numpy or CuPy, from the arrays): the layer
    files' reference forward and backward, minivgg/losses.py, and the optimizer steps.
    The composed ops (``conv2d_relu_forward``, ``relu_conv2d_backward``) are written with
    the ops of the backend they serve (``base``), so a device without a fused kernel runs
    its own unfused kernels in sequence."""

    name = "reference"

    def __init__(self, base=None):
        self.base = self if base is None else base

    # layers
    def layer_weights(self, W, state):
        return W  # the reference keeps W as given

    def conv2d_forward(self, x, W, b, stride, pad, state):
        from .layers.conv import conv2d_forward_ref

        return conv2d_forward_ref(x, W, b, stride, pad), (x, W, stride, pad, state)

    def conv2d_backward(self, dy, cache, param_grads):
        from .layers.conv import conv2d_backward_ref

        x, W, stride, pad, _state = cache
        return conv2d_backward_ref(dy, x, W, stride, pad, param_grads)

    def conv2d_relu_forward(self, x, W, b, stride, pad, state, pool_ties=False):
        """relu(conv2d(x)); pool_ties asks for exact near-ties before a max pool, which an
        exact (unfused) computation has anyway."""
        y, cache = self.base.conv2d_forward(x, W, b, stride, pad, state)
        return self.base.relu_forward(y), cache

    def relu_conv2d_backward(self, dy, y, cache, extra=None, pooled=False):
        """The input gradient of x -> conv2d -> relu -> y (-> 2x2 average pool when pooled)."""
        if pooled:
            dy = self.base.avg_pool2d_backward(dy, y.shape, 2, 2)
        return self.base.conv2d_backward(self.base.relu_backward(dy, y, extra), cache, False)[0]

    def relu_forward(self, x):
        from .layers.relu import relu_forward_ref

        return relu_forward_ref(x)

    def relu_backward(self, dy, y, extra=None):
        from .layers.relu import relu_backward_ref

        return relu_backward_ref(dy if extra is None else dy + extra, y)

    def compact_mask(self, y):
        return y  # the reference keeps the output itself as the mask

    def avg_pool2d_forward(self, x, k, s):
        from .layers.pool import avg_pool2d_forward_ref

        return avg_pool2d_forward_ref(x, k, s)

    def avg_pool2d_backward(self, dy, x_shape, k, s):
        from .layers.pool import avg_pool2d_backward_ref

        return avg_pool2d_backward_ref(dy, x_shape, k, s)

    def max_pool2d_forward(self, x, k, s):
        from .layers.pool import max_pool2d_forward_ref

        return max_pool2d_forward_ref(x, k, s)

    def max_pool2d_backward(self, dy, cache):
        from .layers.pool import max_pool2d_backward_ref

        return max_pool2d_backward_ref(dy, cache)

    def linear_forward(self, x, W, b):
        from .layers.linear import linear_forward_ref

        return linear_forward_ref(x, W, b)

    def linear_backward(self, dy, x, W, param_grads):
        from .layers.linear import linear_backward_ref

        return linear_backward_ref(dy, x, W, param_grads)

    # losses (minivgg/losses.py holds their math)
    def content_loss(self, F, P):
        from . import losses

        return losses.content_loss(F, P)

    def gram_matrix(self, F):
        from . import losses

        return losses.gram_matrix(F)

    def style_loss(self, F, A, mask=False):
        from . import losses

        v, g = losses.style_loss(F, A)
        if mask:
            g = g * (F > 0)
        return v, g

    def style_loss_deferred(self, F, A, weight=1.0):
        from . import losses

        return losses.style_loss_deferred(F, A, weight)

    def total_variation(self, x, beta=2.0):
        from . import losses

        return losses.total_variation(x, beta)

    def alpha_norm(self, x, alpha=6.0):
        from . import losses

        return losses.alpha_norm(x, alpha)

    # optimizer steps, in place (minivgg/optim.py holds their math)
    def adam_update(self, x, g, m, v, k, lr, b1=0.9, b2=0.999, eps=1e-8):
        """m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; x -= lr/(1-b1^k) m / (sqrt(v)/sqrt(1-b2^k) + eps)."""
        import math

        xp = get_array_module(x)
        m[...] = m * b1 + g * (1 - b1)
        v[...] = v * b2 + (g * g) * (1 - b2)
        denom = xp.sqrt(v) / math.sqrt(1 - b2**k) + eps
        x[...] = x - (lr / (1 - b1**k)) * (m / denom)
        return x

    def sgd_update(self, x, g, buf, lr, momentum=0.9, first=False):
        """buf = g on the first step, else momentum buf + g; x -= lr buf."""
        if first:
            buf[...] = g
        else:
            buf[...] = buf * momentum + g
        x[...] = x - lr * buf
        return x


class Ops:
    """A backend's op table: one attribute per name in ``OPS``."""

    def __init__(self, name, native, fallbacks, xp=np):
        self.name, self.native, self.xp = name, native, xp
        self._own = frozenset(OPS) - set(fallbacks)
        ref = ReferenceOps(base=self)
        for op in fallbacks:
            setattr(self, op, getattr(ref, op))

    def __getattr__(self, op):
        # the device's own ops are looked up on it at each call, so a test's patch of the
        # device's module or class is seen
        if op in self.__dict__.get("_own", ()):
            return getattr(self.native, op)
        raise AttributeError(f"backend {self.__dict__.get('name')} has no op {op!r}")

    def __repr__(self):
        return f"Ops({self.name!r})"


class Backend:
    """A device's array module, ops and fusions.

    fallbacks: the op names this device takes from the reference (declared, not probed).
    fusions: the fused steps (``FUSIONS``) it has fast code for.
    """

    def __init__(self, name, xp, native, fallbacks=(), fusions=()):
        self.name, self.xp = name, xp
        self.fallbacks = tuple(op for op in OPS if op in fallbacks)
        self.fusions = frozenset(fusions)
        unknown = set(fallbacks) - set(OPS) or self.fusions - set(FUSIONS)
        if unknown:
            raise ValueError(f"backend {name}: unknown ops or fusions {sorted(unknown)}")
        self.ops = native if isinstance(native, Ops) else Ops(name, native, self.fallbacks, xp)

    def fuses(self, fusion):
        return fusion in self.fusions

    def asarray(self, a):
        return self.xp.asarray(a)

    to_host = staticmethod(to_host)

    def describe(self):
        """Lines saying which ops are the device's own, which come from the reference, and
        which fusions a plan may use."""
        own = [op for op in OPS if op not in self.fallbacks]
        return "\n".join([
            f"backend {self.name}",
            f"  own ops: {', '.join(own) if own else '(none)'}",
            f"  from the reference: {', '.join(self.fallbacks) if self.fallbacks else '(none)'}",
            f"  fusions: {', '.join(f for f in FUSIONS if f in self.fusions) or '(none)'}",
        ])

    def __repr__(self):
        return f"Backend({self.name!r})"


# What each device takes from the reference: the CPU backend has no loss or optimizer
# kernels (numpy's array code is what they would be); the GPU backends keep weights as
# given, keep the ReLU output as its mask, and run the ReLU-conv backward as their own
# ReLU and conv kernels in sequence.
CPU_FALLBACKS = ("content_loss", "gram_matrix", "style_loss", "style_loss_deferred", "total_variation", "alpha_norm",
                 "adam_update", "sgd_update")
GPU_FALLBACKS = ("layer_weights", "compact_mask", "relu_conv2d_backward")
CPU_FUSIONS = FUSIONS
GPU_FUSIONS = ("conv_relu",)

_lock = threading.Lock()
_backends = {}


def make_backend(device, native=None):
    """A new Backend for ``device``; ``native`` overrides the device's own ops object
    (e.g. ``gpu.KernelOps("emulated", threads=32)``)."""
    check_device(device)
    if device == "reference":
        ref = ReferenceOps()
        return Backend("reference", np, Ops("reference", ref, OPS))
    if device == "cpu":
        from .cpu import ops as cpu_ops

        return Backend("cpu", np, cpu_ops if native is None else native, CPU_FALLBACKS, CPU_FUSIONS)
    if native is None:
        from .gpu import kernel_ops

        native = kernel_ops(device)
    return Backend(device, native.xp, native, GPU_FALLBACKS, GPU_FUSIONS)


def get_backend(device):
    """The shared Backend of ``device`` (``"reference"``, ``"cpu"``, ``"gpu"``, ``"emulated"``)."""
    check_device(device)
    with _lock:
        b = _backends.get(device)
    if b is None:
        b = make_backend(device)
        with _lock:
            b = _backends.setdefault(device, b)
    return b


def get_ops(device):
    """The ops of a device's backend (same op names and signatures on every backend)."""
    return get_backend(device).ops
