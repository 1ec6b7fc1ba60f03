"""Every layer's forward and backward against torch (float32) and finite differences (float64)."""

import numpy as np
import pytest

from conftest import numeric_grad, rel_err
from minivgg.layers import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU

CONV_CASES = [
    # N, Cin, H, W, Cout, k, stride, pad
    (2, 3, 7, 9, 5, 3, 1, 1),
    (1, 4, 13, 5, 6, 3, 1, 1),
    (2, 3, 9, 8, 4, 3, 2, 1),
    (1, 5, 6, 7, 3, 1, 1, 0),
    (2, 2, 11, 10, 3, 5, 2, 2),
    (1, 3, 8, 8, 2, 3, 3, 0),
]


def _torch_check(layer_fn, torch_fn, x, params=()):
    """Forward and backward (random upstream gradient) of ours vs torch autograd."""
    torch = pytest.importorskip("torch")
    layer = layer_fn()
    y = layer.forward(x)
    rng = np.random.default_rng(7)
    dy = rng.standard_normal(y.shape).astype(x.dtype)
    dx = layer.backward(dy, param_grads=True)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    pt = [torch.from_numpy(np.asarray(p).copy()).requires_grad_(True) for p in params]
    yt = torch_fn(xt, *pt)
    grads = torch.autograd.grad(yt, [xt, *pt], torch.from_numpy(dy))
    assert rel_err(y, yt.detach().numpy()) <= 1e-5
    assert rel_err(dx, grads[0].numpy()) <= 1e-5
    return layer, [g.numpy() for g in grads[1:]]


@pytest.mark.torch
@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_matches_torch(case, rng):
    import torch.nn.functional as tF

    N, C, H, Wd, Co, k, s, p = case
    x = rng.standard_normal((N, C, H, Wd)).astype(np.float32)
    W = rng.standard_normal((Co, C, k, k)).astype(np.float32)
    b = rng.standard_normal(Co).astype(np.float32)
    layer, (dW, db) = _torch_check(
        lambda: Conv2d(W, b, s, p), lambda xt, Wt, bt: tF.conv2d(xt, Wt, bt, stride=s, padding=p), x, (W, b)
    )
    assert rel_err(layer.dW, dW) <= 1e-5
    assert rel_err(layer.db, db) <= 1e-5


@pytest.mark.parametrize("case", [CONV_CASES[0], CONV_CASES[2], CONV_CASES[4]])
def test_conv_finite_differences(case, rng):
    N, C, H, Wd, Co, k, s, p = case
    N, C, H, Wd = 1, 2, min(H, 7), min(Wd, 6)
    x = rng.standard_normal((N, C, H, Wd))
    W = rng.standard_normal((Co, C, k, k))
    b = rng.standard_normal(Co)
    layer = Conv2d(W, b, s, p)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy, param_grads=True)
    f = lambda _: float((Conv2d(W, b, s, p).forward(x) * dy).sum())
    assert rel_err(dx, numeric_grad(f, x)) < 1e-7
    assert rel_err(layer.dW, numeric_grad(f, W)) < 1e-7
    assert rel_err(layer.db, numeric_grad(f, b)) < 1e-7


def test_conv_im2col_matches_explicit_loops(rng):
    """The GEMM formulation against the definition written as plain loops."""
    x = rng.standard_normal((2, 3, 6, 5))
    W = rng.standard_normal((4, 3, 3, 3))
    b = rng.standard_normal(4)
    s, p = 2, 1
    y = Conv2d(W, b, s, p).forward(x)
    xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))
    ref = np.zeros(y.shape)
    for n in range(2):
        for o in range(4):
            for i in range(y.shape[2]):
                for j in range(y.shape[3]):
                    ref[n, o, i, j] = b[o] + (W[o] * xp[n, :, s * i : s * i + 3, s * j : s * j + 3]).sum()
    assert rel_err(y, ref) < 1e-12


@pytest.mark.torch
def test_relu_matches_torch(rng):
    import torch

    x = rng.standard_normal((2, 3, 7, 9)).astype(np.float32)
    x[0, 0, 0, :3] = 0.0  # the kink: gradient 0 there, as torch
    _torch_check(ReLU, torch.relu, x)


def test_relu_finite_differences(rng):
    x = rng.standard_normal((1, 2, 5, 4))
    x[np.abs(x) < 1e-3] = 0.5  # keep away from the kink
    layer = ReLU()
    dy = rng.standard_normal(x.shape)
    layer.forward(x)
    dx = layer.backward(dy)
    f = lambda _: float((ReLU().forward(x) * dy).sum())
    assert rel_err(dx, numeric_grad(f, x)) < 1e-7


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 4, 8, 6), (1, 2, 5, 11), (1, 1, 2, 3)])
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_matches_torch(shape, kind, rng):
    import torch.nn.functional as tF

    x = rng.standard_normal(shape).astype(np.float32)
    if kind == "avg":
        _torch_check(lambda: AvgPool2d(2, 2), lambda t: tF.avg_pool2d(t, 2, 2), x)
    else:
        _torch_check(lambda: MaxPool2d(2, 2), lambda t: tF.max_pool2d(t, 2, 2), x)


@pytest.mark.torch
@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_general_window_matches_torch(kind, rng):
    import torch.nn.functional as tF

    x = rng.standard_normal((2, 3, 11, 10)).astype(np.float32)
    if kind == "avg":
        _torch_check(lambda: AvgPool2d(3, 2), lambda t: tF.avg_pool2d(t, 3, 2), x)
    else:
        _torch_check(lambda: MaxPool2d(3, 2), lambda t: tF.max_pool2d(t, 3, 2), x)


@pytest.mark.torch
def test_max_pool_ties_go_to_first_element_like_torch():
    import torch
    import torch.nn.functional as tF

    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, :2, :2] = 1.0  # four equal maxima in the first window
    layer = MaxPool2d(2, 2)
    layer.forward(x)
    dx = layer.backward(np.ones((1, 1, 2, 2), np.float32))
    xt = torch.from_numpy(x).requires_grad_(True)
    (gt,) = torch.autograd.grad(tF.max_pool2d(xt, 2, 2).sum(), xt)
    np.testing.assert_array_equal(dx, gt.numpy())


@pytest.mark.parametrize("kind", ["avg", "max"])
def test_pool_finite_differences(kind, rng):
    x = rng.standard_normal((1, 2, 5, 7))
    cls = AvgPool2d if kind == "avg" else MaxPool2d
    layer = cls(2, 2)
    y = layer.forward(x)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    f = lambda _: float((cls(2, 2).forward(x) * dy).sum())
    assert rel_err(dx, numeric_grad(f, x)) < 1e-7


@pytest.mark.torch
@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 3, 3)])
def test_linear_matches_torch(shape, rng):
    import torch.nn.functional as tF

    x = rng.standard_normal(shape).astype(np.float32)
    fin = int(np.prod(shape[1:]))
    W = rng.standard_normal((6, fin)).astype(np.float32)
    b = rng.standard_normal(6).astype(np.float32)
    layer, (dW, db) = _torch_check(
        lambda: Linear(W, b), lambda xt, Wt, bt: tF.linear(xt.flatten(1), Wt, bt), x, (W, b)
    )
    assert rel_err(layer.dW, dW) <= 1e-5
    assert rel_err(layer.db, db) <= 1e-5


def test_linear_finite_differences(rng):
    x = rng.standard_normal((2, 5))
    W = rng.standard_normal((3, 5))
    b = rng.standard_normal(3)
    layer = Linear(W, b)
    dy = rng.standard_normal((2, 3))
    layer.forward(x)
    dx = layer.backward(dy, param_grads=True)
    f = lambda _: float((Linear(W, b).forward(x) * dy).sum())
    assert rel_err(dx, numeric_grad(f, x)) < 1e-7
    assert rel_err(layer.dW, numeric_grad(f, W)) < 1e-7
    assert rel_err(layer.db, numeric_grad(f, b)) < 1e-7


def test_backward_before_forward_is_an_error():
    with pytest.raises(RuntimeError):
        ReLU().backward(np.zeros((1, 1, 2, 2)))
