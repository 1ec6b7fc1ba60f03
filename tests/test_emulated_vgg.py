"""The whole network through the public switch ``device="emulated"``: the GPU code
path (KernelOps, the same launch code and the same kernels/*.cu) with every kernel
run by the CPU emulation, against the numpy backend and against torch; and a few
style-transfer steps through it."""

import numpy as np
import pytest

from conftest import rel_err
from minivgg import load_vgg
from minivgg.gpu import get_ops
from minivgg.gpu.ops import KernelOps
from minivgg.losses import content_loss, gram_matrix, style_loss
from minivgg.vgg import random_weights

STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
WANTED = ["conv1_1", "relu1_2", "pool1", "relu2_1", "relu3_1", "conv4_2", "relu4_2", "relu5_1", "pool5"]
SHAPE = (1, 3, 37, 45)  # odd sizes; pool5 is 1x1


def _objective_grads(feats, targets):
    grads = {"relu4_2": content_loss(feats["relu4_2"], targets["relu4_2"])[1]}
    for l in STYLE:
        g = style_loss(feats[l], targets[l])[1] * (1e3 / len(STYLE))
        grads[l] = grads[l] + g if l in grads else g
    return grads


@pytest.fixture(scope="module")
def weights():
    return {arch: random_weights(arch, seed=3) for arch in ("vgg16", "vgg19")}


def test_emulated_device_uses_the_kernel_backend(weights):
    net = load_vgg("vgg16", weights=weights["vgg16"], device="emulated")
    assert isinstance(net.ops.native, KernelOps) and net.ops.native.kind == "emulated" and net.xp is np
    assert net.ops.conv2d_forward.__self__ is net.ops.native  # the kernels, not the reference
    assert set(net.backend.fallbacks) == {"layer_weights", "compact_mask", "relu_conv2d_backward"}
    assert net.device == "emulated"


@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_emulated_vgg_matches_numpy_backend(weights, arch, pooling):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal(SHAPE) * 40).astype(np.float32)
    out = {}
    for device in ("cpu", "emulated"):
        net = load_vgg(arch, weights=weights[arch], pooling=pooling, device=device)
        feats = net.forward(x, WANTED)
        dy = {l: np.random.default_rng(2).standard_normal(feats[l].shape).astype(np.float32) for l in ("relu3_1", "pool5")}
        out[device] = feats, net.backward(dy)
    for l in WANTED:
        assert rel_err(out["emulated"][0][l], out["cpu"][0][l]) < 1e-5, l
    assert rel_err(out["emulated"][1], out["cpu"][1]) < 1e-5


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize(
    "pooling, dtype, bound",
    # max pooling's gradient is compared in float64 too: see tests/test_vgg.py on near-ties.
    # float32 is compared with torch float64, torch float32 the yardstick
    # (helpers_torch.assert_float32_as_good_as_torch, derived in test_net_matches_torch)
    [("avg", np.float32, 1e-4), ("max", np.float32, 1e-4), ("max", np.float64, 1e-10)],
)
def test_emulated_vgg_matches_torch(weights, arch, pooling, dtype, bound):
    torch = pytest.importorskip("torch")
    from helpers_torch import assert_float32_as_good_as_torch, torch_gatys_objective, torch_reference

    params = weights[arch]
    net = load_vgg(arch, weights=params, pooling=pooling, device="emulated")
    rng = np.random.default_rng(5)
    x = (rng.standard_normal(SHAPE) * 50).astype(dtype)
    t = (rng.standard_normal(SHAPE) * 50).astype(dtype)
    wanted = sorted(set(WANTED + STYLE), key=net.layer_names.index)
    tfeat = net.forward(t, wanted)
    targets = {l: tfeat[l] if l == "relu4_2" else gram_matrix(tfeat[l])[0] for l in wanted}
    feats = net.forward(x, wanted)
    dx = net.backward(_objective_grads(feats, targets))

    objective = torch_gatys_objective(targets, STYLE)
    f64, g64 = torch_reference(arch, params, pooling, x, wanted, objective, torch.float64)
    if dtype == np.float64:
        for l in wanted:
            assert rel_err(feats[l], f64[l]) < bound, l
        assert rel_err(dx, g64) < bound
        return
    f32, g32 = torch_reference(arch, params, pooling, x, wanted, objective, torch.float32)
    for l in wanted:
        assert_float32_as_good_as_torch(feats[l], f32[l], f64[l], 1e-5, what=l)
    assert_float32_as_good_as_torch(dx, g32, g64, bound, what="input gradient")


@pytest.mark.torch
def test_emulated_vgg_batch_and_wrapping_grid_match_torch(weights):
    """A batch of two, an odd size, and a launch grid of 5 x 3 threads for the whole net;
    float32 against torch float64, torch float32 the yardstick (test_vgg.py)."""
    torch = pytest.importorskip("torch")
    from helpers_torch import assert_float32_as_good_as_torch, torch_reference

    net = load_vgg("vgg16", weights=weights["vgg16"], pooling="avg", device="emulated")
    from minivgg.backend import make_backend

    tiny = make_backend("emulated", get_ops("emulated", threads=5, max_blocks=3, reverse=True))
    for layer in net.layers.values():  # swap in a tiny-grid backend
        layer.ops = tiny.ops
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((2, 3, 35, 41)) * 30).astype(np.float32)
    feats = net.forward(x, ["relu3_3", "pool5"])
    dy = rng.standard_normal(feats["pool5"].shape).astype(np.float32)
    dx = net.backward({"pool5": dy})
    objective = lambda tf: (tf["pool5"] * torch.from_numpy(dy).to(tf["pool5"].dtype)).sum()  # noqa: E731
    ref = {dt: torch_reference("vgg16", weights["vgg16"], "avg", x, ["relu3_3", "pool5"], objective, dt)
           for dt in (torch.float32, torch.float64)}
    (f32, g32), (f64, g64) = ref[torch.float32], ref[torch.float64]
    assert_float32_as_good_as_torch(feats["relu3_3"], f32["relu3_3"], f64["relu3_3"], 1e-5, what="relu3_3")
    assert_float32_as_good_as_torch(dx, g32, g64, 1e-4, what="input gradient")


def _style_steps(net, ops, content, style, steps):
    """Gatys style transfer, Adam on the image; losses and update from ``ops``."""
    layers = ["relu4_2"] + STYLE
    P = net.forward(content, ["relu4_2"])["relu4_2"]
    sf = net.forward(style, STYLE)
    A = {l: ops.gram_matrix(sf[l])[0] for l in STYLE}
    x = np.random.default_rng(0).standard_normal(content.shape).astype(np.float32) * 10
    m, v = np.zeros_like(x), np.zeros_like(x)
    history = []
    for k in range(1, steps + 1):
        feats = net.forward(x, layers)
        lc, grads = ops.content_loss(feats["relu4_2"], P)
        total = lc
        grads = {"relu4_2": grads}
        for l in STYLE:
            ls, g = ops.style_loss(feats[l], A[l])
            total += 1e3 / len(STYLE) * ls
            g = g * np.float32(1e3 / len(STYLE))
            grads[l] = grads[l] + g if l in grads else g
        tv, gtv = ops.total_variation(x, 2.0)
        total += 1e-3 * tv
        dx = net.backward(grads) + gtv * np.float32(1e-3)
        history.append(total)
        ops.adam_update(x, dx, m, v, k, 1.0)
    return x, history


class _NumpyOps:
    """The same steps with minivgg/losses.py and minivgg/optim.py's Adam arithmetic."""

    from minivgg import losses as _l

    content_loss = staticmethod(_l.content_loss)
    style_loss = staticmethod(_l.style_loss)
    gram_matrix = staticmethod(_l.gram_matrix)
    total_variation = staticmethod(_l.total_variation)

    def adam_update(self, x, g, m, v, k, lr, b1=0.9, b2=0.999, eps=1e-8):
        from minivgg.optim import Adam

        opt = Adam(lr=lr, betas=(b1, b2), eps=eps)
        opt.m, opt.v = m, v
        x[...] = opt._step(x, g, k)
        m[...], v[...] = opt.m, opt.v


def test_emulated_style_transfer_steps_match_numpy_backend(weights):
    rng = np.random.default_rng(4)
    shape = (1, 3, 20, 28)  # relu5_1 is 1x1
    content = (rng.standard_normal(shape) * 40).astype(np.float32)
    style = (rng.standard_normal(shape) * 40).astype(np.float32)
    emu = load_vgg("vgg19", weights=weights["vgg19"], pooling="avg", device="emulated")
    cpu = load_vgg("vgg19", weights=weights["vgg19"], pooling="avg", device="cpu")
    xe, he = _style_steps(emu, emu.ops, content, style, 4)
    xc, hc = _style_steps(cpu, _NumpyOps(), content, style, 4)
    assert he[-1] < he[0]  # the loss goes down
    np.testing.assert_allclose(he, hc, rtol=1e-4)
    assert rel_err(xe, xc) < 1e-4


def test_emulated_style_transfer_method(weights, monkeypatch):
    """minivgg.methods.style.style_transfer runs on the emulated device like on the CPU:
    the same losses, the same gradient at every step, the same image.

    Adam divides each pixel's step by that pixel's own gradient size, so a pixel whose
    first gradient is ~1e-5 of the largest (here one of 1680: the style, 24x24, is
    rescaled to the result's 20x28 positions) turns a float32 rounding difference into a
    visible step difference. The image is compared where the first gradient is not
    that small; the gradients themselves are compared everywhere."""
    from minivgg.methods.style import style_transfer

    rng = np.random.default_rng(6)
    content = rng.integers(0, 256, (20, 28, 3), dtype=np.uint8)
    style = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    res, grads = {}, {}
    for device in ("cpu", "emulated"):
        net = load_vgg("vgg16", weights=weights["vgg16"], device=device)
        seen, update = [], net.ops.adam_update

        def recording(x, g, *a, _seen=seen, _update=update, **k):
            _seen.append(np.array(g))
            return _update(x, g, *a, **k)

        monkeypatch.setattr(net.ops, "adam_update", recording)  # the op tables are shared: put it back
        res[device] = style_transfer(net, content, style, optimizer="adam", iters=3, seed=1)
        grads[device] = seen
    he = [r["total"] for r in res["emulated"].history]
    hc = [r["total"] for r in res["cpu"].history]
    np.testing.assert_allclose(he, hc, rtol=1e-4)
    assert len(grads["cpu"]) == len(grads["emulated"]) == 3
    for ge, gc in zip(grads["emulated"], grads["cpu"]):
        assert rel_err(ge, gc) < 1e-4
    g0 = np.abs(grads["cpu"][0])
    steady = g0 >= 1e-4 * g0.max()
    assert steady.mean() > 0.99
    xe, xc = res["emulated"].x, res["cpu"].x
    assert np.abs(xe - xc)[steady].max() / np.abs(xc).max() < 1e-4
    assert np.linalg.norm(xe - xc) / np.linalg.norm(xc) < 1e-4


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_methods_take_losses_and_updates_from_the_kernels(weights, optimizer, monkeypatch):
    """On the emulated device the objective's losses and the optimizer's update are the
    kernels (KernelOps), not minivgg/losses.py or array expressions, and give the same run."""
    from minivgg.methods.style import style_transfer

    rng = np.random.default_rng(9)
    content = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    style = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    calls = {}

    def spy(name):
        real = getattr(KernelOps, name)

        def wrapped(self, *a, **k):
            calls[name] = calls.get(name, 0) + 1
            return real(self, *a, **k)

        monkeypatch.setattr(KernelOps, name, wrapped)

    update = "adam_update" if optimizer == "adam" else "sgd_update"
    for name in ("content_loss", "style_loss", "total_variation", update):
        spy(name)
    res = {}
    for device in ("cpu", "emulated"):
        net = load_vgg("vgg16", weights=weights["vgg16"], device=device)
        res[device] = style_transfer(net, content, style, optimizer=optimizer, iters=3, seed=2)
    assert calls["content_loss"] >= 4 and calls["style_loss"] >= 4 * 5 and calls["total_variation"] >= 4
    assert calls[update] == 3
    he = [r["total"] for r in res["emulated"].history]
    hc = [r["total"] for r in res["cpu"].history]
    assert len(he) == 4 and he[-1] < he[0]
    np.testing.assert_allclose(he, hc, rtol=1e-4)
    assert rel_err(res["emulated"].x, res["cpu"].x) < 1e-4


@pytest.mark.torch
def test_emulated_max_pool_gradient_with_a_near_tie_matches_float64():
    """With max pooling, a 2x2 window whose two largest outputs differ by less than the
    float32 error sends its gradient to a unit chosen by rounding. At this size and seed
    pool1 has such a window (it moved the input gradient by 1e-2 before the GPU path
    recomputed near-ties exactly, kernels/refine.cu); now the gradient matches float64."""
    torch = pytest.importorskip("torch")
    from helpers_torch import torch_forward, torch_vgg

    params = random_weights("vgg16", seed=1)
    net = load_vgg("vgg16", weights=params, pooling="max", device="emulated")
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]
    x = (np.random.default_rng(100).standard_normal((1, 3, 100, 100)) * 40).astype(np.float32)
    feats = net.forward(x, layers)
    dx = net.backward({l: feats[l] * np.float32(1e-6) for l in layers})
    xt = torch.from_numpy(x).double().requires_grad_(True)
    tf = torch_forward(torch_vgg("vgg16", params, "max", dtype=torch.float64), xt, set(layers))
    (gt,) = torch.autograd.grad(sum(0.5e-6 * (tf[l] ** 2).sum() for l in layers), xt)
    gt = gt.numpy()
    assert np.abs(dx - gt).max() / np.abs(gt).max() < 1e-5
