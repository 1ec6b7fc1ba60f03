"""numpy or CuPy: which array module an array belongs to, and which device a net uses.

Three devices exist:

- ``"cpu"``: numpy arrays; hot loops in numba (``minivgg/cpu``), GEMMs through BLAS.
- ``"gpu"``: CuPy arrays; element-wise and data-movement work in our CUDA kernels
  (``kernels/*.cu`` loaded by ``minivgg/gpu``), GEMMs through cuBLAS.
- ``"emulated"``: the GPU code path (same launch code, same ``.cu`` files) on numpy
  arrays, every kernel executed by a CPU emulation of the CUDA grid. Slow; for proving
  the GPU path correct on machines without a GPU.
"""

import numpy as np

from .errors import MiniVGGError

DEVICES = ("cpu", "gpu", "emulated")
NO_GPU_MESSAGE = "no CUDA device found; install minivgg[gpu] on a machine with an NVIDIA GPU"


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
    if device not in DEVICES:
        raise MiniVGGError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "gpu":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() < 1:
                raise MiniVGGError(NO_GPU_MESSAGE)
        except MiniVGGError:
            raise
        except Exception:  # ImportError, CUDARuntimeError, missing driver: all mean no GPU
            raise MiniVGGError(NO_GPU_MESSAGE) from None
    return device


def array_module_for(device):
    """The array module a device computes with."""
    if device == "gpu":
        import cupy

        return cupy
    return np


def get_ops(device):
    """The backend ops object for a device (same function names on every backend)."""
    check_device(device)
    if device == "cpu":
        from .cpu import ops

        return ops
    from . import gpu

    return gpu.get_ops(device)
