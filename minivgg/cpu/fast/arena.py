"""The forward pass's output arrays, reused from one pass to the next.

An image optimization runs the same forward hundreds of times on arrays of the same
shapes. Each pass allocating its activations afresh costs page faults and the kernel's
zeroing of every new page, and the heap fragments. The net's arrays of a pass are dropped
when the next pass starts (the layers' caches are cleared), so they can be handed out
again instead.

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
the caller's, sizes that change through the pass) are left to malloc, which the process's
runtime (``minivgg/runtime.py``) tunes once, when the first CPU net is built
(:func:`keep_freed_memory`), so that freed blocks serve the next iteration without page
faults. ``MINIVGG_MALLOC=default`` leaves malloc alone.

Reference: ``np.empty``. :func:`empty` returns an array of the shape and dtype asked for
that nobody else holds, which is all ``np.empty`` promises (tests/test_vgg.py).
"""

import contextlib
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


def keep_freed_memory():
    """The process's malloc tuning (``minivgg.runtime.apply``: once per process, on glibc,
    unless MINIVGG_MALLOC=default); returns whether malloc is (now) tuned."""
    from ... import runtime

    return runtime.apply()
