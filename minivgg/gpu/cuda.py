"""Loading the CUDA kernels on a GPU through CuPy.

One ``cupy.RawModule`` per (device, kernel file, defines), compiled by NVRTC from the
text :func:`minivgg.gpu.sources.kernel_source` builds and memoized here; CuPy keeps
its own on-disk cache of compiled binaries across processes.
"""

import threading

from .sources import kernel_source

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
