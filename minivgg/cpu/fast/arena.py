"""The forward pass's output arrays, reused from one pass to the next.

An image optimization runs the same forward hundreds of times on arrays of the same
shapes. Each pass allocating its activations afresh costs page faults and the kernel's
zeroing of every new page (tens of ms an iteration at 256x256, more at 512), and the
heap fragments. The net's arrays of a pass are dropped when the next pass starts (the
layers' caches are cleared), so they can be handed out again instead.

Between passes the arena holds its arrays only weakly: what the layers' caches still
keep when the next pass starts is taken back; what was let go earlier (``backward(
keep=False)`` drops each cache as soon as it is spent, to lower the peak) is gone, and
the arena adds no memory. An array is handed out again only when nothing else refers to
it: ``sys.getrefcount`` sees just the arena's own reference. Features a caller still
holds (or a view of them) are never overwritten; the arena forgets them and allocates
anew.

Only the CPU backend's forward allocates here, and only while a net's pass is active
(:meth:`Arena.active`); everywhere else :func:`empty` is ``np.empty``.

The rest of an iteration's arrays (each layer's backward output, the losses' gradients:
the caller's, sizes that change through the pass) are left to malloc, which :func:`
keep_freed_memory` tunes once, when the first CPU net is built: glibc's malloc maps every
block above 128 KiB-32 MiB afresh and unmaps it on free, so each iteration page-faulted
and zeroed ~25 MB at 256x256 (~5800 faults, 25-30 ms of system time, ~12% of the
iteration). With the mmap threshold at its 32 MiB maximum and no trimming, freed blocks
stay in the heap for the next iteration: no faults, the same peak (measured: 606 -> 620
MB at 256, 1187 -> 1189 MB at 512; docs/winograd.md). ``MINIVGG_MALLOC=default`` leaves
malloc alone.
"""

import contextlib
import ctypes
import os
import sys
import threading
import weakref

import numpy as np

_LOCAL = threading.local()


class Arena:
    """Arrays of the last pass, by (shape, dtype), for the next pass to take back."""

    def __init__(self):
        self._last = {}  # key -> arrays of the last pass still alive at this pass's start
        self._now = {}  # key -> weak references to this pass's arrays

    def empty(self, shape, dtype):
        key = (tuple(int(s) for s in shape), np.dtype(dtype))
        free = self._last.get(key)
        a = None
        while free:
            cand = free.pop()
            if sys.getrefcount(cand) == 2:  # this name and the call's argument: nobody else
                a = cand
                break
        if a is None:
            a = np.empty(key[0], key[1])
        self._now.setdefault(key, []).append(weakref.ref(a))
        return a

    @contextlib.contextmanager
    def active(self):
        """A pass: what the previous pass allocated becomes available, and allocations
        in this thread come from here until the block ends."""
        self._last = {k: [a for a in (r() for r in refs) if a is not None] for k, refs in self._now.items()}
        self._now = {}
        prev = getattr(_LOCAL, "arena", None)
        _LOCAL.arena = self
        try:
            yield self
        finally:
            _LOCAL.arena = prev
            self._last = {}  # not taken back this pass: the caller or nobody holds them


def empty(shape, dtype):
    """``np.empty(shape, dtype)``, from the active arena when a pass is running."""
    arena = getattr(_LOCAL, "arena", None)
    if arena is None:
        return np.empty(shape, dtype)
    return arena.empty(shape, dtype)


_TUNED = False
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit


def keep_freed_memory():
    """Once per process, on glibc: blocks up to 32 MiB from the heap, and the heap not
    trimmed, so that arrays freed by one iteration serve the next without page faults.
    Returns whether malloc is (now) tuned. Elsewhere, or with MINIVGG_MALLOC=default,
    does nothing."""
    global _TUNED
    if _TUNED or os.environ.get("MINIVGG_MALLOC", "").lower() == "default" or not sys.platform.startswith("linux"):
        return _TUNED
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    _TUNED = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
    return _TUNED
