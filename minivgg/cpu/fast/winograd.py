"""Winograd F(4x4, 3x3) convolution for 3x3 stride-1 pad-1 layers (NCHW, float32).

A 3x3 correlation producing a 4x4 output tile from a 6x6 input tile d is

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A                        (Lavin & Gray 2016)

with (.) the element-wise product and, for the interpolation points 0, 1, -1, 1/2, -2 and
infinity (the matrices below are BT, G and AT of this module; tests/test_winograd.py checks
that they are the same and that they compute the correlation):

    B^T = [ 1  -3/2  -2   3/2  1  0 ]     G = [    1      0     0  ]     A^T = [ 1  1   1   1    1  0 ]
          [ 0  -1   1/2   5/2  1  0 ]         [  1/3    1/3   1/3  ]           [ 0  1  -1  1/2  -2  0 ]
          [ 0   1  -5/2   1/2  1  0 ]         [ -1/3    1/3  -1/3  ]           [ 0  1   1  1/4   4  0 ]
          [ 0  -2   -1    2    1  0 ]         [-16/15 -8/15 -4/15  ]           [ 0  1  -1  1/8  -8  1 ]
          [ 0  1/2  -1  -1/2   1  0 ]         [ 1/15  -2/15  4/15  ]
          [ 0   1  -3/2  -2   3/2 1 ]         [    0      0     1  ]

Row j of G is (1, p_j, p_j^2) times a scale for point p_j (the last row: infinity's leading
coefficient); column j of A^T is (1, p_j, p_j^2, p_j^3); B^T interpolates back. Lavin's
usual points are 0, +-1, +-2: these have the same cost and a smaller float32 error (Barabasz
et al. 2020; docs/winograd.md).

Summed over input channels, the 36 element-wise products become 36 independent GEMMs
(one per position xi of the 6x6 transformed tile):

    M[xi] (Cout x T) = U[xi] (Cout x Cin) @ V[xi] (Cin x T),
    U[xi][o, c] = (G W[o, c] G^T)[xi],   V[xi][c, t] = (B^T d_{c,t} B)[xi],

so a layer does 36 * T * Cin * Cout multiply-adds instead of 9 * 16 * T * Cin * Cout: a
quarter. The input and output transforms are numba kernels; the GEMMs go to our own
register-blocked kernels (`gemm.py`: AVX-512 or AVX2, by the ISA level of `isa.py`) or numpy's BLAS.

Backward to the input. For y = conv(x, W) with 3x3 kernels, stride 1, pad 1,
dx = conv(dy, W'), W'[c, o] = W[o, c] flipped in both spatial axes (a full correlation with
the rotated kernel, cropped back by the same one-pixel padding). So the same forward path
serves the backward, with W' transformed once (docs/winograd.md has the derivation and the
measured errors).

Reference: the result equals the direct convolution of ``minivgg/layers/conv.py`` (and the
im2col path of ``cpu/ops.py``) to Winograd's float32 rounding; near-zero pre-activations and
max-pool near-ties are recomputed exactly (below). tests/test_winograd.py compares every
entry point with a plain direct convolution, on every ISA level the host has.

Work is split over a small pool of threads by bands of tile rows; each thread runs the whole
transform -> GEMM -> transform pipeline on its band with single-threaded BLAS, so the data of
a band stays in that core's cache and BLAS and numba never compete for cores.
"""

import threading

import numpy as np
from numba import njit
from numpy.lib.stride_tricks import as_strided

from ...tolerances import POOL_TIE_BELOW
from . import arena, gemm

# ---------------------------------------------------------------- the transform matrices
# Interpolation points 0, 1, -1, 1/2, -2 and infinity: about 3x smaller float32 error than
# the usual 0, +-1, +-2 (Barabasz et al. 2020; measured in docs/winograd.md).
BT = np.array(
    [
        [1, -3 / 2, -2, 3 / 2, 1, 0],
        [0, -1, 1 / 2, 5 / 2, 1, 0],
        [0, 1, -5 / 2, 1 / 2, 1, 0],
        [0, -2, -1, 2, 1, 0],
        [0, 1 / 2, -1, -1 / 2, 1, 0],
        [0, 1, -3 / 2, -2, 3 / 2, 1],
    ],
    dtype=np.float64,
)
G = np.array(
    [
        [1, 0, 0],
        [1 / 3, 1 / 3, 1 / 3],
        [-1 / 3, 1 / 3, -1 / 3],
        [-16 / 15, -8 / 15, -4 / 15],
        [1 / 15, -2 / 15, 4 / 15],
        [0, 0, 1],
    ],
    dtype=np.float64,
)
AT = np.array(
    [
        [1, 1, 1, 1, 1, 0],
        [0, 1, -1, 1 / 2, -2, 0],
        [0, 1, 1, 1 / 4, 4, 0],
        [0, 1, -1, 1 / 8, -8, 1],
    ],
    dtype=np.float64,
)


# Backward to the input. dx is the correlation of dy with the kernels rotated by 180
# degrees, channels transposed. Rotating g reverses its coefficients, and the reversed
# polynomial evaluated at p is p^2 g(1/p): so the Winograd algorithm built on the inverse
# points (inf, 1, -1, 2, -1/2, 0) has, row for row, the forward G up to a permutation and a
# scale, G' J = D P G. Folding D and P into its B^T and A^T (rows of B^T, columns of A^T)
# gives matrices for which
#     dx_tile = AT_BWD [ U^T (.) (BT_BWD dy_tile BT_BWD^T) ] AT_BWD^T
# with the *same* transformed weights U as the forward pass, transposed over channels.
# No second copy of the weights; docs/winograd.md has the derivation.
BT_BWD = np.array(
    [
        [0, 1, 3 / 2, -2, -3 / 2, 1],
        [0, 1, 5 / 2, 1 / 2, -1, 0],
        [0, -1, -1 / 2, 5 / 2, -1, 0],
        [0, 1 / 8, 1 / 4, -1 / 8, -1 / 4, 0],
        [0, -8, 4, 8, -4, 0],
        [1, 3 / 2, -2, -3 / 2, 1, 0],
    ],
    dtype=np.float64,
)
AT_BWD = np.array(
    [
        [0, 1, 1, 1, 1, 1],
        [0, 1, -1, 2, -1 / 2, 0],
        [0, 1, 1, 4, 1 / 4, 0],
        [1, 1, -1, 8, -1 / 8, 0],
    ],
    dtype=np.float64,
)

ALGORITHMS = {"fwd": (BT, AT), "bwd": (BT_BWD, AT_BWD)}


# G's first and last rows are unit vectors, so U[xi] at the four corners of the 6x6 tile
# (xi = 0, 5, 30, 35) is a corner tap of W ((0, 0), (0, 2), (2, 0), (2, 2): rows 0, 2, 6, 8 of
# gather_weights(W)), the same float32 numbers. A layer that holds its taps as rows keeps
# only U's other 32 positions (transform_weights(W, corners=False)); the products read the
# corners from the taps (U's memory -1/9).
CORNERS = (0, 5, 30, 35)
CORNER_TAPS = (0, 2, 6, 8)
INNER = tuple(xi for xi in range(36) if xi not in CORNERS)


def transform_weights(W, block=32, corners=True):
    """U (36, Cout, Cin) float32 with U[xi] = (G W[o, c] G^T)[xi], computed in float64;
    without the corners (corners=False) U[INNER] (32, Cout, Cin).

    A few output channels at a time, so the float64 temporaries stay small (a whole
    512x512 layer at once would briefly need ~130 MB).
    """
    W = np.asarray(W)
    cout, cin = W.shape[0], W.shape[1]
    keep = list(range(36)) if corners else list(INNER)
    U = np.empty((len(keep), cout, cin), np.float32)
    for o0 in range(0, cout, block):
        Wb = W[o0 : o0 + block].astype(np.float64)
        Ub = np.einsum("ka,ocab,lb->kloc", G, Wb, G, optimize=True).reshape(36, -1, cin)
        U[:, o0 : o0 + block] = Ub[keep]
    return U


def gather_weights(W):
    """w9 (9, Cout, Cin) float32 with w9[3a + b, o, c] = W[o, c, a, b]: the weights laid out
    for products that make U from them as they go (a quarter of U's memory)."""
    W = np.asarray(W, dtype=np.float32)
    return np.ascontiguousarray(W.reshape(W.shape[0], W.shape[1], 9).transpose(2, 0, 1))


def backward_weights(W):
    """The kernels of the backward-to-input convolution: W'[c, o] = W[o, c] rotated 180 deg."""
    return np.ascontiguousarray(np.asarray(W).transpose(1, 0, 2, 3)[:, :, ::-1, ::-1])


# ---------------------------------------------------------------- numba kernels
# Generated from ALGORITHMS by winograd_codegen.py (constants spelled out so LLVM vectorises).
from .winograd_kernels import (  # noqa: E402
    _weight_rows,
    _input_transform_bwd,
    _input_transform_fwd,
    _output_transform_bwd,
    _output_transform_fwd,
)

_KERNELS = {
    False: (_input_transform_fwd, _output_transform_fwd),
    True: (_input_transform_bwd, _output_transform_bwd),
}

# ReLU's sign near zero. Winograd's float32 error (~3e-6 of the largest output, 10x
# im2col's) can give a pre-activation within that distance of 0 the wrong sign; the unit
# then passes (or blocks) its whole share of the gradient, which on a 256x256 image moved
# the input gradient by 1e-3. So the forward lists the outputs smaller than REFINE_BELOW
# times the RMS of their channel's 4-row strip (about 1 in 1000; the largest output is a few
# RMS, and the error ~3e-6 of it) and recomputes them directly in float64: signs as exact
# as im2col's, for a small cost (docs/benchmarks.md).
REFINE_BELOW = np.float32(5e-4)
CANDIDATES = 1 << 14  # per band; more are left at Winograd precision (never seen)


@njit(nogil=True, cache=True)
def _refine(x, W, b, relu, cand, n, y):
    """y[o, i, j] = b[o] + sum_{c,a,e} W[o,c,a,e] x[c, i+a-1, j+e-1] in float64, for the
    n listed (o, i, j); then max(., 0) when relu.

    Nine independent float64 sums, one per tap (a, e), over the channels, so that the
    loads of successive channels (a plane apart: a cache miss each) overlap instead of
    waiting on one long chain of additions; out-of-range taps (the zero padding) are
    read clamped and weighted 0 at the end.
    """
    C, H, Wd = x.shape
    for k in range(n):
        o = cand[k, 0]
        i = cand[k, 1]
        j = cand[k, 2]
        r0 = max(i - 1, 0)
        r2 = min(i + 1, H - 1)
        q0 = max(j - 1, 0)
        q2 = min(j + 1, Wd - 1)
        s00 = s01 = s02 = s10 = s11 = s12 = s20 = s21 = s22 = np.float64(0.0)
        for c in range(C):
            xc = x[c]
            wc = W[o, c]
            s00 += np.float64(wc[0, 0]) * np.float64(xc[r0, q0])
            s01 += np.float64(wc[0, 1]) * np.float64(xc[r0, j])
            s02 += np.float64(wc[0, 2]) * np.float64(xc[r0, q2])
            s10 += np.float64(wc[1, 0]) * np.float64(xc[i, q0])
            s11 += np.float64(wc[1, 1]) * np.float64(xc[i, j])
            s12 += np.float64(wc[1, 2]) * np.float64(xc[i, q2])
            s20 += np.float64(wc[2, 0]) * np.float64(xc[r2, q0])
            s21 += np.float64(wc[2, 1]) * np.float64(xc[r2, j])
            s22 += np.float64(wc[2, 2]) * np.float64(xc[r2, q2])
        top = i >= 1
        bottom = i + 1 < H
        left = j >= 1
        right = j + 1 < Wd
        acc = np.float64(b[o]) + s11
        if left:
            acc += s10
        if right:
            acc += s12
        if top:
            acc += s01
            if left:
                acc += s00
            if right:
                acc += s02
        if bottom:
            acc += s21
            if left:
                acc += s20
            if right:
                acc += s22
        v = np.float32(acc)
        if relu and v < 0:
            v = np.float32(0.0)
        y[o, i, j] = v


_NO_CAND = np.empty((0, 3), np.int32)


# Max-pooling's choice between near-equal values. Like a sign near zero, an argmax
# between two outputs closer than the float32 error picks the unit that gets the whole
# gradient at random; one such flip in pool1 moved a 224x224 input gradient by 1e-2. So
# before a max pool the windows whose largest values lie within POOL_TIE_BELOW of the
# layer's largest output are recomputed directly in float64 (a few dozen per layer).
# The tolerance is shared with the GPU path (minivgg/tolerances.py).
TIE_CANDIDATES = 1 << 12  # per thread and image; more are left as they are (never seen)


@njit(nogil=True, cache=True)
def _tie_candidates(y, tol, o0, o1, cand):
    """(o, i, j) of every value within tol of its 2x2 window's maximum, in the windows
    (floor rounding) of channels o0..o1-1 with a positive maximum and two or more such
    values. Returns how many were found (at most len(cand) are written)."""
    H, Wd = y.shape[1], y.shape[2]
    n = 0
    for o in range(o0, o1):
        for i in range(0, H - 1, 2):
            for j in range(0, Wd - 1, 2):
                m = max(max(y[o, i, j], y[o, i, j + 1]), max(y[o, i + 1, j], y[o, i + 1, j + 1]))
                if m <= 0:
                    continue
                close = 0
                for a in range(2):
                    for e in range(2):
                        if m - y[o, i + a, j + e] <= tol:
                            close += 1
                if close < 2:
                    continue
                for a in range(2):
                    for e in range(2):
                        if m - y[o, i + a, j + e] <= tol:
                            if n < cand.shape[0]:
                                cand[n, 0] = o
                                cand[n, 1] = i + a
                                cand[n, 2] = j + e
                            n += 1
    return n


def _refine_ties(x, W, b, y, tol, o0, o1):
    cand = np.empty((TIE_CANDIDATES, 3), np.int32)
    n = _tie_candidates(y, tol, o0, o1, cand)
    if n:
        _refine(x, W, b, True, cand, min(n, TIE_CANDIDATES), y)


def refine_pool_ties(x, W, b, y, threads=None):
    """Before a 2x2 max pool: recompute exactly (float64, then ReLU) the outputs of
    y = relu(conv3x3(x, W, b)) (stride 1, pad 1) that tie for their window's maximum to
    within POOL_TIE_BELOW of the layer's largest output, in place. x (N, Cin, H, W),
    y (N, Cout, H, W) float32."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    W = W if W.dtype == np.float32 else W.astype(np.float32)  # any strides
    b = np.zeros(W.shape[0], np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32)
    nthreads = threads or num_threads()
    for i in range(y.shape[0]):
        tol = np.float32(POOL_TIE_BELOW * float(y[i].max()))
        _run([(_refine_ties, x[i], W, b, y[i], tol, o0, o1) for o0, o1 in _split(y.shape[1], nthreads)], nthreads)


def _output(M, b, relu, o0, o1, ti0, ti1, tw, y, backward, x, W):
    """Output transform of channels o0..o1-1 in this thread, then the near-zero fix-up."""
    fout = _KERNELS[backward][1]
    if W is None or backward:
        fout(M, b, relu, o0, o1, ti0, ti1, tw, y, np.float32(0), _NO_CAND)
        return
    ws = _workspace()
    if ws.cand is None:
        ws.cand = np.empty((CANDIDATES, 3), np.int32)
    n = fout(M, b, relu, o0, o1, ti0, ti1, tw, y, REFINE_BELOW, ws.cand)
    if n:
        _refine(x, W, b, relu, ws.cand, min(n, CANDIDATES), y)


# ---------------------------------------------------------------- threads
from .threads import num_threads, one_blas_thread, run as _run, split as _split  # noqa: E402,F401


class _Workspace:
    """Per-thread V and M buffers (and a block of transformed weights), grown on demand and
    reused across calls."""

    def __init__(self):
        self.buf = np.empty(0, np.float32)
        self.ubuf = np.empty(0, np.float32)
        self.cand = None

    def ublock(self, n):
        if self.ubuf.size < n:
            self.ubuf = np.empty(n, np.float32)
        return self.ubuf[:n]

    def get(self, n):
        if self.buf.size < n:
            self.buf = np.empty(n, np.float32)
        return self.buf[:n]


_LOCAL = threading.local()


def _workspace():
    ws = getattr(_LOCAL, "ws", None)
    if ws is None:
        ws = _LOCAL.ws = _Workspace()
    return ws


ROW_PAD = 16  # floats after each of the 36 rows of V and M: one cache line


def _buffers(buf, cin, cout, T):
    """V (36, cin*T + pad) and M (36, cout*T + pad) in buf, and their (36, C, T) GEMM views."""
    lv, lm = cin * T + ROW_PAD, cout * T + ROW_PAD
    V = buf[: 36 * lv].reshape(36, lv)
    M = buf[36 * lv : 36 * (lv + lm)].reshape(36, lm)
    Vg = as_strided(V, (36, cin, T), (V.strides[0], T * 4, 4))
    Mg = as_strided(M, (36, cout, T), (M.strides[0], T * 4, 4))
    return V, M, Vg, Mg


def _buffer_size(cin, cout, T):
    return 36 * (cin * T + cout * T + 2 * ROW_PAD)


# ---------------------------------------------------------------- the 36 products
# Weights either as U (36, Cout, Cin), made once and kept (the default: fastest), or as w9
# (9, Cout, Cin), the 3x3 taps as rows, from which the products make U block by block as they
# go (the layers that ops.py's MINIVGG_WINOGRAD_WEIGHTS streams: a quarter of U's memory). With
# w9 the products go by rows i of the 6x6 transformed tile: the six positions 6i..6i+5 share
# the first half of the weight transform (row i of G W), their six V[xi] stay in L2 while
# blocks of U's rows are made and used at once (docs/benchmarks.md has the measurements).
UBLOCK_BYTES = 3 << 19


def _streamed(wt):
    return wt.shape[0] == 9


@njit(nogil=True, cache=True)
def _products_fwd(lanes, w9, Vg, Mg, o0, o1, rb, ub):
    """M[xi][o] = U[xi][o] @ V[xi] for all 36 positions xi, o in o0..o1-1."""
    K = w9.shape[2]
    for a in range(o0, o1, rb):
        e = min(o1, a + rb)
        for i in range(6):
            U6 = ub[: 6 * (e - a) * K].reshape(6, e - a, K)
            _weight_rows(w9, i, a, e, 0, K, U6)
            gemm._gemm3(lanes, U6, Vg[6 * i : 6 * i + 6], Mg[6 * i : 6 * i + 6, a:e], False)


@njit(nogil=True, cache=True)
def _products_bwd(lanes, w9, Vg, Mg, c0, c1, rb, ub):
    """M[xi][c] = U[xi][:, c]^T @ V[xi] for all 36 positions xi, c in c0..c1-1, summed over
    blocks of rb of the K axis (the convolution's output channels)."""
    n = w9.shape[1]
    C = c1 - c0
    for a in range(0, n, rb):
        e = min(n, a + rb)
        for i in range(6):
            U6 = ub[: 6 * (e - a) * C].reshape(6, e - a, C)
            _weight_rows(w9, i, a, e, c0, c1, U6)
            gemm._gemm3(lanes, U6.transpose(0, 2, 1), Vg[6 * i : 6 * i + 6, a:e], Mg[6 * i : 6 * i + 6, c0:c1], a > 0)


def _products_streamed(w9, backward, Vg, Mg, r0, r1):
    """Rows r0..r1-1 of the 36 products from w9 (rows: the output channels, or in the
    backward the convolution's input channels)."""
    k = w9.shape[1] if backward else w9.shape[2]
    cols = r1 - r0 if backward else k
    kern = gemm.kernel()
    mr = gemm.MR if kern is None else kern.mr  # whole register blocks of the level's kernel
    rb = max(mr, UBLOCK_BYTES // (6 * 4 * cols) // mr * mr)
    ub = _workspace().ublock(6 * rb * cols)
    if kern is not None:
        (_products_bwd if backward else _products_fwd)(kern.lanes, w9, Vg, Mg, r0, r1, rb, ub)
        return
    for i in range(6):  # numpy's BLAS (level blas): the same blocks
        xs = slice(6 * i, 6 * i + 6)
        for a in range(0, k, rb) if backward else range(r0, r1, rb):
            e = min(k if backward else r1, a + rb)
            U6 = ub[: 6 * (e - a) * cols].reshape(6, e - a, cols)
            if backward:
                _weight_rows(w9, i, a, e, r0, r1, U6)
                part = np.matmul(U6.transpose(0, 2, 1), Vg[xs, a:e])
                if a == 0:
                    Mg[xs, r0:r1] = part
                else:
                    Mg[xs, r0:r1] += part
            else:
                _weight_rows(w9, i, a, e, 0, k, U6)
                Mg[xs, a:e] = np.matmul(U6, Vg[xs])


# Where each position's weights are: its row of U's inner positions (>= 0), or at a corner
# -1 - its tap's row of the taps.
_SOURCE = np.array([-1 - CORNER_TAPS[CORNERS.index(xi)] if xi in CORNERS else INNER.index(xi) for xi in range(36)], np.int64)


@njit(nogil=True, cache=True)
def _products_kept(lanes, Ui, w9, src, Vg, Mg, o0, o1, backward):
    """M[xi][o] = U[xi][o] @ V[xi] (backward: U[xi][:, o]^T @ V[xi]) for the 36 positions xi,
    o in o0..o1-1, with U[xi] = Ui[src[xi]], or w9[-1 - src[xi]] at the corners (_SOURCE)."""
    cout, cin = Ui.shape[1], Ui.shape[2]
    plane = cout * cin
    if backward:  # A[r, k] = U[xi][k, o0 + r]
        sai, sak, K, off = 1, cin, cout, o0
    else:  # A[r, k] = U[xi][o0 + r, k]
        sai, sak, K, off = cin, 1, cin, o0 * cin
    sbb, ldb = Vg.strides[0] // 4, Vg.strides[1] // 4
    scb, ldc = Mg.strides[0] // 4, Mg.strides[1] // 4
    m, n = o1 - o0, Vg.shape[2]
    for xi in range(36):
        co = xi * scb + o0 * ldc
        if src[xi] < 0:
            gemm._gemm_flat(lanes, w9, (-1 - src[xi]) * plane + off, sai, sak, Vg, xi * sbb, ldb, Mg, co, ldc, m, n, K, False)
        else:
            gemm._gemm_flat(lanes, Ui, src[xi] * plane + off, sai, sak, Vg, xi * sbb, ldb, Mg, co, ldc, m, n, K, False)


def _position_runs():
    """_SOURCE as runs of consecutive positions with consecutive rows of one array:
    (xi0, xi1, from the taps, first row), for numpy's batched matmul."""
    runs = []
    for xi, s in enumerate(_SOURCE.tolist()):
        taps, r = s < 0, (-1 - s if s < 0 else s)
        if runs and runs[-1][2] == taps and runs[-1][3] + xi - runs[-1][0] == r:
            runs[-1] = (runs[-1][0], xi + 1, taps, runs[-1][3])
        else:
            runs.append((xi, xi + 1, taps, r))
    return runs


_RUNS = _position_runs()


def _products(wt, backward, Vg, Mg, o0, o1):
    """Rows o0..o1-1 of all 36 products (M[xi][o] = U[xi][o] @ V[xi], in the backward
    U[xi][:, o]^T @ V[xi]), in this thread: from the kept U (all 36 positions, or the 32
    inner ones and the taps), or made from w9 as they go."""
    if isinstance(wt, tuple):
        Ui, w9 = wt
        lanes = gemm.lanes()
        if lanes:
            _products_kept(lanes, Ui, w9, _SOURCE, Vg, Mg, o0, o1, backward)
            return
        for xi0, xi1, taps, r in _RUNS:  # numpy's BLAS (level blas): the same products
            Ur = (w9 if taps else Ui)[r : r + xi1 - xi0]
            Ug = Ur.transpose(0, 2, 1) if backward else Ur
            np.matmul(Ug[:, o0:o1], Vg[xi0:xi1], out=Mg[xi0:xi1, o0:o1])
    elif _streamed(wt):
        _products_streamed(wt, backward, Vg, Mg, o0, o1)
    else:
        Ug = wt.transpose(0, 2, 1) if backward else wt
        gemm.matmul(Ug[:, o0:o1], Vg, Mg[:, o0:o1])


def _band(x, mask, extra, pooled, wt, b, relu, y, ti0, ti1, tw, backward, W):
    """The whole pipeline on tile rows ti0..ti1-1 of one image, in this thread."""
    fin = _KERNELS[backward][0]
    cin = x.shape[0]
    cout = y.shape[0]
    T = (ti1 - ti0) * tw
    V, M, Vg, Mg = _buffers(_workspace().get(_buffer_size(cin, cout, T)), cin, cout, T)
    fin(x, mask, extra, pooled, 0, cin, ti0, ti1, tw, V)
    _products(wt, backward, Vg, Mg, 0, cout)
    _output(M, b, relu, 0, cout, ti0, ti1, tw, y, backward, x, W)


def _rows_out(wt, Vg, Mg, M, b, relu, o0, o1, th, tw, y, backward, x, W):
    """Output channels o0..o1-1 of a whole map in this thread: their rows of the 36 products
    (from all of V) and then their output transform, while those rows of M are in its cache."""
    _products(wt, backward, Vg, Mg, o0, o1)
    _output(M, b, relu, o0, o1, 0, th, tw, y, backward, x, W)


def _whole(x, mask, extra, pooled, wt, b, relu, y, th, tw, nthreads, bufs, backward, W):
    """One image, all tiles at once (for small maps), in two stages: the input transform
    split over the threads by channels, then each thread's share of the output channels,
    their products and their output transform. (Not the products split by positions as a
    stage of their own: the same numbers to the bit, but one more hand-over to the pool, and
    slower on the 512-channel maps; docs/benchmarks.md.)"""
    fin = _KERNELS[backward][0]
    V, M, Vg, Mg = bufs
    _run([(fin, x, mask, extra, pooled, c0, c1, 0, th, tw, V) for c0, c1 in _split(x.shape[0], nthreads)], nthreads)
    _run([(_rows_out, wt, Vg, Mg, M, b, relu, o0, o1, th, tw, y, backward, x, W) for o0, o1 in _split(y.shape[0], nthreads)], nthreads)


# Below this many tiles per band the GEMMs are bound by reading U. With gemm.py's kernels
# smaller bands than OpenBLAS needed pay (bands of conv1_2 - conv3_x half as tall keep V and
# M in cache, and the band buffers, so the peak memory, are smaller); smaller still was
# slower at 512x512. The bytes of V + M a band aims at: gemm.py's GEMMs do not need larger
# bands, and the workspace is half what it was. Measurements: docs/benchmarks.md.
MIN_BAND_TILES = 128
BAND_BYTES = 3 << 20


def band_rows(th, tw, cin, cout, target_bytes=None, min_tiles=None):
    """Tile rows per band: V+M of one band near target_bytes but at least min_tiles tiles."""
    target_bytes = BAND_BYTES if target_bytes is None else target_bytes
    min_tiles = MIN_BAND_TILES if min_tiles is None else min_tiles
    per_row = 36 * tw * (cin + cout) * 4
    rows = max(1, target_bytes // per_row, -(-min_tiles // tw))
    return int(min(rows, th))


_NO_MASK = np.empty((0, 0, 0), np.float32)


def _conv(x, U, b, relu, mask, out, threads, backward, W=None, extra=None, pooled=False):
    """U: transform_weights(W) (36, Cout, Cin), or gather_weights(W) (9, Cout, Cin)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, cin, H, Wd = x.shape
    if pooled:  # x is a 2x2 average pool's output gradient: the map is mask's
        if mask is None or mask.shape[:2] != x.shape[:2] or (mask.shape[2] // 2, mask.shape[3] // 2) != (H, Wd):
            raise ValueError("pooled needs a mask whose 2x2 pooling has the shape of the input")
        H, Wd = mask.shape[2], mask.shape[3]
    # forward: M[xi] = U[xi] @ V[xi]; backward: M[xi] = U[xi]^T @ V[xi] (U read in place, no copy)
    if isinstance(U, tuple):  # (transform_weights(W, corners=False), gather_weights(W))
        if len(U) != 2 or U[0].shape != (32,) + U[1].shape[1:] or U[1].ndim != 3 or U[1].shape[0] != 9:
            raise ValueError(f"weights of shapes {[u.shape for u in U]}: need (transform_weights(W, corners=False), gather_weights(W))")
        U = tuple(np.ascontiguousarray(u, dtype=np.float32) for u in U)
        shape = U[1].shape
    else:
        if U.ndim != 3 or U.shape[0] not in (9, 36):
            raise ValueError(f"weights of shape {U.shape}: need transform_weights(W) or gather_weights(W)")
        U = np.ascontiguousarray(U, dtype=np.float32)
        shape = U.shape
    cout, k = (shape[2], shape[1]) if backward else (shape[1], shape[2])
    if k != cin:
        raise ValueError(f"weights for {k} input channels, input has {cin}")
    b = np.zeros(cout, np.float32) if b is None else np.ascontiguousarray(b, dtype=np.float32)
    if mask is not None:  # a float32 ReLU output, or its uint8 0 / 1 mask (ops.compact_mask)
        mask = np.ascontiguousarray(mask) if mask.dtype == np.uint8 else np.ascontiguousarray(mask, dtype=np.float32)
    masks = [_NO_MASK if mask is None else mask[i] for i in range(n)]
    if extra is not None:
        if mask is None or extra.shape != mask.shape:
            raise ValueError("extra needs a mask and the shape of the input")
        extra = np.ascontiguousarray(extra, dtype=np.float32)
    extras = [_NO_MASK if extra is None else extra[i] for i in range(n)]
    th = -(-H // 4)
    tw = -(-Wd // 4)
    y = out if out is not None else arena.empty((n, cout, H, Wd), np.float32)
    nthreads = threads or num_threads()
    rows = band_rows(th, tw, cin, cout)
    bands = [(i, r0, min(th, r0 + rows)) for i in range(n) for r0 in range(0, th, rows)]
    # One BLAS thread per call: the parallelism is ours (bands or stages over threads).
    with one_blas_thread():
        if nthreads == 1:
            for i, r0, r1 in bands:
                _band(x[i], masks[i], extras[i], pooled, U, b, relu, y[i], r0, r1, tw, backward, W)
        elif len(bands) >= 2 * nthreads:
            _run([(_band, x[i], masks[i], extras[i], pooled, U, b, relu, y[i], r0, r1, tw, backward, W) for i, r0, r1 in bands], nthreads)
        else:
            T = th * tw
            # V and M for this call only: freed, their block is there for the next layer's
            # arrays (kept between calls, conv3_x's 19 MB at 256x256 were idle at the peak,
            # conv1_2's backward: +14 MB). malloc keeps freed blocks mapped (runtime.py), so
            # a new one costs no page faults and no time.
            bufs = _buffers(np.empty(_buffer_size(cin, cout, T), np.float32), cin, cout, T)
            for i in range(n):
                _whole(x[i], masks[i], extras[i], pooled, U, b, relu, y[i], th, tw, nthreads, bufs, backward, W)
    return y


def conv3x3_forward(x, U, b, relu=False, mask=None, out=None, threads=None, W=None):
    """y = conv2d(x, W, b, stride 1, pad 1) (then ReLU when relu), U = transform_weights(W).

    x (N, Cin, H, W) float32; U (36, Cout, Cin) float32, or (transform_weights(W,
    corners=False), gather_weights(W)) (U's corners read from the taps: the same numbers),
    or gather_weights(W) (9, Cout, Cin) for products that make U as they go; b (Cout,)
    float32 or None.
    mask (N, Cin, H, W) or None: convolve x * (mask > 0) instead of x.
    W (Cout, Cin, 3, 3) or None: when given (and no mask), outputs near zero are recomputed
    exactly from it (REFINE_BELOW), so that ReLU signs are as reliable as im2col's.
    Large maps: bands of tile rows, each band's whole pipeline in one thread. Small maps
    (fewer than two bands per thread): all tiles at once, each stage split over the threads.
    """
    if mask is not None:
        W = None
    if W is not None and W.dtype != np.float32:  # any strides (a layer's view of its taps)
        W = W.astype(np.float32)
    return _conv(x, U, b, relu, mask, out, threads, False, W)


def conv3x3_backward_input(dy, U, mask=None, out=None, threads=None, extra=None, pooled=False):
    """dx of y = conv2d(x, W, ., stride 1, pad 1) given dy, from the forward U = transform_weights(W)
    (or the other forms conv3x3_forward takes).

    dy (N, Cout, H, W) float32 -> dx (N, Cin, H, W). mask (N, Cout, H, W) or None: use
    dy * (mask > 0), i.e. the backward of a ReLU whose output is mask, fused in.
    extra (the shape of dy, with mask only) or None: use (dy + extra) * (mask > 0), a second
    gradient reaching the ReLU's output (a loss on it) added in the same pass.
    pooled (with mask): dy is the gradient at the output of a 2x2 stride-2 average pool of
    the ReLU's output, whose backward (dy / 4 over each window) is folded into the input
    transform; dx then has mask's height and width.
    """
    return _conv(dy, U, None, False, mask, out, threads, True, extra=extra, pooled=pooled)
