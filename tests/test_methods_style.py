"""Style transfer: the objective and its optimization against a PyTorch reference
written here (same weights, same images, torch autograd), step by step; and the
method's options (init, several styles, scales, original colours)."""

import numpy as np
import pytest

from minivgg import MiniVGGError, load_vgg
from minivgg.image import rgb_to_yiq, resize, sample_image
from minivgg.methods import Objective, style_transfer
from minivgg.methods.style import style_targets
from minivgg.vgg import random_weights

SIZE = (32, 32)
CONTENT_LAYERS = ["relu4_2"]
STYLE_LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]


@pytest.fixture(scope="module")
def params():
    p = random_weights("vgg19", seed=7)
    rng = np.random.default_rng(8)
    return {k: (W, (rng.standard_normal(b.shape) * 0.1).astype(np.float32)) for k, (W, b) in p.items()}


@pytest.fixture(scope="module")
def net(params):
    return load_vgg("vgg19", weights=params, pooling="avg")


@pytest.fixture(scope="module")
def images():
    content = resize(sample_image("chelsea"), SIZE)
    style1 = resize(sample_image("immunohistochemistry"), SIZE)
    style2 = resize(sample_image("coffee"), SIZE)
    return content, [style1, style2]


def torch_objective(torch, mods, content_x, style_xs, blend, cw, sw, tvw, wl, norm="paper", pixel=1.0):
    """The objective written directly in torch: returns f(x) -> scalar tensor. norm "paper":
    Gatys' eq. 1 and the plain TV sum; "mean": each content term divided by its N M entries
    and TV by H W pixel^2 (``pixel``: one pixel level in input units)."""
    from helpers_torch import torch_forward

    layers = set(CONTENT_LAYERS) | set(STYLE_LAYERS)
    with torch.no_grad():
        P = torch_forward(mods, content_x, layers)
        A = {l: 0 for l in STYLE_LAYERS}
        for sx, b in zip(style_xs, blend):
            Fs = torch_forward(mods, sx, layers)
            for l in STYLE_LAYERS:
                F = Fs[l][0].reshape(Fs[l].shape[1], -1)
                A[l] = A[l] + b * (F @ F.T)

    def f(x):
        feats = torch_forward(mods, x, layers)
        Lc = sum(0.5 * ((feats[l] - P[l]) ** 2).sum() / (P[l].numel() if norm == "mean" else 1)
                 for l in CONTENT_LAYERS)
        Ls = 0
        for l, w in zip(STYLE_LAYERS, wl):
            F = feats[l][0].reshape(feats[l].shape[1], -1)
            N, M = F.shape
            Ls = Ls + w * ((F @ F.T - A[l]) ** 2).sum() / (4.0 * N * N * M * M)
        tv = ((x[..., :-1, 1:] - x[..., :-1, :-1]) ** 2 + (x[..., 1:, :-1] - x[..., :-1, :-1]) ** 2).sum()
        if norm == "mean":
            tv = tv / (x.shape[2] * x.shape[3] * pixel**2)
        return cw * Lc + sw * Ls + tvw * tv

    return f


def reference_setup(net, params, images):
    torch = pytest.importorskip("torch")
    from helpers_torch import torch_vgg

    content, styles = images
    mods = torch_vgg("vgg19", params, "avg")
    cx = torch.from_numpy(np.asarray(net.preprocess(content)))
    sxs = [torch.from_numpy(np.asarray(net.preprocess(s))) for s in styles]
    return torch, mods, cx, sxs


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["paper", "mean"])
def test_adam_steps_match_torch(net, params, images, norm):
    """Every logged total of 5 Adam steps from the content image equals torch's, in both
    forms of the objective (paper: equal w_l as the paper; mean: the default w_l ~ 1/N_l^2)."""
    torch, mods, cx, sxs = reference_setup(net, params, images)
    blend = [0.25, 0.75]
    cw, sw, tvw = (1.0, 1e4, 1e-3) if norm == "paper" else (1.0, 1e-2, 1e-3)
    wl = [0.2] * 5 if norm == "paper" else [w / sum(1 / n**2 for n in (64, 128, 256, 512, 512)) for w in
                                             (1 / 64**2, 1 / 128**2, 1 / 256**2, 1 / 512**2, 1 / 512**2)]
    if norm == "mean":  # TV in the content term's units: kappa = mean(P^2) / mean(x_c^2) (one pixel level = 1 here)
        from helpers_torch import torch_forward

        with torch.no_grad():
            P = torch_forward(mods, cx, set(CONTENT_LAYERS))
            kappa = float(np.mean([float((P[l].double() ** 2).mean()) for l in CONTENT_LAYERS])) / float(
                (cx.double() ** 2).mean())
        f = torch_objective(torch, mods, cx, sxs, blend, cw, sw, tvw * kappa, wl, norm=norm)
    else:
        f = torch_objective(torch, mods, cx, sxs, blend, cw, sw, tvw, wl, norm=norm)
    content, styles = images
    r = style_transfer(net, content, styles, style_blend=[1, 3], content_weight=cw, style_weight=sw,
                       tv_weight=tvw, init="content", optimizer="adam", lr=2.0, iters=5, loss_norm=norm,
                       style_layer_weights="equal" if norm == "paper" else None, stretch_style=True)
    x = cx.clone().requires_grad_(True)
    opt = torch.optim.Adam([x], lr=2.0)
    ref = []
    for _ in range(6):
        opt.zero_grad()
        loss = f(x)
        ref.append(float(loss.detach()))
        loss.backward()
        opt.step()
    ours = [row["total"] for row in r.history]
    assert [row["iter"] for row in r.history] == list(range(6))
    np.testing.assert_allclose(ours, ref, rtol=1e-4)
    assert ours[-1] < ours[0]


@pytest.mark.torch
def test_lbfgs_steps_match_torch(net, params, images):
    """L-BFGS (no line search, lr 1) against torch.optim.LBFGS on the same objective."""
    torch, mods, cx, sxs = reference_setup(net, params, images)
    content, styles = images
    f = torch_objective(torch, mods, cx, sxs[:1], [1.0], 1.0, 1e3, 1e-3, [0.2] * 5)
    iters = 3
    r = style_transfer(net, content, styles[:1], content_weight=1.0, style_weight=1e3, tv_weight=1e-3,
                       init="content", optimizer="lbfgs", iters=iters, optim_options={"line_search": "none"},
                       loss_norm="paper", style_layer_weights="equal")
    ref = []
    for k in range(iters + 1):
        x = cx.clone().requires_grad_(True)
        if k:
            opt = torch.optim.LBFGS([x], lr=1, max_iter=k, max_eval=10 * k, history_size=100)

            def closure():
                opt.zero_grad()
                loss = f(x)
                loss.backward()
                return loss

            opt.step(closure)
        with torch.no_grad():
            ref.append(float(f(x)))
    np.testing.assert_allclose([row["total"] for row in r.history], ref, rtol=1e-3)


@pytest.mark.torch
@pytest.mark.parametrize("norm", ["paper", "mean"])
def test_objective_value_and_gradient_match_torch(net, params, images, norm):
    torch, mods, cx, sxs = reference_setup(net, params, images)
    content, styles = images
    f = torch_objective(torch, mods, cx, sxs, [0.5, 0.5], 2.0, 1e4, 1e-2, [0.2] * 5, norm=norm)
    A = style_targets(net, styles, [0.5, 0.5], STYLE_LAYERS, SIZE)
    P = net.forward(net.preprocess(content), CONTENT_LAYERS)
    P = {k: v.copy() for k, v in P.items()}
    obj = Objective(net, content=P, style={l: (A[l], 0.2) for l in STYLE_LAYERS}, content_weight=2.0,
                    style_weight=1e4, tv_weight=1e-2, loss_norm=norm)
    x0 = net.preprocess(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    total, grad, info = obj(x0)
    xt = torch.from_numpy(np.asarray(x0)).requires_grad_(True)
    loss = f(xt)
    loss.backward()
    assert total == pytest.approx(float(loss.detach()), rel=1e-5)
    g_ref = xt.grad.numpy()
    assert np.abs(grad - g_ref).max() <= 1e-4 * np.abs(g_ref).max()
    assert set(info) >= {"content", "style", "tv"}


def test_reduces_objective_from_noise(net, images):
    content, styles = images
    r = style_transfer(net, content, styles[:1], iters=4, optim_options={"line_search": "strong_wolfe"})
    totals = [row["total"] for row in r.history]
    assert len(totals) == 5 and all(b <= a for a, b in zip(totals, totals[1:])) and totals[-1] < totals[0]
    assert r.image.shape == content.shape and r.image.dtype == np.uint8


def test_init_content_is_exactly_preprocessed_content(net, images):
    content, styles = images
    seen = []
    style_transfer(net, content, styles[:1], init="content", iters=0, callback=seen.append)
    assert np.array_equal(seen[0]["x"], net.preprocess(content))
    assert seen[0]["content"] == 0.0


def test_same_seed_same_result(net, images):
    content, styles = images
    a = style_transfer(net, content, styles[:1], iters=2, seed=3)
    b = style_transfer(net, content, styles[:1], iters=2, seed=3)
    c = style_transfer(net, content, styles[:1], iters=0, seed=4)
    assert np.array_equal(a.image, b.image) and a.history[-1]["total"] == b.history[-1]["total"]
    assert a.history[0]["total"] != c.history[0]["total"]


def test_style_resized_keeping_aspect_or_stretched(net, images, monkeypatch):
    """Each style keeps its aspect, longest side = content's longest x scale; stretch_style:
    the content's (height, width) x scale."""
    import minivgg.methods.style as style_mod

    content, styles = images
    shapes = []
    real = style_mod.style_targets

    def spy(net_, imgs, blend, layers, shape, **kw):
        shapes.append(shape)
        return real(net_, imgs, blend, layers, shape, **kw)

    monkeypatch.setattr(style_mod, "style_targets", spy)
    big_style = resize(styles[0], (50, 70))
    style_transfer(net, content, [big_style], iters=0, style_scale=1.5)
    style_transfer(net, content, [big_style, styles[1]], iters=0, style_scale=1.5, stretch_style=True)
    assert shapes == [[(34, 48)], [(48, 48), (48, 48)]]
    same = styles[0]
    assert resize(same, SIZE) is same  # an image of the requested size is not resampled


def test_scales_coarse_to_fine(net, images):
    content, styles = images
    r = style_transfer(net, content, styles[:1], scales=[24, 32], iters=2, init="content")
    assert r.image.shape == (32, 32, 3)
    assert [row["scale"] for row in r.history] == [24, 24, 24, 32, 32, 32]
    assert [row["iter"] for row in r.history] == [0, 1, 2, 2, 3, 4]


def test_original_colors_keep_content_chrominance(net, images):
    content, styles = images
    r = style_transfer(net, content, styles[:1], iters=1, original_colors=True)
    plain = net.deprocess(r.x)
    yiq_r, yiq_c, yiq_p = rgb_to_yiq(r.image), rgb_to_yiq(content), rgb_to_yiq(plain)
    # luminance from the result, colour from the content (up to uint8 rounding and clipping)
    assert np.median(np.abs(yiq_r[..., 0] - yiq_p[..., 0])) < 2
    assert np.median(np.abs(yiq_r[..., 1:] - yiq_c[..., 1:])) < 2


def test_bad_arguments(net, images):
    content, styles = images
    with pytest.raises(MiniVGGError, match="valid layers"):
        style_transfer(net, content, styles, style_layers=["relu1_1", "nope"], iters=0)
    with pytest.raises(MiniVGGError):
        style_transfer(net, content, styles, style_blend=[1.0], iters=0)
    with pytest.raises(MiniVGGError):
        style_transfer(net, content, [], iters=0)
    with pytest.raises(MiniVGGError):
        style_transfer(net, content, styles, size=0, iters=0)
    with pytest.raises(MiniVGGError, match="GiB"):
        style_transfer(net, content, styles, size=200000, iters=0)
    with pytest.raises(MiniVGGError):
        style_transfer(net, content, styles, init="sky", iters=0)
