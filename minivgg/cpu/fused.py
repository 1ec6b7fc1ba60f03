"""Specialised CPU kernels for VGG's fixed shapes: 2x2 stride-2 average pooling.

The general pooling loops (im2col.py) handle any window and stride by gathering over the
windows that contain each pixel; for VGG's 2x2/2 windows each input pixel belongs to at
most one window, so forward is one pass of pair sums and backward one pass of copies,
both contiguous along the rows (what LLVM vectorises). Same results as the general
loops, bit for bit: the same four-term sum in the same order (in float64, as there),
times 0.25 (exact).

    y[p, i, j] = 0.25 * (x[p, 2i, 2j] + x[p, 2i, 2j+1] + x[p, 2i+1, 2j] + x[p, 2i+1, 2j+1])
    dx[p, 2i+a, 2j+b] = 0.25 * dy[p, i, j]   (a, b in {0, 1}; 0 in a trailing odd row/column)
"""

import numpy as np
from numba import njit, prange

_Q = np.float32(0.25)


@njit(parallel=True, fastmath=False, cache=True)
def avg_pool2x2_forward(x, out):
    """x (P, H, W) float32 -> out (P, H // 2, W // 2)."""
    P, Ho, Wo = out.shape
    for p in prange(P):
        for i in range(Ho):
            r0 = x[p, 2 * i]
            r1 = x[p, 2 * i + 1]
            o = out[p, i]
            for j in range(Wo):
                acc = np.float64(r0[2 * j]) + r0[2 * j + 1] + r1[2 * j] + r1[2 * j + 1]
                o[j] = acc * 0.25


@njit(parallel=True, fastmath=False, cache=True)
def avg_pool2x2_backward(dy, out):
    """dy (P, Ho, Wo) float32 -> out (P, H, W) with H >= 2 Ho, W >= 2 Wo."""
    P, H, W = out.shape
    Ho, Wo = dy.shape[1], dy.shape[2]
    for p in prange(P):
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
            for q in range(2 * Wo, W):
                r0[q] = 0
                r1[q] = 0
        for r in range(2 * Ho, H):
            for q in range(W):
                out[p, r, q] = 0
