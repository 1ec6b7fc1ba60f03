"""The GPU backend: our CUDA kernels (``kernels/*.cu``) run through CuPy, or through
a CPU emulation of the CUDA grid for the ``"emulated"`` device.

- ``sources.py``: finds the ``.cu`` files; builds the text every compiler gets.
- ``cuda.py``: ``cupy.RawModule`` per (device, file, defines), memoized.
- ``emulate.py`` + ``emulate.h``: the same text compiled with g++, called via ctypes.
- ``ops.py``: :class:`KernelOps`, the device's ops (same names and caches as
  ``minivgg/cpu/ops.py``; ``minivgg/backend.py`` wraps them in a ``Backend``).

docs/gpu.md lists the kernels and what the emulation does and does not prove.
"""

import threading

from ..errors import MiniVGGError
from .cuda import require_gpu

_lock = threading.Lock()
_ops = {}


def kernel_ops(kind="gpu", **launch):
    """The kernel ops object (:class:`KernelOps`) for ``kind`` = ``"gpu"`` (CuPy) or ``"emulated"`` (numpy + emulation).

    ``launch`` (``threads``, ``max_blocks``, ``reverse``) overrides the launch
    configuration; the default objects are shared.
    """
    if kind not in ("gpu", "emulated"):
        raise MiniVGGError(f"unknown GPU backend kind {kind!r}; choose gpu or emulated")
    if kind == "gpu":
        require_gpu()  # one clear line when CuPy or a device is missing
    from .ops import KernelOps

    if launch:
        return KernelOps(kind, **launch)
    with _lock:
        if kind not in _ops:
            _ops[kind] = KernelOps(kind)
        return _ops[kind]


get_ops = kernel_ops  # the name callers and tests use


def benchmark_step(net, x, layers, iters=10):
    """Seconds per forward + backward of ``net`` (on ``device="gpu"``) to ``layers``.

    For ``scripts/bench.py --device gpu``: synchronizes the device around the timed
    loop, after one untimed warm-up iteration (kernel compilation, cuBLAS handles).
    """
    import time

    import cupy

    def step():
        feats = net.forward(x, layers)
        net.backward({name: feats[name] for name in layers})

    step()
    cupy.cuda.Device().synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    cupy.cuda.Device().synchronize()
    return (time.perf_counter() - t0) / iters
