"""The layer kernels (kernels/conv.cu, bias.cu, relu.cu, pool.cu) run by the CPU
emulation of the CUDA grid, against plain numpy references written from the
definitions, on odd shapes, in float32 and float64, with the default launch grid,
with a grid so small that every grid-stride loop wraps many times, and with the
blocks and threads run in reverse order."""

import numpy as np
import pytest

from conftest import rel_err
from minivgg.gpu import get_ops

# (threads per block, max blocks, reverse order)
CONFIGS = {
    "default": dict(threads=256, max_blocks=4096),
    "wrapping": dict(threads=7, max_blocks=3),
    "reversed": dict(threads=5, max_blocks=2, reverse=True),
}
TINY_GRID = 7 * 3  # threads in the "wrapping" grid: every array below is larger


@pytest.fixture(params=list(CONFIGS))
def ops(request):
    return get_ops("emulated", **CONFIGS[request.param])


def tol(dtype):
    return 1e-5 if dtype == np.float32 else 1e-12


# ---- plain numpy references -------------------------------------------------------------


def conv_ref(x, W, b, s, p):
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = (H + 2 * p - kh) // s + 1, (Wd + 2 * p - kw) // s + 1
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    y = np.zeros((N, F, Ho, Wo), dtype=np.float64)
    for a in range(kh):
        for e in range(kw):
            patch = xp[:, :, a : a + s * Ho : s, e : e + s * Wo : s]  # (N, C, Ho, Wo)
            y += np.einsum("fc,nchw->nfhw", W[:, :, a, e].astype(np.float64), patch)
    return y + b[None, :, None, None]


def conv_backward_ref(dy, x, W, s, p):
    N, C, H, Wd = x.shape
    F, _, kh, kw = W.shape
    Ho, Wo = dy.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))).astype(np.float64)
    dxp = np.zeros_like(xp)
    dW = np.zeros(W.shape, dtype=np.float64)
    for a in range(kh):
        for e in range(kw):
            sl = (slice(None), slice(None), slice(a, a + s * Ho, s), slice(e, e + s * Wo, s))
            dxp[sl] += np.einsum("fc,nfhw->nchw", W[:, :, a, e].astype(np.float64), dy)
            dW[:, :, a, e] = np.einsum("nfhw,nchw->fc", dy, xp[sl])
    return dxp[:, :, p : p + H, p : p + Wd], dW, dy.sum(axis=(0, 2, 3))


def pool_windows(x, k, s):
    N, C, H, W = x.shape
    Ho, Wo = (H - k) // s + 1, (W - k) // s + 1
    return np.stack(
        [x[:, :, a : a + s * Ho : s, e : e + s * Wo : s][:, :, :Ho, :Wo] for a in range(k) for e in range(k)], axis=-1
    )  # (N, C, Ho, Wo, k*k), window offsets row-major


def avg_pool_backward_ref(dy, x_shape, k, s):
    dx = np.zeros(x_shape)
    Ho, Wo = dy.shape[2:]
    for i in range(Ho):
        for j in range(Wo):
            dx[:, :, s * i : s * i + k, s * j : s * j + k] += dy[:, :, i : i + 1, j : j + 1] / (k * k)
    return dx


def max_pool_backward_ref(dy, x, k, s):
    win = pool_windows(x, k, s)
    arg = win.argmax(axis=-1)  # first maximum, row-major: torch's choice
    dx = np.zeros(x.shape)
    N, C, Ho, Wo = dy.shape
    for n in range(N):
        for c in range(C):
            for i in range(Ho):
                for j in range(Wo):
                    a, e = divmod(arg[n, c, i, j], k)
                    dx[n, c, s * i + a, s * j + e] += dy[n, c, i, j]
    return dx


# ---- tests ------------------------------------------------------------------------------

CONV_CASES = [  # (N, C, H, W, F, k, stride, pad)
    (2, 3, 7, 5, 4, 3, 1, 1),  # VGG's geometry on an odd shape
    (1, 2, 9, 8, 3, 3, 2, 1),
    (2, 3, 6, 7, 2, 2, 2, 0),
    (1, 4, 5, 5, 5, 1, 1, 0),
    (1, 2, 8, 6, 3, 5, 3, 2),
]


@pytest.mark.parametrize("case", CONV_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_conv_forward_backward(ops, case, dtype, rng):
    N, C, H, Wd, F, k, s, p = case
    x = rng.standard_normal((N, C, H, Wd)).astype(dtype)
    W = rng.standard_normal((F, C, k, k)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    y, cache = ops.conv2d_forward(x, W, b, s, p, {})
    assert y.dtype == dtype and y.flags.c_contiguous
    assert rel_err(y, conv_ref(x, W, b, s, p)) < tol(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = ops.conv2d_backward(dy, cache, True)
    rdx, rdW, rdb = conv_backward_ref(dy, x, W, s, p)
    assert rel_err(dx, rdx) < tol(dtype)
    assert rel_err(dW, rdW) < tol(dtype)
    assert rel_err(db, rdb) < tol(dtype)
    dx2, none_w, none_b = ops.conv2d_backward(dy, cache, False)
    assert none_w is None and none_b is None
    np.testing.assert_array_equal(dx2, dx)


def test_kernel_conv_fused_bias_relu(ops, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    W = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    y, _ = ops.conv2d_forward(x, W, b, 1, 1, {})
    yr, _ = ops.conv2d_relu_forward(x, W, b, 1, 1, {})
    np.testing.assert_array_equal(yr, np.where(y > 0, y, 0))


def test_kernel_im2col_col2im_adjoint(rng):
    """<im2col(x), c> == <x, col2im(c)>: col2im is exactly im2col's transpose."""
    ops = get_ops("emulated", threads=3, max_blocks=5)
    x = rng.standard_normal((2, 3, 7, 5))
    cols = ops._im2col(x, 3, 3, 2, 1, 4, 3)
    c = rng.standard_normal(cols.shape)
    k = ops.kernel("conv", "col2im", np.float64, KH=3, KW=3, STRIDE=2, PAD=1)
    dx = np.empty_like(x)
    i32 = np.int32
    ops.launch(k, dx.size, c, dx, i32(2), i32(3), i32(7), i32(5), i32(4), i32(3))
    assert abs(np.vdot(cols, c) - np.vdot(x, dx)) < 1e-10 * abs(np.vdot(cols, c))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_relu(ops, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(dtype)
    x[0, 0, 0, :2] = 0
    y = ops.relu_forward(x)
    np.testing.assert_array_equal(y, np.where(x > 0, x, 0))
    dy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(ops.relu_backward(dy, y), np.where(y > 0, dy, 0))
    assert x.size > TINY_GRID


POOL_CASES = [(2, 2), (3, 2), (2, 1), (3, 3)]  # (k, s): VGG's, overlapping, dense, ragged


@pytest.mark.parametrize("k, s", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_avg_pool(ops, k, s, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(dtype)
    y = ops.avg_pool2d_forward(x, k, s)
    assert rel_err(y, pool_windows(x.astype(np.float64), k, s).mean(axis=-1)) < tol(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.avg_pool2d_backward(dy, x.shape, k, s)
    assert dx.shape == x.shape
    assert rel_err(dx, avg_pool_backward_ref(dy.astype(np.float64), x.shape, k, s)) < tol(dtype)


@pytest.mark.parametrize("k, s", POOL_CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_max_pool(ops, k, s, dtype, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(dtype)
    x[0, 0, :2, :2] = 1.5  # a tie: the first maximum (row-major) must win, as in torch
    y, cache = ops.max_pool2d_forward(x, k, s)
    np.testing.assert_array_equal(y, pool_windows(x, k, s).max(axis=-1))
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = ops.max_pool2d_backward(dy, cache)
    assert rel_err(dx, max_pool_backward_ref(dy.astype(np.float64), x, k, s)) < tol(dtype)


def test_kernel_max_pool_nan_wins_like_torch():
    ops = get_ops("emulated", threads=4, max_blocks=1)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    x[0, 0, 1, 0] = np.nan
    y, (arg, *_) = ops.max_pool2d_forward(x, 2, 2)
    assert np.isnan(y[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 2
    assert y[0, 0, 1, 1] == 15


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_linear(ops, dtype, rng):
    x = rng.standard_normal((3, 10)).astype(dtype)
    W = rng.standard_normal((7, 10)).astype(dtype)
    b = rng.standard_normal(7).astype(dtype)
    y = ops.linear_forward(x, W, b)
    assert rel_err(y, x.astype(np.float64) @ W.T + b) < tol(dtype)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx, dW, db = ops.linear_backward(dy, x, W, True)
    assert rel_err(dx, dy.astype(np.float64) @ W) < tol(dtype)
    assert rel_err(dW, dy.T.astype(np.float64) @ x) < tol(dtype)
    assert rel_err(db, dy.sum(axis=0)) < tol(dtype)


def test_kernel_grid_wraps():
    """The small configurations really launch fewer threads than elements."""
    ops = get_ops("emulated", **CONFIGS["wrapping"])
    (blocks,), (threads,) = ops.grid(2 * 3 * 7 * 5)
    assert blocks * threads == TINY_GRID < 2 * 3 * 7 * 5
    (blocks,), (threads,) = get_ops("emulated").grid(10**9)
    assert (blocks, threads) == (4096, 256)


def test_kernel_results_independent_of_grid(rng):
    """Bit-identical results for every grid and order: no thread reads what another writes."""
    x = rng.standard_normal((2, 3, 11, 9)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    outs = []
    for cfg in [dict(threads=1, max_blocks=1), dict(threads=32, max_blocks=1000), dict(threads=3, max_blocks=7, reverse=True)]:
        o = get_ops("emulated", **cfg)
        y, cache = o.conv2d_forward(x, W, b, 1, 1, {})
        p, pc = o.max_pool2d_forward(o.relu_forward(y), 2, 2)
        dx, _, _ = o.conv2d_backward(o.max_pool2d_backward(p, pc), cache, False)
        outs.append((y, p, dx))
    for y, p, dx in outs[1:]:
        np.testing.assert_array_equal(y, outs[0][0])
        np.testing.assert_array_equal(p, outs[0][1])
        np.testing.assert_array_equal(dx, outs[0][2])


def test_kernel_conv_in_chunks_of_images(rng, monkeypatch):
    """A small im2col budget splits the batch into chunks (as large batches do on a GPU): same result."""
    from minivgg.gpu import ops as ops_module

    o = get_ops("emulated", threads=7, max_blocks=3)
    x = rng.standard_normal((3, 2, 7, 5))
    W = rng.standard_normal((4, 2, 3, 3))
    b = rng.standard_normal(4)
    y, cache = o.conv2d_forward(x, W, b, 1, 1, {})
    dy = rng.standard_normal(y.shape)
    grads = o.conv2d_backward(dy, cache, True)
    monkeypatch.setattr(ops_module, "COL_BUDGET", 2 * 9 * 35)  # one image per chunk
    assert len(o._chunks(3, 2 * 9 * 35)) == 3
    y2, cache2 = o.conv2d_forward(x, W, b, 1, 1, {})
    np.testing.assert_allclose(y2, y, rtol=1e-13)
    for a, r in zip(o.conv2d_backward(dy, cache2, True), grads):
        np.testing.assert_allclose(a, r, rtol=1e-12)
