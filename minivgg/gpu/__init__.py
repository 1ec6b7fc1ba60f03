"""The GPU backend: our CUDA kernels (``kernels/*.cu``) run through CuPy, or through
a CPU emulation of the CUDA grid for the ``"emulated"`` device.

- ``sources.py``: finds the ``.cu`` files; builds the text every compiler gets.
- ``cuda.py``: ``cupy.RawModule`` per (device, file, defines), memoized.
- ``emulate.py`` + ``emulate.h``: the same text compiled with g++, called via ctypes.
- ``ops.py``: :class:`KernelOps`, the backend ops (same names as ``minivgg/cpu/ops.py``).

docs/gpu.md lists the kernels and what the emulation does and does not prove.
"""

import threading

from ..backend import check_device
from ..errors import MiniVGGError

_lock = threading.Lock()
_ops = {}


def get_ops(kind="gpu", **launch):
    """The ops object for ``kind`` = ``"gpu"`` (CuPy) or ``"emulated"`` (numpy + emulation).

    ``launch`` (``threads``, ``max_blocks``, ``reverse``) overrides the launch
    configuration; the default objects are shared.
    """
    if kind not in ("gpu", "emulated"):
        raise MiniVGGError(f"unknown GPU backend kind {kind!r}; choose gpu or emulated")
    if kind == "gpu":
        check_device("gpu")  # one clear line when CuPy or a device is missing
    from .ops import KernelOps

    if launch:
        return KernelOps(kind, **launch)
    with _lock:
        if kind not in _ops:
            _ops[kind] = KernelOps(kind)
        return _ops[kind]


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
