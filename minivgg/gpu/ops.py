"""The GPU backend's ops: our CUDA kernels for every element-wise and data-movement
step, cuBLAS (``xp.matmul``) for the GEMMs.

One class serves two devices that share every line of launch code (argument order,
shapes, grid sizes):

- ``KernelOps("gpu")``: CuPy arrays; modules are ``cupy.RawModule`` (``cuda.py``).
- ``KernelOps("emulated")``: numpy arrays; the same ``.cu`` files compiled with g++
  against ``emulate.h`` (``emulate.py``); GEMMs and sums by numpy. No kernel falls
  back to the CPU backend's numpy/numba code.

The only library calls besides kernels are GEMMs (``xp.matmul``), sums of per-element
terms into a loss value, and allocation/reshaping. Function names and contracts are
the CPU backend's (``minivgg/cpu/ops.py``); the math lives with the layers
(``minivgg/layers``) and losses (``minivgg/losses.py``).
"""

import math

import numpy as np

# Above this many elements an im2col buffer is filled and multiplied a few images at a time.
COL_BUDGET = 1 << 28


def _out_size(n, ksize, stride, pad):
    return (n + 2 * pad - ksize) // stride + 1


class KernelOps:
    """Backend ops on ``kind`` = ``"gpu"`` or ``"emulated"``.

    ``threads`` (per block) and ``max_blocks`` set the launch grid: ``blocks =
    min(ceil(n / threads), max_blocks)``; every kernel is a grid-stride loop, so any
    grid is correct. ``reverse`` (emulated only) runs blocks and threads in reverse
    order, to show the result does not depend on it.
    """

    def __init__(self, kind, threads=256, max_blocks=4096, reverse=False):
        if kind == "gpu":
            import cupy

            from . import cuda

            self.xp = cupy
            self._load = cuda.load_module
        elif kind == "emulated":
            from . import emulate

            self.xp = np
            self._load = lambda name, defines: emulate.load_module(name, defines, reverse=reverse)
        else:
            raise ValueError(f"KernelOps: unknown kind {kind!r}")
        self.kind = kind
        self._kernels = {}  # (file, kernel, defines...) -> callable kernel
        self.threads = int(threads)
        self.max_blocks = int(max_blocks)

    def __repr__(self):
        return f"KernelOps({self.kind!r}, threads={self.threads}, max_blocks={self.max_blocks})"

    # ---- launching -------------------------------------------------------------------

    def kernel(self, file, name, dtype, **defines):
        """The kernel ``name`` of ``kernels/<file>.cu`` compiled for element type ``dtype``."""
        real = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}.get(np.dtype(dtype))
        if real is None:
            raise TypeError(f"GPU kernels take float32 or float64 arrays, not {np.dtype(dtype)}")
        key = (file, name) + tuple(sorted(defines.items())) + (("MINIVGG_REAL", real),)
        k = self._kernels.get(key)
        if k is None:
            k = self._kernels[key] = self._load(file, key[2:]).get_function(name)
        return k

    def grid(self, n):
        """(grid, block) for ``n`` elements."""
        blocks = max(1, min(-(-int(n) // self.threads), self.max_blocks))
        return (blocks,), (self.threads,)

    def launch(self, kernel, n, *args):
        """Run ``kernel`` over ``n`` elements (nothing to do when ``n`` is 0)."""
        if n > 0:
            grid, block = self.grid(n)
            kernel(grid, block, args)

    def _c(self, a, dtype):
        """``a`` as a C-contiguous array of ``dtype`` (no copy when it already is one)."""
        return self.xp.ascontiguousarray(a, dtype=dtype)

    @staticmethod
    def _same_shape(what, a, b):
        """A kernel trusts the sizes it is given: a mismatch would read or write out of bounds."""
        a, b = tuple(getattr(a, "shape", a)), tuple(getattr(b, "shape", b))
        if a != b:
            raise ValueError(f"{what}: shapes {a} and {b} differ")

    @staticmethod
    def _real(dtype, value):
        return np.dtype(dtype).type(value)

    # ---- convolution -----------------------------------------------------------------

    def _im2col(self, x, kh, kw, stride, pad, Ho, Wo):
        N, C, H, W = x.shape
        cols = self.xp.empty((N, C * kh * kw, Ho * Wo), dtype=x.dtype)
        k = self.kernel("conv", "im2col", x.dtype, KH=kh, KW=kw, STRIDE=stride, PAD=pad)
        i32 = np.int32
        self.launch(k, cols.size, x, cols, i32(N), i32(C), i32(H), i32(W), i32(Ho), i32(Wo))
        return cols

    def _chunks(self, N, per_image):
        step = max(1, COL_BUDGET // max(1, per_image))
        return [(n, min(N, n + step)) for n in range(0, N, step)]

    def _conv_forward(self, x, W, b, stride, pad, state, relu):
        xp = self.xp
        N, C, H, Wd = x.shape
        F, _, kh, kw = W.shape
        Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
        dt = np.result_type(x.dtype, W.dtype)
        x = self._c(x, dt)
        W2 = self._c(W.reshape(F, -1), dt)
        P = Ho * Wo
        y = xp.empty((N, F, P), dtype=dt)
        for n0, n1 in self._chunks(N, C * kh * kw * P):
            cols = self._im2col(x[n0:n1], kh, kw, stride, pad, Ho, Wo)
            xp.matmul(W2, cols, out=y[n0:n1])
        if b is not None:
            name = "bias_relu" if relu else "bias_add"
            k = self.kernel("bias", name, dt)
            self.launch(k, y.size, y, self._c(b, dt), np.int64(y.size), np.int32(F), np.int64(P))
        elif relu:
            self.launch(self.kernel("relu", "relu_forward", dt), y.size, y, y, np.int64(y.size))
        return y.reshape(N, F, Ho, Wo), (x, W, stride, pad, state)

    def conv2d_forward(self, x, W, b, stride, pad, state):
        """im2col (kernel) + one GEMM per chunk of images + bias (kernel)."""
        return self._conv_forward(x, W, b, stride, pad, state, relu=False)

    def conv2d_relu_forward(self, x, W, b, stride, pad, state, pool_ties=False):
        """conv2d_forward followed by a ReLU, the bias and the ReLU fused in one kernel.

        Returns ``(y, cache)`` with y the ReLU's output and the conv's cache (x, W, stride,
        pad, state), as conv2d_forward's; backward is ``relu_conv2d_backward(dy, y, cache)``.

        pool_ties: a 2x2 max pool comes next. The outputs that tie, to ``POOL_TIE_BELOW``
        of the image's largest output, for their window's maximum are listed
        (``pool_tie_mark``) and recomputed exactly (``conv3x3_relu_exact``, a double sum),
        so the pool picks the unit an exact computation picks (as on the CPU).
        """
        y, cache = self._conv_forward(x, W, b, stride, pad, state, relu=True)
        if pool_ties and y.dtype == np.float32 and W.shape[2:] == (3, 3) and stride == 1 and pad == 1:
            self._refine_pool_ties(cache[0], W, b, y)
        return y, cache

    def _refine_pool_ties(self, x, W, b, y):
        from ..tolerances import POOL_TIE_BELOW

        xp = self.xp
        N, F, H, Wd = y.shape
        dt = y.dtype
        tol = self._c(y.reshape(N, -1).max(axis=1) * dt.type(POOL_TIE_BELOW), dt)
        flag = xp.empty(y.shape, dtype=np.int32)
        i32 = np.int32
        self.launch(self.kernel("refine", "pool_tie_mark", dt), y.size,
                    y, tol, flag, i32(N), i32(F), i32(H), i32(Wd))
        at = self._c(xp.flatnonzero(flag), np.int64)
        if at.size:
            self.launch(self.kernel("refine", "conv3x3_relu_exact", dt), at.size,
                        x, self._c(W, dt), self._c(xp.zeros(F, dt) if b is None else b, dt), y, at, np.int64(at.size),
                        i32(x.shape[1]), i32(F), i32(H), i32(Wd))

    def conv2d_backward(self, dy, cache, param_grads):
        """dx = col2im(W2^T @ dy[n]) (GEMM + kernel); dW = sum_n dy[n] @ im2col(x[n])^T; db = dy @ 1."""
        xp = self.xp
        x, W, stride, pad, _state = cache
        N, C, H, Wd = x.shape
        F, _, kh, kw = W.shape
        Ho, Wo = _out_size(H, kh, stride, pad), _out_size(Wd, kw, stride, pad)
        self._same_shape("conv2d_backward", dy, (N, F, Ho, Wo))
        P = Ho * Wo
        dt = x.dtype
        W2 = self._c(W.reshape(F, -1), dt)
        dy2 = self._c(dy, dt).reshape(N, F, P)
        dx = xp.empty((N, C, H, Wd), dtype=dt)
        k = self.kernel("conv", "col2im", dt, KH=kh, KW=kw, STRIDE=stride, PAD=pad)
        i32 = np.int32
        chunks = self._chunks(N, C * kh * kw * P)
        for n0, n1 in chunks:
            dcols = xp.matmul(W2.T, dy2[n0:n1])
            dxc = dx[n0:n1]
            self.launch(k, dxc.size, dcols, dxc, i32(n1 - n0), i32(C), i32(H), i32(Wd), i32(Ho), i32(Wo))
        if not param_grads:
            return dx, None, None
        dW = xp.zeros((F, C * kh * kw), dtype=dt)
        for n0, n1 in chunks:
            cols = self._im2col(x[n0:n1], kh, kw, stride, pad, Ho, Wo)
            dW += xp.matmul(dy2[n0:n1], cols.transpose(0, 2, 1)).sum(axis=0)
        db = xp.matmul(dy2, xp.ones(P, dtype=dt)).sum(axis=0)
        return dx, dW.reshape(W.shape), db

    # ---- ReLU --------------------------------------------------------------------------

    def relu_forward(self, x):
        x = self._c(x, x.dtype)
        y = self.xp.empty_like(x)
        self.launch(self.kernel("relu", "relu_forward", x.dtype), x.size, x, y, np.int64(x.size))
        return y

    def relu_backward(self, dy, y, extra=None):
        """dy * (y > 0), or (dy + extra) * (y > 0)."""
        if extra is not None:
            dy = dy + extra
        self._same_shape("relu_backward", dy, y)
        y = self._c(y, y.dtype)
        dy = self._c(dy, y.dtype)
        dx = self.xp.empty_like(y)
        self.launch(self.kernel("relu", "relu_backward", y.dtype), y.size, dy, y, dx, np.int64(y.size))
        return dx

    # ---- pooling -----------------------------------------------------------------------

    def _pool(self, name, dtype, k, s):
        return self.kernel("pool", name, dtype, POOL_K=int(k), POOL_S=int(s))

    def avg_pool2d_forward(self, x, k, s):
        N, C, H, W = x.shape
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
        x = self._c(x, x.dtype)
        y = self.xp.empty((N, C, Ho, Wo), dtype=x.dtype)
        i32 = np.int32
        self.launch(self._pool("avg_pool_forward", x.dtype, k, s), y.size,
                    x, y, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo))
        return y

    def avg_pool2d_backward(self, dy, x_shape, k, s):
        N, C, H, W = x_shape
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
        self._same_shape("avg_pool2d_backward", dy, (N, C, Ho, Wo))
        dy = self._c(dy, dy.dtype)
        dx = self.xp.empty((N, C, H, W), dtype=dy.dtype)
        i32 = np.int32
        self.launch(self._pool("avg_pool_backward", dy.dtype, k, s), dx.size,
                    dy, dx, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo))
        return dx

    def max_pool2d_forward(self, x, k, s):
        N, C, H, W = x.shape
        Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
        x = self._c(x, x.dtype)
        y = self.xp.empty((N, C, Ho, Wo), dtype=x.dtype)
        arg = self.xp.empty((N, C, Ho, Wo), dtype=np.int32)
        i32 = np.int32
        self.launch(self._pool("max_pool_forward", x.dtype, k, s), y.size,
                    x, y, arg, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo))
        return y, (arg, x.shape, k, s)

    def max_pool2d_backward(self, dy, cache):
        arg, (N, C, H, W), k, s = cache
        self._same_shape("max_pool2d_backward", dy, arg)
        dy = self._c(dy, dy.dtype)
        Ho, Wo = arg.shape[2], arg.shape[3]
        dx = self.xp.empty((N, C, H, W), dtype=dy.dtype)
        i32 = np.int32
        self.launch(self._pool("max_pool_backward", dy.dtype, k, s), dx.size,
                    dy, arg, dx, i32(N * C), i32(H), i32(W), i32(Ho), i32(Wo))
        return dx

    # ---- fully connected ---------------------------------------------------------------

    def linear_forward(self, x, W, b):
        """y = x W^T (GEMM) + b (kernel)."""
        dt = np.result_type(x.dtype, W.dtype)
        y = self._c(self.xp.matmul(self._c(x, dt), W.astype(dt, copy=False).T), dt)
        if b is not None:
            F = y.shape[1]
            self.launch(self.kernel("bias", "bias_add", dt), y.size,
                        y, self._c(b, dt), np.int64(y.size), np.int32(F), np.int64(1))
        return y

    def linear_backward(self, dy, x, W, param_grads):
        """dx = dy W; dW = dy^T x; db = 1^T dy: three GEMMs."""
        xp = self.xp
        dx = xp.matmul(dy, W)
        if not param_grads:
            return dx, None, None
        return dx, xp.matmul(dy.T, x), xp.matmul(xp.ones(dy.shape[0], dtype=dy.dtype), dy)

    # ---- losses (same contracts as minivgg/losses.py) -----------------------------------

    def _sum(self, term):
        return float(term.sum(dtype=np.float64))

    def content_loss(self, F, P):
        """``1/2 sum (F - P)^2`` and ``F - P``."""
        self._same_shape("content_loss", F, P)
        F = self._c(F, F.dtype)
        P = self._c(P, F.dtype)
        d = self.xp.empty_like(F)
        term = self.xp.empty_like(F)
        self.launch(self.kernel("losses", "content_diff", F.dtype), F.size, F, P, d, term, np.int64(F.size))
        return 0.5 * self._sum(term), d

    def gram_matrix(self, F):
        """G = F F^T per image (one batched GEMM): (N, C, H, W) -> (N, C, C)."""
        Fm = self._as_matrices(F)
        return self.xp.matmul(Fm, Fm.transpose(0, 2, 1))

    @staticmethod
    def _as_matrices(F):
        if F.ndim == 3:
            F = F[None]
        return F.reshape(F.shape[0], F.shape[1], -1)

    def style_loss(self, F, A, mask=False):
        """``E = 1/(4 C^2 M^2) sum (G - A)^2`` and ``dE/dF = 1/(C^2 M^2) (G - A) F``.

        G and (G - A) F are GEMMs; G - A with its squares, and the scaling of the
        gradient, are kernels (``gram_diff``, ``style_grad_mask``). ``mask=True`` also
        zeroes the gradient where F < 0 (a loss taken before a ReLU).
        """
        xp = self.xp
        dt = F.dtype
        Fm = self._c(self._as_matrices(F), dt)
        N, C, M = Fm.shape
        G = self._c(xp.matmul(Fm, Fm.transpose(0, 2, 1)), dt)
        A = self._c(A, dt)
        if A.size not in (C * C, N * C * C):
            raise ValueError(f"style_loss: target Gram matrix of shape {A.shape} for {C} channels and {N} images")
        D = xp.empty_like(G)
        term = xp.empty_like(G)
        self.launch(self.kernel("losses", "gram_diff", dt), G.size,
                    G, A, D, term, np.int64(G.size), np.int64(A.size))
        scale = 1.0 / (C * C * M * M)
        value = 0.25 * scale * self._sum(term)
        dF = self._c(xp.matmul(D, Fm), dt)
        Fc = self._c(F, dt)
        self.launch(self.kernel("losses", "style_grad_mask", dt), dF.size,
                    dF, Fc, self._real(dt, scale), np.int32(bool(mask)), np.int64(dF.size))
        return value, dF.reshape(F.shape)

    def style_loss_deferred(self, F, A, weight=1.0):
        """style_loss with the gradient scaled by ``weight``, made now (the GPU has no
        deferred GEMM into the gradient from above)."""
        value, dF = self.style_loss(F, A)
        dF *= weight
        return value, dF

    def total_variation(self, x, beta=2.0):
        """TV^beta over the pixels with a right and a lower neighbour, and its gradient."""
        dt = x.dtype
        x = self._c(x, dt)
        H, W = x.shape[-2], x.shape[-1]
        NC = x.size // max(1, H * W)
        term = self.xp.empty_like(x)
        w = self.xp.empty_like(x)
        dx = self.xp.empty_like(x)
        i32 = np.int32
        self.launch(self.kernel("losses", "tv_forward", dt), x.size,
                    x, term, w, i32(NC), i32(H), i32(W), self._real(dt, beta))
        self.launch(self.kernel("losses", "tv_backward", dt), x.size, x, w, dx, i32(NC), i32(H), i32(W))
        return self._sum(term), dx

    def alpha_norm(self, x, alpha=6.0):
        """``sum |x|^alpha`` and ``alpha |x|^(alpha-1) sign(x)``."""
        dt = x.dtype
        x = self._c(x, dt)
        term = self.xp.empty_like(x)
        g = self.xp.empty_like(x)
        self.launch(self.kernel("losses", "alpha_norm", dt), x.size,
                    x, term, g, self._real(dt, alpha), np.int64(x.size))
        return self._sum(term), g

    # ---- optimizer steps (in place; see minivgg/optim.py) --------------------------------

    def adam_update(self, x, g, m, v, k, lr, b1=0.9, b2=0.999, eps=1e-8):
        """One Adam step number ``k`` (1-based) on x, m, v in place; returns x.

        x, m, v must be C-contiguous arrays of one dtype (the kernel writes them).
        """
        dt = x.dtype
        for name, a in (("g", g), ("m", m), ("v", v)):
            self._same_shape(f"adam_update: x and {name}", x, a)
        r = lambda val: self._real(dt, val)  # noqa: E731
        g = self._c(g, dt)
        step = lr / (1 - b1**k)
        sqrt_bc2 = math.sqrt(1 - b2**k)
        self.launch(self.kernel("optim", "adam_update", dt), x.size, x, g, m, v,
                    r(b1), r(1 - b1), r(b2), r(1 - b2), r(step), r(sqrt_bc2), r(eps), np.int64(x.size))
        return x

    def sgd_update(self, x, g, buf, lr, momentum=0.9, first=False):
        """One SGD-with-momentum step on x and buf in place; returns x."""
        dt = x.dtype
        self._same_shape("sgd_update: x and g", x, g)
        self._same_shape("sgd_update: x and buf", x, buf)
        g = self._c(g, dt)
        self.launch(self.kernel("optim", "sgd_update", dt), x.size, x, g, buf,
                    self._real(dt, lr), self._real(dt, momentum), np.int32(bool(first)), np.int64(x.size))
        return x
