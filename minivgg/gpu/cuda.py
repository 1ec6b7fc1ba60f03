"""Loading the CUDA kernels on a GPU through CuPy.

One ``cupy.RawModule`` per (device, kernel file, defines), compiled by NVRTC from the
text :func:`minivgg.gpu.sources.kernel_source` builds and memoized here; CuPy keeps
its own on-disk cache of compiled binaries across processes.
"""

import threading

from ..errors import MiniVGGError
from .sources import kernel_source

NO_GPU_MESSAGE = "no CUDA device found; install minivgg[gpu] on a machine with an NVIDIA GPU"

_lock = threading.Lock()
_modules = {}

NVRTC_OPTIONS = ("--std=c++14",)


def load_module(name, defines=()):
    """The ``cupy.RawModule`` for ``kernels/<name>.cu`` on the current device."""
    import cupy

    key = (cupy.cuda.Device().id, name, tuple(defines))
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = cupy.RawModule(code=kernel_source(name, defines), options=NVRTC_OPTIONS)
            if hasattr(mod, "compile"):  # CuPy >= 9: compile now, so a build error surfaces at load
                mod.compile()
            _modules[key] = mod
    return mod


def require_gpu():
    """Raise MiniVGGError (one line) unless CuPy and a CUDA device are present."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise MiniVGGError(NO_GPU_MESSAGE)
    except MiniVGGError:
        raise
    except Exception:  # ImportError, CUDARuntimeError, missing driver: all mean no GPU
        raise MiniVGGError(NO_GPU_MESSAGE) from None
