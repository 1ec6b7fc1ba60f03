"""What minivgg changes for the whole process, in one place: the malloc tuning and the
CPU kernels' thread pool. :data:`RUNTIME` owns both, records what it did, and
``python -m minivgg info`` reports it.

- **malloc** (:meth:`Runtime.apply`, done when the first CPU net is built, through
  ``cpu/fast/arena.keep_freed_memory``): an iteration's arrays that the arena does not
  reuse (each layer's backward output, the losses' gradients) are malloc's. glibc maps every
  block above its mmap threshold (128 KiB, raised dynamically up to 32 MiB) afresh and
  unmaps it on free, so each iteration would page-fault and zero those blocks again. With
  the threshold at its 32 MiB ceiling and no trimming, freed blocks stay in the heap for
  the next iteration: no page faults, the same peak (docs/benchmarks.md has the
  measurements). Applied once; with ``MINIVGG_MALLOC=default`` (options.py), off glibc or
  off Linux, nothing is changed. Not undone: it only changes where freed memory waits.
- **the thread pool** (:meth:`Runtime.pool`, for cpu/fast/threads.py): one thread fewer
  than ``threads.num_threads()``, made on first use, and anew in a forked child (which
  inherits the pool object but not its threads).
"""

import ctypes
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

from . import options

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's ceiling on 64-bit
TRIM_THRESHOLD_NEVER = 2**31 - 1


class Runtime:
    """The process-wide state minivgg sets up, and the record of what it did."""

    def __init__(self):
        self._lock = threading.Lock()
        self.malloc_tuned = False
        self.malloc_note = "not applied yet (done when the first CPU net is built)"
        self._pool = None
        self._pool_pid = None
        self._pool_size = None

    def apply(self):
        """Tune malloc for the process unless options or the platform say not (module
        docstring). Idempotent: once tuned, later calls change nothing. Returns whether
        malloc is (now) tuned."""
        with self._lock:
            if self.malloc_tuned:
                return True
            if options.get("malloc") == "default":
                self.malloc_note = f"left alone ({options.origin('malloc')}=default)"
                return False
            if not sys.platform.startswith("linux"):
                self.malloc_note = f"left alone (not Linux: {sys.platform})"
                return False
            try:
                libc = ctypes.CDLL("libc.so.6")
                mallopt = libc.mallopt
            except (OSError, AttributeError):  # not glibc (musl has no mallopt)
                self.malloc_note = "left alone (no glibc mallopt)"
                return False
            mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
            self.malloc_tuned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)) and bool(
                mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_NEVER))
            self.malloc_note = (f"tuned: mmap threshold {MMAP_THRESHOLD_MAX >> 20} MiB, no trimming" if self.malloc_tuned
                                else "mallopt refused the settings; malloc as it was")
            return self.malloc_tuned

    def pool(self, workers):
        """The worker pool of ``workers`` threads (made on first use, or in a forked child;
        its size is fixed then)."""
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="minivgg")
                self._pool_pid = os.getpid()
                self._pool_size = max(1, workers)
            return self._pool

    def report(self):
        """What the process runs with now: {malloc: {tuned, note}, pool: {...}}."""
        alive = self._pool is not None and self._pool_pid == os.getpid()
        return {
            "malloc": {"tuned": self.malloc_tuned, "note": self.malloc_note},
            "pool": {"started": alive, "workers": self._pool_size if alive else None,
                     "note": (f"{self._pool_size} worker threads + the calling thread" if alive
                              else "not started (made on the first parallel kernel)")},
        }


RUNTIME = Runtime()


def apply():
    """:meth:`Runtime.apply` of the process's runtime."""
    return RUNTIME.apply()
