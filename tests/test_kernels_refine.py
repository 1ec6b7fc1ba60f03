"""kernels/refine.cu (max-pool near-ties recomputed exactly) run by the CPU emulation of the
CUDA grid, against numpy references from the definitions and against the CPU backend, with
the default grid, a wrapping grid and blocks run in reverse order."""

import numpy as np
import pytest

from minivgg.cpu import ops as cpu_ops
from minivgg.cpu.fast.winograd import POOL_TIE_BELOW
from minivgg.gpu import get_ops
from test_kernels_layers import CONFIGS, conv_ref


@pytest.fixture(params=list(CONFIGS))
def ops(request):
    return get_ops("emulated", **CONFIGS[request.param])


def tie_mark_ref(y, tol):
    N, C, H, W = y.shape
    flag = np.zeros(y.shape, np.int32)
    for n in range(N):
        for c in range(C):
            for i in range(0, H // 2 * 2, 2):
                for j in range(0, W // 2 * 2, 2):
                    win = y[n, c, i : i + 2, j : j + 2]
                    m = win.max()
                    close = (m - win) <= tol[n]
                    if m > 0 and close.sum() >= 2:
                        flag[n, c, i : i + 2, j : j + 2] = close
    return flag


def test_pool_tie_mark_matches_definition(ops):
    rng = np.random.default_rng(0)
    y = np.maximum(rng.standard_normal((2, 5, 7, 9)), 0).astype(np.float32)  # odd: a row and column left over
    y[0, 1, 2:4, 4:6] = 0.75  # a four-way tie
    y[1, 3, 0, 0:2] = [0.5, 0.5 - 1e-7]  # a near-tie
    y[1, 3, 1, 0:2] = [0.1, 0.2]
    y[0, 2, 6, :] = 9.0  # the odd last row has no window
    y[1, 0, 0:2, 0:2] = 0.0  # all zero: no maximum to fight over
    tol = np.array([1e-6, 1e-6], np.float32)
    flag = np.empty(y.shape, np.int32)
    ops.launch(ops.kernel("refine", "pool_tie_mark", np.float32), y.size, y, tol, flag,
               np.int32(2), np.int32(5), np.int32(7), np.int32(9))
    ref = tie_mark_ref(y, tol)
    np.testing.assert_array_equal(flag, ref)
    assert flag[0, 1, 2:4, 4:6].all() and flag[1, 3, 0, 0:2].all() and not flag[1, 3, 1, 0:2].any()
    assert not flag[0, 2, 6].any() and not flag[1, 0, 0:2, 0:2].any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv3x3_relu_exact_matches_definition(ops, dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 5, 7)).astype(dtype)
    W = rng.standard_normal((4, 6, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    exact = np.maximum(conv_ref(x, W, b, 1, 1), 0)
    y = np.full((2, 4, 5, 7), -7, dtype)
    at = np.sort(rng.choice(y.size, 40, replace=False)).astype(np.int64)
    at[:3] = [0, y.size - 1, 7 * 5 * 4]  # corners and the first element of the second image
    at = np.unique(at)
    ops.launch(ops.kernel("refine", "conv3x3_relu_exact", dtype), at.size, x, W, b, y, at, np.int64(at.size),
               np.int32(6), np.int32(4), np.int32(5), np.int32(7))
    listed = np.zeros(y.size, bool)
    listed[at] = True
    listed = listed.reshape(y.shape)
    np.testing.assert_allclose(y[listed], exact[listed], rtol=1e-6 if dtype == np.float32 else 1e-14, atol=1e-6)
    assert (y[~listed] == -7).all()  # nothing else written


def test_gpu_path_refines_pool_ties_like_the_cpu():
    """conv2d_relu_forward(pool_ties=True) through the GPU launch code: the planted near-ties
    of a mirror-symmetric input come out exact, as the CPU backend's."""
    rng = np.random.default_rng(21)
    x = np.maximum(rng.standard_normal((2, 16, 12, 14)), 0)
    x = (x + x[:, :, :, ::-1]) / 2  # columns 6 and 7 (one pooling window) are mirror images
    x[:, :, :, 7] *= 1 + 1e-6 * rng.standard_normal((2, 16, 12))
    x = x.astype(np.float32)
    W = rng.standard_normal((8, 16, 3, 3)).astype(np.float32) * 0.1
    W = ((W + W[:, :, :, ::-1]) / 2).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32) * 0.1
    exact = np.maximum(conv_ref(x, W, b, 1, 1), 0)
    gpu = get_ops("emulated", threads=7, max_blocks=3)
    y, _ = gpu.conv2d_relu_forward(x, W, b, 1, 1, {}, pool_ties=True)
    plain, _ = gpu.conv2d_relu_forward(x, W, b, 1, 1, {})
    yc, _ = cpu_ops.conv2d_relu_forward(x, W, b, 1, 1, {}, pool_ties=True)
    flag = tie_mark_ref(plain, plain.reshape(2, -1).max(axis=1) * POOL_TIE_BELOW).astype(bool)
    assert flag[..., 6:8].sum() > 50
    np.testing.assert_allclose(y[flag], exact[flag], rtol=1e-7, atol=0)
    np.testing.assert_array_equal(y[~flag], plain[~flag])
    np.testing.assert_allclose(y, yc, rtol=0, atol=2e-6 * exact.max())
