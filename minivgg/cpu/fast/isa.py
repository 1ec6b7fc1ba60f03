"""Which vector instructions the CPU kernels use: one level for the process, chosen here.

Levels, from the most capable down (docs/gemm.md):

- ``avx512`` (needs avx512f): gemm.py's 8 x 48 micro-kernel on 16-float vectors;
- ``avx2`` (needs avx2 and fma): numpy's BLAS for the products by default (OpenBLAS's
  AVX2 kernels measured faster than our 6 x 16 one, docs/gemm.md), or that kernel, on
  8-float vectors, with ``MINIVGG_GEMM=ours``;
- ``blas``: numpy's BLAS for every product: the fallback everywhere else (ARM included).

Which products a level runs is :func:`gemm_choice`: ``ours`` or ``blas``, by default
``GEMM_AT_LEVEL[level]``, or ``MINIVGG_GEMM=ours|blas`` (``ours`` at level blas is an error).

The host's level is what numba compiles for. By default that is this processor (LLVM's
``get_host_cpu_features()``, read once). When ``NUMBA_CPU_NAME`` or ``NUMBA_CPU_FEATURES``
set numba's target, the level is the target's instead, found by asking LLVM to compile a
16-float and an 8-float fused multiply-add for that target and reading which registers it
used: only LLVM knows a named CPU's default features, and numba (0.68) keeps the host's
features when only the name is set, so ``NUMBA_CPU_NAME=haswell`` alone still compiles
AVX-512 code (and still gets level ``avx512``); ``NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=``
(empty) is a Haswell: AVX2 code only, level ``avx2``. That is how an AVX2-only machine is
tested on an AVX-512 one.

``MINIVGG_ISA=avx512|avx2|blas`` asks for a level at or below the host's (a higher one is a
MiniVGGError naming the variable and the host's level). :func:`forced` sets the level (and
the GEMM choice) inside a ``with`` block, for tests that run every supported level in one
process. The variables are read by minivgg/options.py (``options.using(isa=...)`` sets them
for a block of code too).
"""

import contextlib
import threading

from ... import options
from ...errors import MiniVGGError

LEVELS = ("blas", "avx2", "avx512")  # lowest first
_RANK = {name: r for r, name in enumerate(LEVELS)}

# the products each level runs by default: our kernel where it measured at least as fast
# as numpy's OpenBLAS on that level, else BLAS (docs/gemm.md, docs/benchmarks.md)
GEMM_AT_LEVEL = {"avx512": "ours", "avx2": "blas", "blas": "blas"}

_HOST = None
_FORCED = []  # (level, gemm) of the forced() blocks open now, innermost last (process-wide: the pool threads see it)
_LOCK = threading.Lock()


def _level_of_features(features):
    """The level a dict of LLVM feature flags allows."""
    if features.get("avx512f"):
        return "avx512"
    if features.get("avx2") and features.get("fma"):
        return "avx2"
    return "blas"


_PROBE = """
declare <{n} x float> @llvm.fma.v{n}f32(<{n} x float>, <{n} x float>, <{n} x float>)
define void @probe{n}(<{n} x float>* %p) {{
  %a = load <{n} x float>, <{n} x float>* %p
  %r = call <{n} x float> @llvm.fma.v{n}f32(<{n} x float> %a, <{n} x float> %a, <{n} x float> %a)
  store <{n} x float> %r, <{n} x float>* %p
  ret void
}}
"""


def _level_of_target(cpu, features):
    """The level of an LLVM target (cpu name, feature string): which registers its code for a
    16-float and an 8-float fma uses (zmm: AVX-512; ymm and vfmadd: AVX2 + FMA)."""
    import llvmlite.binding as ll

    ll.initialize_native_target()
    ll.initialize_native_asmprinter()
    tm = ll.Target.from_default_triple().create_target_machine(cpu=cpu, features=features, opt=2)
    asm16 = tm.emit_assembly(ll.parse_assembly(_PROBE.format(n=16)))
    if "zmm" in asm16:
        return "avx512"
    asm8 = tm.emit_assembly(ll.parse_assembly(_PROBE.format(n=8)))
    if "ymm" in asm8 and "vfmadd" in asm8:
        return "avx2"
    return "blas"


def _detect():
    try:
        import llvmlite.binding as ll
        from numba.core import config

        if config.CPU_NAME is None and config.CPU_FEATURES is None:
            return _level_of_features(ll.get_host_cpu_features())
        cpu = config.CPU_NAME or ll.get_host_cpu_name()
        features = config.CPU_FEATURES if config.CPU_FEATURES is not None else ll.get_host_cpu_features().flatten()
        return _level_of_target(cpu, features)
    except Exception:  # LLVM cannot read this host's features or compile for it: numpy's BLAS
        return "blas"


def host_level():
    """The most capable level numba's target (by default this processor) supports."""
    global _HOST
    if _HOST is None:
        _HOST = _detect()
    return _HOST


def supported():
    """The levels this host can run, lowest first."""
    return LEVELS[: _RANK[host_level()] + 1]


def _check(name, source):
    if name not in _RANK:
        raise MiniVGGError(f"{source}={name}: unknown instruction set level; use one of {', '.join(reversed(LEVELS))}")
    if _RANK[name] > _RANK[host_level()]:
        raise MiniVGGError(f"{source}={name}: this host's level is {host_level()} (the most it supports); "
                           f"unset {source} or ask for {' or '.join(supported()[::-1])}")
    return name


def requested():
    """The level the environment asks for (MINIVGG_ISA), else None."""
    isa = options.get("isa")
    return _check(isa, options.origin("isa")) if isa else None


def level():
    """The level the kernels use now: the innermost :func:`forced` block's, else the
    environment's (:func:`requested`), else the host's."""
    if _FORCED:
        return _FORCED[-1][0]
    return requested() or host_level()


def _check_gemm(choice, lvl, source):
    if choice not in ("ours", "blas"):
        raise MiniVGGError(f"{source}={choice}: unknown; use ours (minivgg's kernel of the ISA level) or blas (numpy's)")
    if choice == "ours" and lvl == "blas":
        raise MiniVGGError(f"{source}=ours: the ISA level is blas, which has no kernel of ours; "
                           f"set MINIVGG_ISA to {' or '.join(supported()[:0:-1]) or 'a level this host has (none)'}")
    return choice


def gemm_choice():
    """``"ours"`` (gemm.py's kernel of the level) or ``"blas"`` (numpy's): the innermost
    :func:`forced` block's, else MINIVGG_GEMM, else the level's default (GEMM_AT_LEVEL)."""
    lvl = level()
    if _FORCED and _FORCED[-1][1] is not None:
        return _FORCED[-1][1]
    choice = options.get("gemm")
    if choice:
        return _check_gemm(choice, lvl, options.origin("gemm"))
    return GEMM_AT_LEVEL[lvl]


@contextlib.contextmanager
def forced(name, gemm=None):
    """Inside the block the kernels use level ``name`` (in every thread), and the products
    ``gemm`` ("ours" or "blas"; None: the usual choice at that level): for tests that run
    each supported level in one process. A level the host lacks is a MiniVGGError."""
    _check(name, "isa.forced")
    if gemm is not None:
        _check_gemm(gemm, name, "isa.forced gemm")
    with _LOCK:
        _FORCED.append((name, gemm))
    try:
        yield name
    finally:
        with _LOCK:
            _FORCED.pop()


def describe():
    """One line for reports (scripts/bench.py, ``minivgg info``): the level used and why."""
    host = host_level()
    lvl = level()
    how = "host" if lvl == host and requested() is None and not _FORCED else "forced"
    from numba.core import config

    target = config.CPU_NAME or "host"
    return f"isa {lvl} ({how}; host level {host}, numba target cpu {target}); products: {gemm_choice()}"
