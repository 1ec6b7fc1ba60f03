"""Every loss and its gradient against torch autograd (float32) and finite differences (float64)."""

import numpy as np
import pytest

from conftest import numeric_grad, rel_err
from minivgg.losses import alpha_norm, content_loss, gram_matrix, style_loss, style_loss_deferred, total_variation


def _torch_value_and_grad(fn, x):
    torch = pytest.importorskip("torch")
    xt = torch.from_numpy(x.copy()).requires_grad_(True)
    v = fn(xt)
    (g,) = torch.autograd.grad(v, xt)
    return float(v.detach()), g.numpy()


def _torch_tv(xt, beta):
    dh = xt[..., :-1, 1:] - xt[..., :-1, :-1]
    dv = xt[..., 1:, :-1] - xt[..., :-1, :-1]
    return ((dh**2 + dv**2) ** (beta / 2)).sum()


def _torch_style(xt, A):
    F = xt.reshape(xt.shape[0], xt.shape[1], -1)
    N, M = F.shape[1], F.shape[2]
    G = F @ F.transpose(1, 2)
    import torch

    return ((G - torch.from_numpy(A)) ** 2).sum() / (4 * N**2 * M**2)


@pytest.mark.torch
def test_content_loss_matches_torch(rng):
    F = rng.standard_normal((1, 4, 5, 6)).astype(np.float32)
    P = rng.standard_normal(F.shape).astype(np.float32)
    v, g = content_loss(F, P)
    tv, tg = _torch_value_and_grad(lambda t: 0.5 * ((t - __import__("torch").from_numpy(P)) ** 2).sum(), F)
    assert abs(v - tv) <= 1e-5 * abs(tv)
    assert rel_err(g, tg) <= 1e-5


@pytest.mark.torch
@pytest.mark.parametrize("N", [1, 2])
def test_gram_and_style_loss_match_torch(N, rng):
    import torch

    F = np.maximum(rng.standard_normal((N, 6, 5, 7)), 0).astype(np.float32)
    A = gram_matrix(np.maximum(rng.standard_normal((1, 6, 5, 7)), 0).astype(np.float32))[0]
    G = gram_matrix(F)
    Ft = torch.from_numpy(F).reshape(N, 6, -1)
    assert rel_err(G, (Ft @ Ft.transpose(1, 2)).numpy()) <= 1e-6
    v, g = style_loss(F, A)
    tv, tg = _torch_value_and_grad(lambda t: _torch_style(t, A), F)
    assert abs(v - tv) <= 1e-5 * abs(tv)
    assert rel_err(g, tg) <= 1e-5


@pytest.mark.torch
@pytest.mark.parametrize("beta", [2.0, 1.5, 3.0])
def test_total_variation_matches_torch(beta, rng):
    x = rng.standard_normal((1, 3, 7, 9)).astype(np.float32)
    v, g = total_variation(x, beta)
    tv, tg = _torch_value_and_grad(lambda t: _torch_tv(t, beta), x)
    assert abs(v - tv) <= 1e-5 * abs(tv)
    assert rel_err(g, tg) <= 1e-5


@pytest.mark.torch
@pytest.mark.parametrize("alpha", [2.0, 6.0])
def test_alpha_norm_matches_torch(alpha, rng):
    x = rng.standard_normal((1, 3, 5, 4)).astype(np.float32)
    v, g = alpha_norm(x, alpha)
    tv, tg = _torch_value_and_grad(lambda t: (t.abs() ** alpha).sum(), x)
    assert abs(v - tv) <= 1e-5 * abs(tv)
    assert rel_err(g, tg) <= 1e-5


@pytest.mark.parametrize(
    "name, fn",
    [
        ("content", lambda x, P, A: content_loss(x, P)),
        ("style", lambda x, P, A: style_loss(x, A)),
        ("tv2", lambda x, P, A: total_variation(x, 2.0)),
        ("tv1.5", lambda x, P, A: total_variation(x, 1.5)),
        ("alpha6", lambda x, P, A: alpha_norm(x, 6.0)),
    ],
)
def test_losses_finite_differences(name, fn, rng):
    x = rng.standard_normal((2, 3, 4, 5))
    P = rng.standard_normal(x.shape)
    A = gram_matrix(rng.standard_normal((1, 3, 4, 5)))[0]
    v, g = fn(x, P, A)
    num = numeric_grad(lambda z: fn(z, P, A)[0], x)
    assert rel_err(g, num) < 1e-6


def test_tv_definition_on_a_tiny_image():
    """Only pixels with both a right and a lower neighbour contribute."""
    x = np.array([[[[0.0, 1.0, 3.0], [2.0, 0.0, 0.0]]]])
    # pixel (0,0): dh = 1, dv = 2 -> 5 ; pixel (0,1): dh = 2, dv = -1 -> 5
    v, _ = total_variation(x, 2.0)
    assert v == 10.0
    v1, _ = total_variation(x, 1.0)
    assert abs(v1 - 2 * np.sqrt(5.0)) < 1e-12


@pytest.mark.parametrize("N", [1, 2])
def test_deferred_style_gradient(N, rng):
    """style_loss_deferred: the same value, weight * the gradient when called, and add_to
    adds it into a given array in place (float32, within rounding of the sum); fits / add_to
    refuse arrays of another shape or layout."""
    F = np.maximum(rng.standard_normal((N, 16, 30, 70)), 0).astype(np.float32)
    A = gram_matrix(np.maximum(rng.standard_normal((1, 16, 30, 70)), 0).astype(np.float32))[0]
    v, g = style_loss(F, A)
    vd, make = style_loss_deferred(F, A, 2.5)
    assert vd == v
    assert rel_err(make(), 2.5 * g.astype(np.float64)) <= 1e-6
    with pytest.raises(RuntimeError, match="made already"):  # made once: F is let go
        make()
    assert make.Fm is None
    base = rng.standard_normal(F.shape).astype(np.float32)
    out = base.copy()
    make = style_loss_deferred(F, A, 2.5)[1]
    for bad in (base[..., :-1].copy(), np.asfortranarray(base), base.astype(np.float64), None):
        assert not make.fits(bad)
    with pytest.raises(ValueError, match="add_to"):
        make.add_to(base[..., :-1].copy())
    assert make.fits(out) and make.add_to(out) is out
    assert rel_err(out, base + 2.5 * g.astype(np.float64)) <= 1e-6
    assert not make.fits(base)
    with pytest.raises(RuntimeError, match="made already"):
        make.add_to(out)
