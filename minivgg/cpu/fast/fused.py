"""Element-wise and pooling kernels for VGG's fixed shapes, run over minivgg's thread pool.

Each kernel is a nogil numba loop over a range [p0, p1) of planes (or of flat elements),
and :mod:`minivgg.cpu.fast.threads` runs one range per thread (see there why not ``prange``).

2x2 stride-2 average pooling (VGG's): each input pixel belongs to at most one window, so
forward is one pass of pair sums and backward one pass of copies, contiguous along rows.
Results equal the general k x k loops in im2col.py bit for bit (the same four-term sum in
the same order, in float64 as there, times 0.25, which is exact):

    y[p, i, j] = 0.25 * (x[p, 2i, 2j] + x[p, 2i, 2j+1] + x[p, 2i+1, 2j] + x[p, 2i+1, 2j+1])
    dx[p, 2i+a, 2j+b] = 0.25 * dy[p, i, j]   (a, b in {0, 1}; 0 in a trailing odd row/column)

2x2 stride-2 max pooling likewise: forward keeps the window offset a*2+b of the maximum
as the general loop picks it (the first in row-major order; a NaN wins), backward puts dy
there and zeros elsewhere; bit for bit the general loops' results.

ReLU: y = max(x, 0); backward dx = dy * (y > 0) (or (dy + extra) * (y > 0)), with y or
its uint8 mask (y > 0): exactly im2col.py's relu_forward / relu_backward. Bias: y += b per
row (then ReLU), exactly numpy's y + b[:, None]. tests/test_winograd.py compares every
kernel here with those references.
"""

import numpy as np
from numba import njit

from .threads import parallel_range

_Q = np.float32(0.25)
_0 = np.float32(0.0)
_CHUNK = 1 << 16  # elements per thread below which one thread does it all
_NO_EXTRA = np.empty((0, 0), np.float32)


@njit(nogil=True, cache=True)
def _avg_pool2x2_forward(p0, p1, x, out):
    Ho, Wo = out.shape[1], out.shape[2]
    for p in range(p0, p1):
        for i in range(Ho):
            r0 = x[p, 2 * i]
            r1 = x[p, 2 * i + 1]
            o = out[p, i]
            for j in range(Wo):
                acc = np.float64(r0[2 * j]) + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1]
                o[j] = acc * 0.25


@njit(nogil=True, cache=True)
def _zero_uncovered(plane, Ho, Wo):
    """Zero the trailing odd column and row of a plane that no 2x2 window covers."""
    H, W = plane.shape
    for i in range(2 * Ho):
        for q in range(2 * Wo, W):
            plane[i, q] = 0
    for r in range(2 * Ho, H):
        for q in range(W):
            plane[r, q] = 0


@njit(nogil=True, cache=True)
def _avg_pool2x2_backward(p0, p1, dy, out):
    Ho, Wo = dy.shape[1], dy.shape[2]
    for p in range(p0, p1):
        for i in range(Ho):
            g = dy[p, i]
            r0 = out[p, 2 * i]
            r1 = out[p, 2 * i + 1]
            for j in range(Wo):
                v = g[j] * _Q
                r0[2 * j] = v
                r0[2 * j + 1] = v
                r1[2 * j] = v
                r1[2 * j + 1] = v
        _zero_uncovered(out[p], Ho, Wo)


@njit(nogil=True, cache=True)
def _max_pool2x2_forward(p0, p1, x, out, arg):
    Ho, Wo = out.shape[1], out.shape[2]
    for p in range(p0, p1):
        for i in range(Ho):
            r0 = x[p, 2 * i]
            r1 = x[p, 2 * i + 1]
            o = out[p, i]
            g = arg[p, i]
            for j in range(Wo):
                best = r0[2 * j]
                bi = 0
                v = r0[2 * j + 1]
                if v > best or v != v:
                    best = v
                    bi = 1
                v = r1[2 * j]
                if v > best or v != v:
                    best = v
                    bi = 2
                v = r1[2 * j + 1]
                if v > best or v != v:
                    best = v
                    bi = 3
                o[j] = best
                g[j] = bi


@njit(nogil=True, cache=True)
def _max_pool2x2_backward(p0, p1, dy, arg, out):
    Ho, Wo = dy.shape[1], dy.shape[2]
    for p in range(p0, p1):
        for i in range(Ho):
            g = dy[p, i]
            m = arg[p, i]
            r0 = out[p, 2 * i]
            r1 = out[p, 2 * i + 1]
            for j in range(Wo):
                v = g[j]
                k = m[j]
                r0[2 * j] = v if k == 0 else _0
                r0[2 * j + 1] = v if k == 1 else _0
                r1[2 * j] = v if k == 2 else _0
                r1[2 * j + 1] = v if k == 3 else _0
        _zero_uncovered(out[p], Ho, Wo)


@njit(nogil=True, fastmath=True, cache=True)
def _relu_forward(i0, i1, x, out):
    xs = x[i0:i1]
    o = out[i0:i1]
    for i in range(i1 - i0):
        v = xs[i]
        o[i] = v if v > _0 else _0


@njit(nogil=True, fastmath=True, cache=True)
def _relu_backward(i0, i1, dy, y, out):
    d = dy[i0:i1]
    yy = y[i0:i1]
    o = out[i0:i1]
    for i in range(i1 - i0):
        o[i] = d[i] if yy[i] > _0 else _0


@njit(nogil=True, fastmath=True, cache=True)
def _relu_mask(i0, i1, y, out):
    ys = y[i0:i1]
    o = out[i0:i1]
    for i in range(i1 - i0):
        o[i] = 1 if ys[i] > _0 else 0


@njit(nogil=True, fastmath=True, cache=True)
def _relu_add_backward(i0, i1, dy, extra, y, out):
    d = dy[i0:i1]
    e = extra[i0:i1]
    yy = y[i0:i1]
    o = out[i0:i1]
    for i in range(i1 - i0):
        o[i] = d[i] + e[i] if yy[i] > _0 else _0


@njit(nogil=True, fastmath=True, cache=True)
def _bias_rows(r0, r1, y, b, relu):
    for r in range(r0, r1):
        yr = y[r]
        v = b[r]
        if relu:
            for i in range(yr.shape[0]):
                t = yr[i] + v
                yr[i] = t if t > _0 else _0
        else:
            for i in range(yr.shape[0]):
                yr[i] = yr[i] + v


def bias_forward(y, b, relu=False):
    """y[c, :] += b[c] in place (then max(., 0) when relu); y (C, P) float32 C-contiguous."""
    parallel_range(_bias_rows, y.shape[0], y, b, relu, min_per_thread=max(1, _CHUNK // max(1, y.shape[1])))


@njit(nogil=True, fastmath=True, cache=True)
def _relu_band(c0, c1, dy, extra, y, p0, p1, out):
    """out[c, :] = (dy + extra)[c, p0:p1] * (y[c, p0:p1] > 0) for channels c0..c1-1 of
    (C, P) arrays (extra empty: dy alone)."""
    added = extra.shape[0] > 0
    for c in range(c0, c1):
        d = dy[c, p0:p1]
        yy = y[c, p0:p1]
        o = out[c]
        if added:
            e = extra[c, p0:p1]
            for i in range(p1 - p0):
                o[i] = d[i] + e[i] if yy[i] > _0 else _0
        else:
            for i in range(p1 - p0):
                o[i] = d[i] if yy[i] > _0 else _0


def relu_backward_band(dy, y, p0, p1, out, extra=None):
    """out (C, p1 - p0) = ReLU's backward on columns p0..p1-1 of (C, P) float32 arrays
    dy, y (and + extra): one band of an image, for a banded im2col backward."""
    e = _NO_EXTRA if extra is None else extra
    parallel_range(_relu_band, dy.shape[0], dy, e, y, p0, p1, out, min_per_thread=max(1, _CHUNK // max(1, p1 - p0)))


def avg_pool2x2_forward(x, out):
    """x (P, H, W) float32 -> out (P, H // 2, W // 2)."""
    parallel_range(_avg_pool2x2_forward, x.shape[0], x, out, min_per_thread=max(1, _CHUNK // x[0].size))


def avg_pool2x2_backward(dy, out):
    """dy (P, Ho, Wo) float32 -> out (P, H, W) with H >= 2 Ho, W >= 2 Wo."""
    parallel_range(_avg_pool2x2_backward, dy.shape[0], dy, out, min_per_thread=max(1, _CHUNK // out[0].size))


def max_pool2x2_forward(x, out, arg):
    """x (P, H, W) float32 -> out (P, H // 2, W // 2) and arg (same shape, uint8: a*2+b)."""
    parallel_range(_max_pool2x2_forward, x.shape[0], x, out, arg, min_per_thread=max(1, _CHUNK // x[0].size))


def max_pool2x2_backward(dy, arg, out):
    """dy (P, Ho, Wo) float32 and forward's arg -> out (P, H, W) with H >= 2 Ho, W >= 2 Wo."""
    parallel_range(_max_pool2x2_backward, dy.shape[0], dy, arg, out, min_per_thread=max(1, _CHUNK // out[0].size))


def relu_forward(x, out):
    """out = max(x, 0); float32, any shape, C-contiguous (out may be x)."""
    parallel_range(_relu_forward, x.size, x.reshape(-1), out.reshape(-1), min_per_thread=_CHUNK)


def relu_mask(y):
    """(y > 0) as uint8 0 / 1, y float32 C-contiguous: what ReLU's backward needs of its
    output, in a quarter of the memory."""
    out = np.empty(y.shape, np.uint8)
    parallel_range(_relu_mask, y.size, y.reshape(-1), out.reshape(-1), min_per_thread=_CHUNK)
    return out


def relu_backward(dy, y, out, extra=None):
    """out = dy * (y > 0), or (dy + extra) * (y > 0); float32 (y float32 or a uint8 mask),
    same shapes, C-contiguous."""
    if extra is None:
        parallel_range(_relu_backward, dy.size, dy.reshape(-1), y.reshape(-1), out.reshape(-1), min_per_thread=_CHUNK)
    else:
        parallel_range(_relu_add_backward, dy.size, dy.reshape(-1), extra.reshape(-1), y.reshape(-1), out.reshape(-1),
                       min_per_thread=_CHUNK)
