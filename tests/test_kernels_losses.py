"""The loss and optimizer kernels (kernels/losses.cu, optim.cu) run by the CPU
emulation, against minivgg/losses.py and minivgg/optim.py (numpy) and against
finite differences, with wrapping grids."""

import numpy as np
import pytest

from conftest import numeric_grad, rel_err
from minivgg import losses
from minivgg.gpu import get_ops
from minivgg.optim import SGD, Adam


@pytest.fixture(params=["default", "wrapping"])
def ops(request):
    return get_ops("emulated") if request.param == "default" else get_ops("emulated", threads=7, max_blocks=3)


def test_kernel_content_loss(ops, rng):
    F = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    P = rng.standard_normal(F.shape).astype(np.float32)
    v, g = ops.content_loss(F, P)
    rv, rg = losses.content_loss(F, P)
    assert abs(v - rv) <= 1e-6 * abs(rv)
    np.testing.assert_array_equal(g, rg)


@pytest.mark.parametrize("batch_target", [False, True])
def test_kernel_style_loss(ops, rng, batch_target):
    F = np.maximum(rng.standard_normal((2, 4, 7, 5)), 0).astype(np.float32)
    A = rng.standard_normal((2, 4, 4) if batch_target else (4, 4)).astype(np.float32)
    A = A + np.swapaxes(A, -1, -2)
    v, g = ops.style_loss(F, A)
    rv, rg = losses.style_loss(F, A)
    assert abs(v - rv) <= 1e-6 * abs(rv)
    assert g.shape == F.shape and rel_err(g, rg) < 1e-6
    np.testing.assert_allclose(ops.gram_matrix(F), losses.gram_matrix(F), rtol=1e-6)


def test_kernel_style_grad_mask(ops, rng):
    """mask=True zeroes the gradient where F < 0 (Gatys 2016 eq. 6, loss before a ReLU)."""
    F = rng.standard_normal((1, 3, 6, 5)).astype(np.float32)
    A = np.eye(3, dtype=np.float32)
    _, g = ops.style_loss(F, A)
    _, gm = ops.style_loss(F, A, mask=True)
    np.testing.assert_array_equal(gm, np.where(F < 0, 0, g))


def test_kernel_style_loss_finite_differences(rng):
    ops = get_ops("emulated", threads=4, max_blocks=2)
    F = rng.standard_normal((1, 3, 4, 3))
    A = rng.standard_normal((3, 3))
    A = A + A.T
    _, g = ops.style_loss(F, A)
    assert rel_err(g, numeric_grad(lambda f: ops.style_loss(f, A)[0], F.copy())) < 1e-7


@pytest.mark.parametrize("beta", [2.0, 1.5, 3.0])
@pytest.mark.parametrize("shape", [(2, 3, 7, 5), (1, 1, 1, 4), (3, 4, 6)])
def test_kernel_total_variation(ops, rng, beta, shape):
    x = rng.standard_normal(shape).astype(np.float32)
    v, g = ops.total_variation(x, beta)
    rv, rg = losses.total_variation(x, beta)
    assert abs(v - rv) <= 1e-5 * max(abs(rv), 1e-30)
    assert g.shape == x.shape
    if np.abs(rg).max() > 0:
        assert rel_err(g, rg) < 1e-5
    else:
        assert np.abs(g).max() == 0


@pytest.mark.parametrize("beta", [2.0, 1.5])
def test_kernel_total_variation_finite_differences(rng, beta):
    ops = get_ops("emulated", threads=3, max_blocks=2)
    x = rng.standard_normal((1, 2, 5, 4))
    _, g = ops.total_variation(x, beta)
    assert rel_err(g, numeric_grad(lambda z: ops.total_variation(z, beta)[0], x.copy())) < 1e-7


def test_kernel_alpha_norm(ops, rng):
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    x[0, 0, 0, 0] = 0
    v, g = ops.alpha_norm(x, 6.0)
    rv, rg = losses.alpha_norm(x, 6.0)
    assert abs(v - rv) <= 1e-5 * rv
    assert rel_err(g, rg) < 1e-5


def test_kernel_adam_matches_optim(ops, rng):
    x0 = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    ref = Adam(lr=0.1)
    ref._init_state(x0)
    x, rx = x0.copy(), x0.copy()
    m, v = np.zeros_like(x), np.zeros_like(x)
    for k in range(1, 6):
        g = rng.standard_normal(x.shape).astype(np.float32)
        rx = ref._step(rx, g, k)
        out = ops.adam_update(x, g, m, v, k, 0.1, ref.b1, ref.b2, ref.eps)
        assert out is x
    assert rel_err(x, rx) < 1e-6
    assert rel_err(m, ref.m) < 1e-6 and rel_err(v, ref.v) < 1e-6


def test_kernel_sgd_matches_optim(ops, rng):
    x0 = rng.standard_normal((1, 3, 7, 5)).astype(np.float32)
    ref = SGD(lr=0.05, momentum=0.9)
    ref._init_state(x0)
    x, rx, buf = x0.copy(), x0.copy(), np.zeros_like(x0)
    for k in range(1, 5):
        g = rng.standard_normal(x.shape).astype(np.float32)
        rx = ref._step(rx, g, k)
        ops.sgd_update(x, g, buf, 0.05, 0.9, first=k == 1)
    assert rel_err(x, rx) < 1e-6
