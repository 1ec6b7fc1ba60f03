"""How the CPU kernels use the cores: the calling thread and a small pool of Python threads
(one fewer than the cores) running nogil numba kernels and single-threaded BLAS calls, split
into as many contiguous pieces as threads (:func:`run`: each thread takes the next piece).

Why not numba's ``prange`` or OpenBLAS's own threads: both synchronise their workers by
spinning, and on a small machine shared with other work a spinning barrier waits for its
slowest, descheduled thread (docs/benchmarks.md has what that cost). A pool thread that finds its piece done simply blocks. And OpenBLAS's workers keep
spinning for a while after a multi-threaded call, so a 2-thread GEMM just before a
kernel of ours slowed that kernel down: ``Net.forward``/``backward`` therefore run whole
inside one :func:`one_blas_thread` block, and every product on the way (im2col's, the
style losses') goes through :func:`matmul` here. Nothing here changes a global setting for good: BLAS is limited to one
thread only inside :func:`one_blas_thread` blocks, restored after. OpenBLAS's thread
count is one setting for the whole process, and threadpoolctl lets only one Python thread
change it (the first to do so, while it lives); blocks opened in other threads change
nothing, so a net driven from another thread runs correctly but with BLAS's own threads.

``MINIVGG_NUM_THREADS`` sets the pool size (default: the cores this process may use; read
through minivgg/options.py); the pool itself belongs to the process's runtime
(minivgg/runtime.py).

Reference: :func:`matmul` equals ``a @ b`` (numpy) and :func:`gram` ``F @ F^T`` to float32
rounding, whichever kernel runs (tests/test_gemm.py).
"""

import contextlib
import itertools
import os

import numpy as np

from ... import options, runtime
from . import gemm as _gemm
from .gemm import matmul as _gemm_matmul  # our kernel of the ISA level where it applies, else BLAS

_BLAS = None


def num_threads():
    """Threads the CPU kernels use: MINIVGG_NUM_THREADS, else the usable cores."""
    n = options.get("num_threads")
    if n:
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def pool():
    """The process-wide worker pool: one thread fewer than ``num_threads()``, the calling
    thread being the other (:func:`run`). Created on first use, and anew in a forked child,
    which inherits the pool object but not its threads. Owned by the process's runtime
    (``minivgg/runtime.py``), which reports it."""
    return runtime.RUNTIME.pool(num_threads() - 1)


def one_blas_thread():
    """A context in which numpy's BLAS runs single-threaded. The controller, which scans the
    loaded libraries, is built once (threadpool_limits() rescans the libraries on every call)."""
    global _BLAS
    if _BLAS is None:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS = ThreadpoolController()
        except ImportError:  # optional: without it BLAS keeps its threads (slower, correct)
            _BLAS = False
    if _BLAS is False:
        return contextlib.nullcontext()
    return _BLAS.limit(limits=1, user_api="blas")


def split(n, parts):
    """Up to ``parts`` contiguous (start, stop) ranges covering range(n)."""
    bounds = [n * k // parts for k in range(parts + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(parts) if bounds[k + 1] > bounds[k]]


def wait(futures):
    for f in futures:
        f.result()


def run(calls, threads=None):
    """Every ``(fn, *args)`` of ``calls``, on the calling thread and the pool's: each takes
    the next call nobody has taken until none is left, so the caller works instead of
    waiting, and uneven calls even out. Returns when all are done; raises the first error.

    The calling thread as one of the workers: a stage then starts at once, and only the
    other worker needs waking, and waking an idle pool thread is slow next to a stage
    (an iteration has tens of stages; docs/benchmarks.md)."""
    n = len(calls)
    workers = min(n, threads or num_threads()) - 1
    if workers <= 0:
        for fn, *args in calls:
            fn(*args)
        return
    taken = itertools.count()  # next() is atomic under the GIL

    def take():
        for i in taken:
            if i >= n:
                return
            fn, *args = calls[i]
            fn(*args)

    futures = [pool().submit(take) for _ in range(workers)]
    try:
        take()
    finally:
        wait(futures)


def parallel_range(fn, n, *args, threads=None, min_per_thread=1):
    """fn(start, stop, *args) over contiguous pieces of range(n), one per thread."""
    t = min(threads or num_threads(), max(1, n // max(1, min_per_thread)))
    run([(fn, a, b, *args) for a, b in split(n, t)], threads=t)


def _matmul_rows(r0, r1, a, b, out, accumulate):
    for i in range(out.shape[0]):
        _gemm_matmul(a[i, r0:r1], b[i], out[i, r0:r1], accumulate)


def _matmul_cols(c0, c1, a, b, out, accumulate):
    for i in range(out.shape[0]):
        _gemm_matmul(a[i], b[i, :, c0:c1], out[i, :, c0:c1], accumulate)


# Few rows and many columns (im2col's first layer: 64 x 27 @ 27 x H*W; the style losses'
# C x C @ C x H*W): split the columns, so each thread streams half of the large b instead
# of all of it, which is bound by memory (docs/benchmarks.md).
SPLIT_COLUMNS_BELOW_ROWS = 128


def matmul(a, b, out=None, accumulate=False):
    """a @ b for float arrays (M, K) @ (K, N) or stacked (B, M, K) @ (B, K, N), with the
    output rows split over the pool and single-threaded BLAS (see the module docstring for
    why). ``out``: a C-contiguous array of the result's shape and dtype to write into (to
    add into, out += a @ b, when accumulate)."""
    if accumulate and out is None:
        raise ValueError("matmul: accumulate needs out")
    squeeze = a.ndim == 2 and b.ndim == 2
    a3 = a[None] if a.ndim == 2 else a
    b3 = b[None] if b.ndim == 2 else b
    batch = max(a3.shape[0], b3.shape[0])
    a3 = np.broadcast_to(a3, (batch,) + a3.shape[1:])
    b3 = np.broadcast_to(b3, (batch,) + b3.shape[1:])
    shape = (batch, a3.shape[1], b3.shape[2])
    if out is None:
        res = np.empty(shape, np.result_type(a3.dtype, b3.dtype))
    else:
        if not out.flags.c_contiguous or out.size != shape[0] * shape[1] * shape[2]:
            raise ValueError(f"matmul: out must be C-contiguous with {shape[1]}x{shape[2]} elements per product")
        res = out.reshape(shape)
    # the limit is set once, here: OpenBLAS's thread count is one global setting
    with one_blas_thread():
        if a3.shape[1] < SPLIT_COLUMNS_BELOW_ROWS and b3.shape[2] >= 8 * a3.shape[1]:
            parallel_range(_matmul_cols, b3.shape[2], a3, b3, res, accumulate, min_per_thread=256)
        else:
            parallel_range(_matmul_rows, a3.shape[1], a3, b3, res, accumulate, min_per_thread=16)
    if out is not None:
        return out
    return res[0] if squeeze else res


def _gram_share(t, nthreads, lanes, F, G):
    for i in range(F.shape[0]):
        _gemm._gram_blocks(lanes, F[i], G[i], t, nthreads)


def gram(F):
    """G[i] = F[i] F[i]^T for (B, C, K), exactly symmetric on every level: the upper
    triangle is copied into the lower. In gemm.py's Gram kernel of the level, which makes
    only the blocks on and above the diagonal (the row blocks dealt to the threads in turn
    so each gets a like share), or with numpy's BLAS (the products' choice is BLAS, or the
    kernel does not take the arrays, float64 among them): the whole product, split by rows
    over the threads (:func:`matmul`), since row blocks of the triangle alone, 64 rows or
    fewer, measured slower in OpenBLAS (docs/gemm.md)."""
    G = np.empty((F.shape[0], F.shape[1], F.shape[1]), F.dtype)
    k = _gemm.kernel()
    with one_blas_thread():
        if k is not None and _gemm.unit_rows(F):
            t = max(1, min(num_threads(), -(-F.shape[1] // k.mrg)))
            run([(_gram_share, s, t, k.lanes, F, G) for s in range(t)], threads=t)
        else:  # the whole product (row blocks of the triangle measured slower in BLAS), then mirrored
            matmul(F, F.transpose(0, 2, 1), out=G)
    for i in range(G.shape[0]):
        _gemm._mirror(G[i])
    return G
