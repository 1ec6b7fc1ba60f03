"""Finding the CUDA sources and turning one into the text a compiler gets.

The canonical sources are ``kernels/*.cu`` and ``kernels/common.cuh`` at the top of
the repository. An installed wheel carries them as package data in
``minivgg/kernels/`` (setup.cfg maps the folder there). ``MINIVGG_KERNELS_DIR``
overrides both.

Every compiler sees the same text, built here: the module's ``#define``\\ s (window
geometry, element type), then the ``.cu`` file with its ``#include "common.cuh"``
replaced by the header's text. Inlining the header keeps the text self-contained,
so NVRTC needs no include path and CuPy's compile cache (keyed by the source text)
sees a change to the header.
"""

import re
from functools import lru_cache
from pathlib import Path

from .. import options
from ..errors import MiniVGGError

COMMON_HEADER = "common.cuh"
_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
_KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(')


def kernels_dir():
    """The folder holding ``*.cu`` and ``common.cuh``."""
    env = options.get("kernels_dir")
    here = Path(__file__).resolve().parent
    candidates = [Path(env)] if env else []
    candidates += [here.parent / "kernels", here.parents[1] / "kernels"]
    for d in candidates:
        if (d / COMMON_HEADER).is_file():
            return d
    raise MiniVGGError(
        "CUDA kernel sources not found (looked in " + ", ".join(str(d) for d in candidates) + "); "
        "reinstall minivgg or set MINIVGG_KERNELS_DIR to the repository's kernels/ folder"
    )


def kernel_files():
    """Names (without ``.cu``) of every kernel source file."""
    return sorted(p.stem for p in kernels_dir().glob("*.cu"))


@lru_cache(maxsize=None)
def _read(path):
    return Path(path).read_text()


def _expand(text, directory, seen):
    def repl(m):
        name = m.group(1)
        path = directory / name
        if not path.is_file():
            raise MiniVGGError(f"{directory / name}: included kernel header not found")
        if name in seen:
            return ""
        seen.add(name)
        return _expand(_read(str(path)), directory, seen)

    return _INCLUDE.sub(repl, text)


def kernel_source(name, defines=()):
    """The full text of ``kernels/<name>.cu`` for one module: defines first, headers inlined.

    ``defines`` is a sequence of ``(macro, value)`` pairs, e.g. ``(("KH", 3), ("MINIVGG_REAL", "float"))``.
    """
    d = kernels_dir()
    path = d / f"{name}.cu"
    if not path.is_file():
        raise MiniVGGError(f"{path}: no such kernel source")
    head = "".join(f"#define {k} {v}\n" for k, v in defines)
    return head + _expand(_read(str(path)), d, set())


def kernel_names(source):
    """The ``extern "C" __global__`` functions a source defines, in order."""
    return _KERNEL.findall(source)
