"""Run the CUDA kernels on the CPU: the ``"emulated"`` device.

Each kernel file is compiled with a C++ compiler (``$CXX``, default ``g++``) against
``emulate.h``, which defines ``__global__``, ``dim3``, ``blockIdx``/``threadIdx``/
``blockDim``/``gridDim`` and a launcher that runs the kernel body for every block and
thread of the grid. The translation unit is::

    #include "emulate.h"
    <kernel_source(name, defines): the very text NVRTC compiles on the GPU path>
    MINIVGG_EMULATE_EXPORT(<kernel>)   // for each kernel in the file

The shared libraries are cached on disk, keyed by a hash of everything that goes into
them (text, header, compiler, flags), in ``$MINIVGG_EMULATE_CACHE`` or a per-user
folder under the system temporary directory.

:class:`EmulatedModule` mirrors the part of ``cupy.RawModule`` the launch code uses:
``module.get_function(name)(grid, block, args)``. Arguments are checked against the
kernel's C signature (count, order, scalar types, array dtypes, contiguity,
writability), so a launch that would silently misbehave on a GPU fails here.
"""

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import numpy as np

from .. import options
from ..errors import MiniVGGError
from .sources import kernel_names, kernel_source

HEADER = Path(__file__).resolve().parent / "emulate.h"
FLAGS = ("-std=c++17", "-O2", "-fPIC", "-shared", "-Wall", "-Wno-unused-function")
SANITIZE_FLAGS = ("-std=c++17", "-O1", "-g", "-fPIC", "-shared", "-Wall", "-Wno-unused-function",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer")

# the C type behind each signature code (see emulate.h), and the numpy dtype of each pointer code
_SCALARS = {"i": (np.int32, ctypes.c_int32), "u": (np.uint32, ctypes.c_uint32),
            "q": (np.int64, ctypes.c_int64), "f": (np.float32, ctypes.c_float),
            "d": (np.float64, ctypes.c_double)}
_POINTERS = {c.upper(): np.dtype(t) for c, (t, _) in _SCALARS.items()}

_lock = threading.Lock()
_modules = {}
_compiler_ids = {}


def sanitizing():
    """True when ``MINIVGG_EMULATE_SANITIZE=1``: libraries are built with ASan + UBSan.

    The process must then have the ASan runtime loaded first (``LD_PRELOAD``); the
    tests run such a process.
    """
    return options.get("emulate_sanitize")


def cache_path():
    """Where the compiled libraries live (MINIVGG_EMULATE_CACHE, else a folder of this user's
    in the temp dir), without creating it."""
    d = options.get("emulate_cache")
    if d:
        return Path(d)
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"minivgg-emulate-{uid}"


def cache_dir():
    """Where the compiled libraries live (created, private to this user)."""
    d = cache_path()
    if options.get("emulate_cache"):
        d.mkdir(parents=True, exist_ok=True)
        return d
    d.mkdir(mode=0o700, exist_ok=True)
    if hasattr(os, "getuid"):
        # we dlopen what is in there: refuse a folder someone else owns or can write to
        st = d.stat()
        if st.st_uid != os.getuid() or st.st_mode & 0o022:
            raise MiniVGGError(f"{d}: emulation cache folder not owned by you or writable by others; "
                               "remove it or set MINIVGG_EMULATE_CACHE to a private folder")
    return d


def compiler():
    """The C++ compiler command, or MiniVGGError when there is none."""
    cxx = os.environ.get("CXX", "g++")
    path = shutil.which(cxx)
    if path is None:
        raise MiniVGGError(f"the emulated device needs a C++ compiler; {cxx!r} not found (install g++ or set CXX)")
    return path


def _compiler_id(cxx):
    if cxx not in _compiler_ids:
        out = subprocess.run([cxx, "--version"], capture_output=True, text=True)
        _compiler_ids[cxx] = out.stdout
    return _compiler_ids[cxx]


def translation_unit(name, defines):
    """The C++ text compiled for kernel file ``name`` with ``defines``."""
    src = kernel_source(name, defines)
    exports = "".join(f"MINIVGG_EMULATE_EXPORT({k})\n" for k in kernel_names(src))
    return '#include "emulate.h"\n' + src + "\n// emulation entry points\n" + exports


def build(name, defines=(), sanitize=None):
    """Compile (or find in the cache) the shared library for one module; returns its path."""
    sanitize = sanitizing() if sanitize is None else sanitize
    cxx = compiler()
    flags = SANITIZE_FLAGS if sanitize else FLAGS
    tu = translation_unit(name, defines)
    header = HEADER.read_text()
    key = hashlib.sha256("\0".join([tu, header, cxx, _compiler_id(cxx), *flags]).encode()).hexdigest()[:24]
    out_dir = cache_dir()
    lib = out_dir / f"{name}-{key}.so"
    if lib.is_file():
        return lib
    fd, tmp = tempfile.mkstemp(prefix=f"{name}-", dir=out_dir)
    os.close(fd)
    src_path = Path(tmp + ".cpp")
    src_path.write_text(tu)
    cmd = [cxx, *flags, "-I", str(HEADER.parent), "-o", tmp, str(src_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    src_path.unlink()
    if proc.returncode != 0:
        os.unlink(tmp)
        raise MiniVGGError(f"kernels/{name}.cu: the emulation build failed:\n{' '.join(cmd)}\n{proc.stderr}")
    os.replace(tmp, lib)  # atomic: a parallel build of the same key ends with one good file
    return lib


class EmulatedKernel:
    """One kernel of an emulated module; call it like a ``cupy.RawKernel``."""

    def __init__(self, lib, name, reverse=False):
        self.name = name
        self.reverse = reverse
        self._launch = getattr(lib, f"minivgg_launch_{name}")
        self._launch.restype = ctypes.c_int
        self._launch.argtypes = [ctypes.POINTER(ctypes.c_uint), ctypes.POINTER(ctypes.c_uint),
                                 ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        sig = getattr(lib, f"minivgg_signature_{name}")
        sig.restype = ctypes.c_char_p
        mask = getattr(lib, f"minivgg_writable_{name}")
        mask.restype = ctypes.c_char_p
        self.signature = sig().decode()
        self.writable = mask().decode()

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if shared_mem:
            raise ValueError(f"{self.name}: dynamic shared memory is not emulated")
        grid = tuple(grid) + (1,) * (3 - len(grid))
        block = tuple(block) + (1,) * (3 - len(block))
        if len(args) != len(self.signature):
            raise TypeError(f"{self.name}: {len(args)} arguments given, the kernel takes {len(self.signature)}")
        keep = []  # the ctypes objects must outlive the call
        ptrs = (ctypes.c_void_p * len(args))()
        for i, (a, code, w) in enumerate(zip(args, self.signature, self.writable)):
            if code in _POINTERS:
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{self.name}: argument {i} must be an array, got {type(a).__name__}")
                if a.dtype != _POINTERS[code]:
                    raise TypeError(f"{self.name}: argument {i} must be {_POINTERS[code]}, got {a.dtype}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"{self.name}: argument {i} is not C-contiguous")
                if w == "w" and not a.flags.writeable:
                    raise ValueError(f"{self.name}: argument {i} is written by the kernel but read-only")
                obj = ctypes.c_void_p(a.ctypes.data)
            else:
                want, ctype = _SCALARS[code]
                if type(a) is not want:  # numpy scalars of exactly the C type, as the GPU path passes
                    raise TypeError(f"{self.name}: argument {i} must be {np.dtype(want)}, got {type(a).__name__}")
                obj = ctype(a.item())
            keep.append(obj)
            ptrs[i] = ctypes.cast(ctypes.pointer(obj), ctypes.c_void_p)
        g = (ctypes.c_uint * 3)(*grid)
        b = (ctypes.c_uint * 3)(*block)
        rc = self._launch(g, b, ptrs, int(self.reverse))
        if rc:
            raise ValueError(f"{self.name}: invalid launch configuration grid={grid} block={block}")


class EmulatedModule:
    """The emulated twin of ``cupy.RawModule`` for one kernel file and set of defines."""

    def __init__(self, name, defines=(), reverse=False, sanitize=None):
        self.name = name
        self.path = build(name, defines, sanitize)
        self._lib = ctypes.CDLL(str(self.path))
        self._reverse = reverse
        self._kernels = {}

    def get_function(self, kernel):
        if kernel not in self._kernels:
            if not hasattr(self._lib, f"minivgg_launch_{kernel}"):
                raise AttributeError(f"kernels/{self.name}.cu has no kernel {kernel!r}")
            self._kernels[kernel] = EmulatedKernel(self._lib, kernel, self._reverse)
        return self._kernels[kernel]


def load_module(name, defines=(), reverse=False):
    """The emulated module for ``kernels/<name>.cu`` with ``defines``, memoized."""
    sanitize = sanitizing()
    key = (name, tuple(defines), bool(reverse), sanitize)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = _modules[key] = EmulatedModule(name, defines, reverse, sanitize)
    return mod
