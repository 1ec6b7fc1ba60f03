"""im2col / col2im and the pooling loops in numba.

im2col unrolls every k x k patch of one image (C, H, W) into a column of the matrix
``cols`` (C*kh*kw, Ho*Wo), so that a convolution becomes one GEMM:
``y = W.reshape(Cout, C*kh*kw) @ cols``. col2im is its adjoint: it sums each column
entry back to the pixel it came from. Both run over minivgg's thread pool: im2col
split by rows, col2im by channels (a thread owns whole planes, so no two threads write
the same element).
"""

from numba import njit, prange

from .fast.threads import parallel_range


@njit(nogil=True, cache=True)
def _inside(kj, stride, pad, W, Wo):
    """[lo, hi): the output columns ow whose input column ow * stride - pad + kj lies
    inside 0..W-1 (the rest read the zero padding)."""
    lo = min(Wo, max(0, -((kj - pad) // stride)))
    hi = min(Wo, max(lo, (W - 1 - kj + pad) // stride + 1))
    return lo, hi


@njit(nogil=True, cache=True)
def _im2col_rows(r0, r1, x, kh, kw, stride, pad, Ho, Wo, out):
    """Rows r0..r1-1 of im2col's ``out`` (one row per (c, ki, kj))."""
    C, H, W = x.shape
    for r in range(r0, r1):
        c = r // (kh * kw)
        ki = (r // kw) % kh
        kj = r % kw
        lo, hi = _inside(kj, stride, pad, W, Wo)
        for oh in range(Ho):
            i = oh * stride - pad + ki
            o = out[r, oh * Wo : (oh + 1) * Wo]
            if i < 0 or i >= H:
                for ow in range(Wo):
                    o[ow] = 0
                continue
            xr = x[c, i]
            for ow in range(lo):
                o[ow] = 0
            if stride == 1:
                for ow in range(lo, hi):
                    o[ow] = xr[ow - pad + kj]
            else:
                for ow in range(lo, hi):
                    o[ow] = xr[ow * stride - pad + kj]
            for ow in range(hi, Wo):
                o[ow] = 0


def im2col(x, kh, kw, stride, pad, Ho, Wo, out):
    """Fill ``out`` (C*kh*kw, Ho*Wo) with the patches of ``x`` (C, H, W); zero padding.
    Rows are split over minivgg's thread pool (cpu/fast/threads.py: why not prange)."""
    parallel_range(_im2col_rows, out.shape[0], x, kh, kw, stride, pad, Ho, Wo, out,
                   min_per_thread=max(1, (1 << 15) // max(1, out.shape[1])))


@njit(nogil=True, cache=True)
def _col2im_planes(c0, c1, cols, kh, kw, stride, pad, Ho, Wo, out, oh0, oh1, zero):
    """Planes c0..c1-1 of col2im's ``out``, from the output rows oh0..oh1-1 whose columns
    ``cols`` holds (column (oh - oh0) * Wo + ow); the planes are zeroed first when ``zero``
    (else added to: a band of rows after another). Each pixel sums the entries that read
    it in (ki, kj) order, as a per-pixel gather would, but row segment by row segment
    (contiguous, vectorisable)."""
    C, H, W = out.shape
    for c in range(c0, c1):
        oc = out[c]
        if zero:
            for i in range(H):
                for j in range(W):
                    oc[i, j] = 0
        for ki in range(kh):
            for kj in range(kw):
                r = (c * kh + ki) * kw + kj
                lo, hi = _inside(kj, stride, pad, W, Wo)
                for oh in range(oh0, oh1):
                    i = oh * stride - pad + ki
                    if i < 0 or i >= H:
                        continue
                    src = cols[r, (oh - oh0) * Wo : (oh - oh0 + 1) * Wo]
                    dst = oc[i]
                    if stride == 1:
                        for ow in range(lo, hi):
                            dst[ow - pad + kj] += src[ow]
                    else:
                        for ow in range(lo, hi):
                            dst[ow * stride - pad + kj] += src[ow]


def col2im(cols, kh, kw, stride, pad, Ho, Wo, out, oh0=0, oh1=None, zero=True):
    """Adjoint of im2col: ``out[c, i, j] = sum of cols entries that im2col read from (c, i, j)``.
    ``cols`` may hold only the output rows oh0..oh1-1 (a band); with zero=False their
    contributions are added to ``out``. Each thread owns whole planes (channels), so no
    two threads write the same element."""
    oh1 = Ho if oh1 is None else oh1
    parallel_range(_col2im_planes, out.shape[0], cols, kh, kw, stride, pad, Ho, Wo, out, oh0, oh1, zero,
                   min_per_thread=max(1, (1 << 15) // max(1, out.shape[1] * out.shape[2])))


@njit(parallel=True, cache=True)
def relu_forward(x, out):
    flat = x.ravel()
    o = out.ravel()
    for i in prange(flat.size):
        v = flat[i]
        o[i] = v if v > 0 else 0


@njit(parallel=True, cache=True)
def relu_backward(dy, y, out):
    d = dy.ravel()
    yy = y.ravel()
    o = out.ravel()
    for i in prange(d.size):
        o[i] = d[i] if yy[i] > 0 else 0


@njit(parallel=True, cache=True)
def avg_pool_forward(x, k, s, out):
    """x (P, H, W) -> out (P, Ho, Wo): mean over each k x k window, windows every s pixels."""
    P, Ho, Wo = out.shape
    inv = 1.0 / (k * k)
    for p in prange(P):
        for oh in range(Ho):
            for ow in range(Wo):
                acc = x[p, oh * s, ow * s] * 0
                for a in range(k):
                    for b in range(k):
                        acc += x[p, oh * s + a, ow * s + b]
                out[p, oh, ow] = acc * inv


@njit(parallel=True, cache=True)
def avg_pool_backward(dy, k, s, out):
    """Gather: each input pixel sums dy/k^2 over the windows that contain it."""
    P, H, W = out.shape
    Ho, Wo = dy.shape[1], dy.shape[2]
    inv = 1.0 / (k * k)
    for p in prange(P):
        for i in range(H):
            oh_lo = max(0, (i - k + s) // s) if i >= k else 0
            oh_hi = min(Ho - 1, i // s)
            for j in range(W):
                ow_lo = max(0, (j - k + s) // s) if j >= k else 0
                ow_hi = min(Wo - 1, j // s)
                acc = dy[p, 0, 0] * 0
                for oh in range(oh_lo, oh_hi + 1):
                    for ow in range(ow_lo, ow_hi + 1):
                        acc += dy[p, oh, ow]
                out[p, i, j] = acc * inv


@njit(parallel=True, cache=True)
def max_pool_forward(x, k, s, out, arg):
    """Max over each window; ``arg`` keeps the window offset a*k+b of the first maximum
    (scanning row by row, as torch does), which is all backward needs."""
    P, Ho, Wo = out.shape
    for p in prange(P):
        for oh in range(Ho):
            for ow in range(Wo):
                best = x[p, oh * s, ow * s]
                bi = 0
                for a in range(k):
                    for b in range(k):
                        v = x[p, oh * s + a, ow * s + b]
                        if v > best or v != v:
                            best = v
                            bi = a * k + b
                out[p, oh, ow] = best
                arg[p, oh, ow] = bi


@njit(parallel=True, cache=True)
def max_pool_backward(dy, arg, k, s, out):
    """Gather: an input pixel receives dy of every window whose chosen maximum it is."""
    P, H, W = out.shape
    Ho, Wo = dy.shape[1], dy.shape[2]
    for p in prange(P):
        for i in range(H):
            oh_lo = max(0, (i - k + s) // s) if i >= k else 0
            oh_hi = min(Ho - 1, i // s)
            for j in range(W):
                ow_lo = max(0, (j - k + s) // s) if j >= k else 0
                ow_hi = min(Wo - 1, j // s)
                acc = dy[p, 0, 0] * 0
                for oh in range(oh_lo, oh_hi + 1):
                    a = i - oh * s
                    if a >= k:
                        continue
                    for ow in range(ow_lo, ow_hi + 1):
                        b = j - ow * s
                        if b < k and arg[p, oh, ow] == a * k + b:
                            acc += dy[p, oh, ow]
                out[p, i, j] = acc
