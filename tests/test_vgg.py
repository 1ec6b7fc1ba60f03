"""The whole VGG-16/19 against torch: features at several layers and the gradient of a
Gatys objective, both poolings, odd sizes; and the Net API's contract."""

import numpy as np
import pytest

import minivgg
from conftest import rel_err
from minivgg import MiniVGGError, load_vgg
from minivgg.losses import content_loss, gram_matrix, style_loss
from minivgg.vgg import random_weights

GATYS_STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
FEATURE_LAYERS = ["conv1_1", "relu1_2", "pool1", "relu2_1", "relu3_1", "conv4_2", "relu4_2", "relu5_1", "pool5"]


def _gatys_grads(feats, targets):
    """The gradients a Gatys objective sends into each layer (content relu4_2 + style)."""
    grads = {}
    _, grads["relu4_2"] = content_loss(feats["relu4_2"], targets["relu4_2"])
    for l in GATYS_STYLE:
        _, g = style_loss(feats[l], targets[l])
        grads[l] = g / len(GATYS_STYLE) * 1e3 + grads.get(l, 0)
    return grads


@pytest.mark.torch
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
@pytest.mark.parametrize("pooling", ["avg", "max"])
def test_net_matches_torch(arch, pooling):
    """Features and the Gatys gradient in float32, against torch float64 on the same weights
    and input, torch float32 the yardstick (helpers_torch.assert_float32_as_good_as_torch).

    Why: on this 37x45 input a few ReLU pre-activations sit within float32 rounding of zero,
    and which side a float32 sum puts them on depends on its summation order, i.e. on the
    CPU. With torch's oneDNN limited to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2) its float32 gradient is
    2.9e-4 (VGG-16) / 2.7e-4 (VGG-19) from float64 with average pooling, ours 1.0e-6 /
    1.1e-6 (CPU and emulated alike): the old test, rel_err(ours, torch float32) < 1e-4, failed
    there on torch's rounding, as reported from an AVX2 machine (2.6e-4 / 2.9e-4).

    The bound, derived: with e_ours = rel_err(ours, t64), e_torch = rel_err(t32, t64) and
    B the old bound (1e-5 features, 1e-4 gradient), require

        e_ours <= max(B, 4 e_torch),  and  rel_err(ours, t32) < B  whenever 4 e_torch <= B.

    Where torch's own error is under B / 4 (every case measured on AVX-512, features and
    gradients 2e-7 - 3e-6) the old check is kept unchanged and a second one, B against the
    exact result, is added: stricter than before. Only where torch float32 is already more
    than B / 4 from the exact result, so that the old check measured torch's rounding
    rather than ours, is the fixed bound against t32 replaced by "no worse than 4x torch's own
    error" against t64. Why 4: the factor matters only where torch's error exceeds B / 4,
    that is where a tie decided it; 4x leaves room for our rounding on top of the same tie
    (rounding alone: ours 1e-6 - 7e-6, torch's 3e-7 - 3e-6 here, Winograd's being 2-6x a
    direct convolution's, docs/winograd.md), while a tie that we decide differently from
    float64 moves the gradient by 1e-4 - 1e-2 and still fails unless torch made an error of
    the same size on the same input."""
    torch = pytest.importorskip("torch")
    from helpers_torch import assert_float32_as_good_as_torch, torch_gatys_objective, torch_reference

    params = random_weights(arch, seed=3)
    net = load_vgg(arch, weights=params, pooling=pooling)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 3, 37, 45)).astype(np.float32) * 50
    t = rng.standard_normal((1, 3, 37, 45)).astype(np.float32) * 50
    wanted = sorted(set(FEATURE_LAYERS + GATYS_STYLE), key=net.layer_names.index)

    tfeat = net.forward(t, wanted)
    targets = {l: tfeat["relu4_2"] if l == "relu4_2" else gram_matrix(tfeat[l])[0] for l in wanted}
    feats = net.forward(x, wanted)
    grads = _gatys_grads(feats, targets)
    dx = net.backward(grads)

    objective = torch_gatys_objective(targets, GATYS_STYLE)
    f32, g32 = torch_reference(arch, params, pooling, x, wanted, objective, torch.float32)
    f64, g64 = torch_reference(arch, params, pooling, x, wanted, objective, torch.float64)
    for l in wanted:
        assert_float32_as_good_as_torch(feats[l], f32[l], f64[l], 1e-5, what=l)
    assert_float32_as_good_as_torch(dx, g32, g64, 1e-4, what="input gradient")


@pytest.mark.torch
@pytest.mark.parametrize(
    "pooling, dtype, bound",
    # Max pooling's gradient jumps where two window elements tie. Deep in a net on a
    # small image neighbouring activations can agree to ~1e-7, closer than two float32
    # implementations agree, so the argmax may legitimately differ: max pooling's
    # gradient is compared in float64, where that cannot happen. Average pooling's float32
    # results are compared with torch float64, torch float32 the yardstick (as in
    # test_net_matches_torch: the old bounds, or 4x torch float32's own error where that is
    # larger than a quarter of them).
    [("avg", np.float32, 1e-4), ("max", np.float64, 1e-10)],
)
def test_batch_of_two_and_several_sizes(pooling, dtype, bound):
    torch = pytest.importorskip("torch")
    from helpers_torch import assert_float32_as_good_as_torch, torch_reference

    params = random_weights("vgg16", seed=1)
    net = load_vgg("vgg16", weights=params, pooling=pooling)
    rng = np.random.default_rng(0)
    layers = ["relu3_3", "pool5"]
    for shape in [(2, 3, 32, 32), (1, 3, 40, 35), (1, 3, 64, 50)]:
        x = (rng.standard_normal(shape) * 30).astype(dtype)
        feats = net.forward(x, layers)
        dy = rng.standard_normal(feats["pool5"].shape).astype(dtype)
        dx = net.backward({"pool5": dy})
        objective = lambda tf: (tf["pool5"] * torch.from_numpy(dy).to(tf["pool5"].dtype)).sum()  # noqa: E731
        f64, g64 = torch_reference("vgg16", params, pooling, x, layers, objective, torch.float64)
        if dtype == np.float64:
            assert rel_err(feats["relu3_3"], f64["relu3_3"]) < bound
            assert rel_err(dx, g64) < bound
            continue
        f32, g32 = torch_reference("vgg16", params, pooling, x, layers, objective, torch.float32)
        assert_float32_as_good_as_torch(feats["relu3_3"], f32["relu3_3"], f64["relu3_3"], 1e-5, what=f"{shape} relu3_3")
        assert_float32_as_good_as_torch(dx, g32, g64, bound, what=f"{shape} input gradient")


@pytest.mark.torch
@pytest.mark.slow
def test_classifier_matches_torch():
    """fc6-fc8 at 224x224. Features in float32; the input gradient in float64, because
    a few of fc6/fc7's 4096 pre-activations sit within float32 rounding of ReLU's kink,
    where two correct float32 implementations may disagree on the sign and each such
    unit carries a large share of the gradient."""
    torch = pytest.importorskip("torch")
    from helpers_torch import torch_forward, torch_vgg

    params = random_weights("vgg16", keep_classifier=True, seed=2)
    net = load_vgg("vgg16", weights=params, pooling="max", keep_classifier=True)
    assert net.layer_names[-5:] == ["fc6", "relu6", "fc7", "relu7", "fc8"]
    x = np.random.default_rng(1).standard_normal((1, 3, 224, 224)) * 50
    dy = np.random.default_rng(2).standard_normal((1, 1000))
    for dtype, tdtype in [(np.float32, torch.float32), (np.float64, torch.float64)]:
        mods = torch_vgg("vgg16", params, "max", keep_classifier=True, dtype=tdtype)
        feats = net.forward(x.astype(dtype), ["fc8", "relu7"])
        xt = torch.from_numpy(x.astype(dtype)).requires_grad_(True)
        tf = torch_forward(mods, xt, {"fc8", "relu7"})
        assert rel_err(feats["fc8"], tf["fc8"].detach().numpy()) < 1e-5
        assert rel_err(feats["relu7"], tf["relu7"].detach().numpy()) < 1e-5
    dx = net.backward({"fc8": dy})
    (gt,) = torch.autograd.grad(tf["fc8"], xt, torch.from_numpy(dy))
    assert rel_err(dx, gt.numpy()) < 1e-10
    with pytest.raises(MiniVGGError, match="224x224"):
        net.forward(x[:, :, :100, :100].astype(np.float32), ["fc8"])


def test_layer_names_and_depth():
    net = load_vgg("vgg19", weights=random_weights("vgg19"))
    names = net.layer_names
    assert names[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert names[-1] == "pool5" and len(names) == 16 * 2 + 5
    assert sum(n.startswith("conv") for n in load_vgg("vgg16", weights=random_weights("vgg16")).layer_names) == 13
    net.forward(np.zeros((1, 3, 16, 16), np.float32), ["relu2_1"])
    assert net._depth == names.index("relu2_1")
    assert net.layers["conv3_1"]._cache is None  # nothing deeper was computed
    with pytest.raises(MiniVGGError, match="last forward stopped"):
        net.backward({"relu3_1": np.zeros((1, 256, 4, 4), np.float32)})


def test_up_to_builds_a_shallower_net_with_the_same_results(rng):
    params = random_weights("vgg19")
    full = load_vgg("vgg19", weights=params)
    short = load_vgg("vgg19", weights=params, up_to="relu3_1")
    assert short.layer_names == full.layer_names[: full.layer_names.index("relu3_1") + 1]
    assert "conv3_2" not in short.params() and "conv3_1" in short.params()
    x = rng.standard_normal((1, 3, 36, 28)).astype(np.float32)
    layers = ["relu1_1", "relu2_1", "relu3_1"]
    a, b = full.forward(x, layers), short.forward(x, layers)
    for l in layers:
        np.testing.assert_array_equal(a[l], b[l])
    g = {l: rng.standard_normal(a[l].shape).astype(np.float32) for l in layers}
    np.testing.assert_array_equal(full.backward(g), short.backward(g))
    with pytest.raises(MiniVGGError, match="past 'relu3_1'"):
        short.forward(x, ["relu4_1"])
    # the weights past up_to are not needed at all
    shallow = {k: v for k, v in params.items() if k in ("conv1_1", "conv1_2", "conv2_1")}
    assert load_vgg("vgg19", weights=shallow, up_to="pool1").layer_names[-1] == "pool1"
    with pytest.raises(MiniVGGError, match="lack layer conv2_2"):
        load_vgg("vgg19", weights=shallow, up_to="relu2_2")
    with pytest.raises(MiniVGGError, match="up_to: unknown layer 'relu9_9'"):
        load_vgg("vgg19", weights=params, up_to="relu9_9")
    with pytest.raises(MiniVGGError, match="stops before them"):
        load_vgg("vgg19", weights=random_weights("vgg19", keep_classifier=True), keep_classifier=True, up_to="relu5_1")


@pytest.mark.parametrize("size", [37, 64])
def test_average_pool_backward_folded_into_the_next_conv_is_exact(rng, size):
    """Net.backward folds each 2x2 average pool's backward into the ReLU-conv below it on
    the CPU; with the folding switched off the gradient is the same bit for bit."""
    net = load_vgg("vgg19", weights=random_weights("vgg19"), pooling="avg", up_to="relu5_1")
    x = (rng.standard_normal((1, 3, size, size)) * 50).astype(np.float32)
    f = net.forward(x, GATYS_STYLE)
    g = {l: rng.standard_normal(f[l].shape).astype(np.float32) for l in GATYS_STYLE}
    from minivgg.backend import CPU_FALLBACKS, Backend
    from minivgg.layers import ConvReLUAvgPool

    assert sum(isinstance(s, ConvReLUAvgPool) for s in net.plan(GATYS_STYLE).steps) == 4
    folded = net.backward(g)
    # the same net on a CPU backend without that fusion: the plan keeps the pools apart
    unfolded = Backend("cpu", np, net.ops.native, CPU_FALLBACKS, ("conv_relu", "relu_conv", "compact_mask"))
    net.backend, net._plans = unfolded, {}
    assert not any(isinstance(s, ConvReLUAvgPool) for s in net.plan(GATYS_STYLE).steps)
    net.forward(x, GATYS_STYLE)
    np.testing.assert_array_equal(folded, net.backward(g))


def test_several_layers_gradient_is_the_sum(rng):
    """backward({a: ga, b: gb}) equals backward({a: ga}) + backward({b: gb})."""
    net = load_vgg("vgg16", weights=random_weights("vgg16"))
    x = rng.standard_normal((1, 3, 20, 24)).astype(np.float64)
    f = net.forward(x, ["relu1_2", "relu3_1"])
    ga, gb = rng.standard_normal(f["relu1_2"].shape), rng.standard_normal(f["relu3_1"].shape)
    both = net.backward({"relu1_2": ga, "relu3_1": gb})
    a = net.backward({"relu1_2": ga})
    b = net.backward({"relu3_1": gb})
    assert rel_err(both, a + b) < 1e-12


def test_deferred_style_gradients_in_backward(rng):
    """backward takes a function in place of a gradient, and style_loss_deferred's are added
    straight into the gradient coming down (never made as arrays of their own where one
    arrives): the result equals backward with the arrays, to float32 rounding."""
    from minivgg.losses import style_loss_deferred

    net = load_vgg("vgg19", weights=random_weights("vgg19"), up_to="relu4_2")
    x = (rng.standard_normal((1, 3, 48, 40)) * 50).astype(np.float32)
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1"]
    f = net.forward(x, layers + ["relu4_2"])
    A = {l: gram_matrix(np.maximum(rng.standard_normal(f[l].shape), 0).astype(np.float32))[0] for l in layers}
    P = rng.standard_normal(f["relu4_2"].shape).astype(np.float32)
    grads = {"relu4_2": content_loss(f["relu4_2"], P)[1]}
    deferred = dict(grads)
    for l in layers:
        grads[l] = style_loss(f[l], A[l])[1] * np.float32(40.0)
        deferred[l] = style_loss_deferred(f[l], A[l], 40.0)[1]
    made, calls = [], []

    class Counting(type(deferred["relu1_1"])):
        def __call__(self):
            calls.append(self)
            return super().__call__()

        def add_to(self, out):
            made.append(self)
            return super().add_to(out)

    for l in layers:
        deferred[l].__class__ = Counting
    ref = net.backward(grads)
    got = net.backward(deferred)
    assert rel_err(got, ref) < 1e-5
    assert not calls and len(made) == len(layers)  # each added into the gradient from above
    only = net.backward({"relu1_1": style_loss_deferred(f["relu1_1"], A["relu1_1"], 40.0)[1]})
    assert rel_err(only, net.backward({"relu1_1": grads["relu1_1"]})) < 1e-5  # called: nothing from above
    plain = net.backward({"relu2_1": lambda: grads["relu2_1"].copy()})  # any function
    assert rel_err(plain, net.backward({"relu2_1": grads["relu2_1"]})) < 1e-6


def test_whole_net_finite_differences(rng):
    """float64 through the whole of VGG-16 to relu3_1, a few input coordinates."""
    params = {k: (W.astype(np.float64), b + 0.01) for k, (W, b) in random_weights("vgg16", seed=4).items()}
    net = load_vgg("vgg16", weights=params, pooling="avg")
    net.layers  # weights are stored as float32; build the float64 check from those values
    x = rng.standard_normal((1, 3, 12, 10))
    f = net.forward(x, ["relu3_1"])["relu3_1"]
    dy = rng.standard_normal(f.shape)
    dx = net.backward({"relu3_1": dy})
    obj = lambda z: float((net.forward(z, ["relu3_1"])["relu3_1"] * dy).sum())
    eps = 1e-6
    for idx in [(0, 0, 0, 0), (0, 1, 5, 4), (0, 2, 11, 9), (0, 1, 7, 2)]:
        xp_, xm_ = x.copy(), x.copy()
        xp_[idx] += eps
        xm_[idx] -= eps
        num = (obj(xp_) - obj(xm_)) / (2 * eps)
        assert abs(num - dx[idx]) <= 1e-6 * max(1.0, abs(num)), (idx, num, dx[idx])


def test_preprocess_deprocess_roundtrip(rng):
    img = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    for conv in [minivgg.weights.CAFFE, minivgg.weights.TORCHVISION]:
        net = load_vgg("vgg16", weights=random_weights("vgg16"), convention=conv)
        x = net.preprocess(img)
        assert x.shape == (1, 3, 9, 7) and x.dtype == np.float32
        np.testing.assert_array_equal(net.deprocess(x), img)
    caffe = load_vgg("vgg16", weights=random_weights("vgg16")).preprocess(img)
    np.testing.assert_allclose(caffe[0, 0], img[..., 2] - 103.939, rtol=1e-6)  # BGR, mean subtracted


def test_random_init_is_deterministic_and_warns(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    a = load_vgg("vgg16", seed=3)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "random weights" in err and "pretrained" in err
    b = load_vgg("vgg16", seed=3)
    c = load_vgg("vgg16", seed=4)
    np.testing.assert_array_equal(a.params()["conv3_1"][0], b.params()["conv3_1"][0])
    assert not np.array_equal(a.params()["conv3_1"][0], c.params()["conv3_1"][0])


def test_weights_file_roundtrip_and_default_lookup(tmp_path, monkeypatch):
    from minivgg.weights import TORCHVISION, write_weights

    params = random_weights("vgg16", seed=9)
    path = tmp_path / "vgg16-test.h5"
    write_weights(str(path), params, {"arch": "vgg16", "convention": TORCHVISION, "normalized": False})
    net = load_vgg("vgg16", weights=str(path))
    assert net.convention["channel_order"] == "RGB"
    np.testing.assert_array_equal(net.params()["conv5_3"][0], params["conv5_3"][0])
    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    assert load_vgg("vgg16").source == str(path)
    with pytest.raises(MiniVGGError, match="vgg16 weights"):
        load_vgg("vgg19", weights=str(path))


def test_bad_input_raises_project_error():
    params = random_weights("vgg16")
    net = load_vgg("vgg16", weights=params)
    with pytest.raises(MiniVGGError, match="valid layers: conv1_1"):
        net.forward(np.zeros((1, 3, 8, 8), np.float32), ["relu9_9"])
    with pytest.raises(MiniVGGError, match="too small"):
        net.forward(np.zeros((1, 3, 8, 8), np.float32), ["pool4"])
    with pytest.raises(MiniVGGError, match="unknown architecture"):
        load_vgg("vgg11", weights=params)
    with pytest.raises(MiniVGGError, match="pooling"):
        load_vgg("vgg16", weights=params, pooling="median")
    bad = dict(params)
    del bad["conv4_2"]
    with pytest.raises(MiniVGGError, match="conv4_2"):
        load_vgg("vgg16", weights=bad)
    bad = dict(params, conv2_1=(np.zeros((128, 3, 3, 3), np.float32), np.zeros(128, np.float32)))
    with pytest.raises(MiniVGGError, match="conv2_1"):
        load_vgg("vgg16", weights=bad)
    with pytest.raises(MiniVGGError, match="classifier"):
        load_vgg("vgg16", weights=params, keep_classifier=True)
    with pytest.raises(MiniVGGError, match="no such weights file"):
        load_vgg("vgg16", weights="/nonexistent/w.h5")
    with pytest.raises(MiniVGGError, match="unknown device"):
        load_vgg("vgg16", weights=params, device="tpu")


def test_net_leaves_blas_threads_as_it_found_them():
    """forward/backward keep numpy's BLAS single-threaded inside (cpu/fast/threads.py) and
    restore the caller's setting after, also when a pass fails."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from minivgg.vgg import random_weights

    def blas_threads():
        return {i["filepath"]: i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"}

    def unchanged(before):  # libraries loaded on the way (scipy's BLAS) are not compared
        now = blas_threads()
        return all(now[k] == v for k, v in before.items())

    net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))
    before = blas_threads()
    assert before
    x = np.random.default_rng(0).standard_normal((1, 3, 36, 36)).astype(np.float32)
    f = net.forward(x, ["relu3_1"])
    assert unchanged(before)
    net.backward({"relu3_1": f["relu3_1"]})
    assert unchanged(before)
    with pytest.raises(MiniVGGError):
        net.forward(np.zeros((1, 3, 4, 4), np.float32), ["pool5"])
    assert unchanged(before)
    # and it is a real check: inside a pass the limit is 1
    from minivgg.cpu.fast.threads import one_blas_thread

    with one_blas_thread():
        assert not unchanged(before) or max(before.values()) == 1


def test_forward_reuses_its_arrays_only_when_nobody_holds_them():
    """cpu/fast/arena.py: a pass takes back the previous pass's arrays, but never one a caller
    still holds (directly or through a view), and the results do not depend on it."""
    net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))
    rng = np.random.default_rng(1)
    x1 = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    x2 = rng.standard_normal((1, 3, 40, 40)).astype(np.float32)
    layers = ["relu1_1", "relu3_1", "pool4"]

    kept = net.forward(x1, layers)
    snapshot = {l: kept[l].copy() for l in layers}
    view = kept["relu3_1"][0, :5]
    addresses = {l: kept[l].__array_interface__["data"][0] for l in layers}
    second = net.forward(x2, layers)
    for l in layers:  # held: not overwritten, and the new pass got other memory
        np.testing.assert_array_equal(kept[l], snapshot[l])
        assert second[l].__array_interface__["data"][0] != addresses[l]
    np.testing.assert_array_equal(view, snapshot["relu3_1"][0, :5])

    fresh = load_vgg("vgg16", weights=random_weights("vgg16", seed=0)).forward(x2, layers)
    for l in layers:
        np.testing.assert_array_equal(second[l], fresh[l])

    # dropped: the next pass takes the same memory back, with the right values. relu1_1 and
    # relu3_1 stay in the layers' caches until the next pass starts, so they are taken back,
    # each by one of the layers of its shape (conv1_x, conv3_x): compare with every array the
    # second pass made, not just the returned ones (pool4's output is not cached: freed at
    # `del second`, its memory comes back only if malloc happens to return it)
    made = net._cpu_arena._now
    addresses = {a.__array_interface__["data"][0] for refs in made.values() for a in (r() for r in refs) if a is not None}
    del second
    third = net.forward(x1, layers)
    for l in ("relu1_1", "relu3_1"):
        assert third[l].__array_interface__["data"][0] in addresses, l
    for l in layers:
        np.testing.assert_array_equal(third[l], snapshot[l])
    dx = net.backward({l: np.ones_like(third[l]) for l in layers})
    dx_fresh = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))
    dx_fresh.forward(x1, layers)
    np.testing.assert_array_equal(dx, dx_fresh.backward({l: np.ones_like(third[l]) for l in layers}))


def test_backward_keep_false_frees_caches_as_it_goes(monkeypatch):
    """backward(keep=False): the same gradient, the deeper layers' caches already gone when
    backward reaches full resolution, and a clear error on a second backward. (Measured as
    the arrays alive when conv1_1's backward starts: the peak of a pass depends on which
    workspaces earlier tests left grown; default weights mode, whatever the environment.)"""
    monkeypatch.delenv("MINIVGG_WINOGRAD_WEIGHTS", raising=False)
    import gc
    import tracemalloc

    from minivgg.cpu import ops as cpu_ops

    x = np.random.default_rng(2).standard_normal((1, 3, 96, 96)).astype(np.float32)
    at_full_res = []
    inner = cpu_ops.relu_conv2d_backward

    def spy(dy, *a, **k):
        if tracemalloc.is_tracing() and dy.shape[2:] == x.shape[2:]:
            at_full_res.append(tracemalloc.get_traced_memory()[0])
        return inner(dy, *a, **k)

    from minivgg.backend import get_backend

    monkeypatch.setattr(get_backend("cpu").ops, "relu_conv2d_backward", spy)

    def run(keep):
        net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))  # a fresh arena
        net.forward(x, ["relu1_1"])  # compile and warm up outside the measurement
        gc.collect()
        at_full_res.clear()
        tracemalloc.start()  # numpy reports its arrays to tracemalloc: the caches count
        f = net.forward(x, ["relu1_1", "relu5_1"])
        grads = {"relu1_1": np.ones_like(f["relu1_1"]), "relu5_1": np.ones_like(f["relu5_1"])}
        del f
        dx = net.backward(grads, keep=keep)
        tracemalloc.stop()
        assert len(at_full_res) == 1  # conv1_1's backward, the only one at 96x96
        return net, dx, at_full_res[0]

    net, dx_keep, alive_keep = run(True)
    again = net.backward({"relu1_1": np.ones((1, 64, 96, 96), np.float32), "relu5_1": np.ones((1, 512, 6, 6), np.float32)})
    np.testing.assert_array_equal(again, dx_keep)  # kept: a second backward works
    net, dx_free, alive_free = run(False)
    np.testing.assert_array_equal(dx_keep, dx_free)
    with pytest.raises(RuntimeError, match="run forward again"):
        net.backward({"relu5_1": np.ones((1, 512, 6, 6), np.float32)})
    net.forward(x, ["relu5_1"])
    net.backward({"relu5_1": np.ones((1, 512, 6, 6), np.float32)})  # fine after a forward
    # the caches of conv1_2 and deeper are gone by the time backward works at full
    # resolution: the ReLU masks (uint8, ops.compact_mask; relu1_2's at 96x96 is 0.6 MB,
    # relu2_x's 0.3 MB each, ...: ~1.9 MB in all)
    assert alive_free < alive_keep - 1_000_000, (alive_keep, alive_free)


def test_fused_conv_keeps_only_its_input_shape():
    """A fused conv + ReLU's cache keeps its input's shape, not the input (a pool's output
    would stay alive through the pass: 31 MB at 512x512): its backward to the input works,
    weight gradients say why they cannot; a conv asked for by name keeps its input."""
    net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))
    x = np.random.default_rng(4).standard_normal((1, 3, 64, 64)).astype(np.float32)
    f = net.forward(x, ["relu2_1"])
    conv = net.layers["conv2_1"]
    plan = net.plan(["relu2_1"])
    step = plan.steps[plan.index["conv2_1"]]  # the fused conv2_1 + relu2_1
    kept = step._need_cache()[1][0]
    assert not isinstance(kept, np.ndarray) and kept.shape == (1, 64, 32, 32)
    dx = net.backward({"relu2_1": np.ones_like(f["relu2_1"])})
    assert dx.shape == x.shape and np.isfinite(dx).all()
    net.forward(x, ["relu2_1"])
    with pytest.raises(RuntimeError, match="weight gradients need the input"):
        step.backward(np.ones((1, 128, 32, 32), np.float32), param_grads=True)
    g = net.forward(x, ["conv2_1"])  # asked for: not fused, the input kept
    conv.backward(np.ones_like(g["conv2_1"]), param_grads=True)
    assert conv.dW.shape == conv.W.shape and np.abs(conv.dW).max() > 0


def _relu_masks(net):
    """{relu name: dtype of what its step keeps for backward} over the last forward's plan."""
    from minivgg.layers import ConvReLU, ConvReLUAvgPool, ReLU

    out = {}
    for step in net._plan.steps:
        if isinstance(step, ReLU) and step._cache is not None:
            out[step.name] = step._cache.dtype
        elif isinstance(step, (ConvReLU, ConvReLUAvgPool)) and step._cache is not None:
            out[step.relu.name] = step._cache[0].dtype
    return out


def test_relu_outputs_nobody_asked_for_become_byte_masks(monkeypatch):
    """Once the next layer has read a ReLU's output that the caller did not ask for, the
    ReLU keeps (y > 0) as uint8; every backward takes it as the mask: gradients bit for bit
    those of the float outputs, on the Winograd and im2col paths, fused and not, with either
    pooling."""

    x = np.random.default_rng(5).standard_normal((1, 3, 64, 64)).astype(np.float32) * 50
    for pooling in ("avg", "max"):
        for conv in ("winograd", "im2col"):
            monkeypatch.setenv("MINIVGG_CONV", conv)
            net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0), pooling=pooling)
            grads = {}
            for compact in (True, False):
                if not compact:
                    monkeypatch.setattr(net.ops, "compact_mask", lambda y: y)
                f = net.forward(x, ["relu1_1", "relu3_1", "relu4_2"])
                masks = _relu_masks(net)
                if compact:
                    assert masks["relu1_2"] == masks["relu3_3"] == np.uint8  # read, not asked for
                    assert masks["relu1_1"] == masks["relu3_1"] == np.float32  # asked for
                    assert masks["relu4_2"] == np.float32  # the last: nothing read it
                else:
                    assert set(masks.values()) == {np.dtype(np.float32)}
                g = {n: np.cos(v) for n, v in f.items()}
                g["relu2_2"] = np.ones((1, 128, 32, 32), np.float32)  # a gradient at a compacted ReLU
                grads[compact] = net.backward(g)
                monkeypatch.undo()
                monkeypatch.setenv("MINIVGG_CONV", conv)
            np.testing.assert_array_equal(grads[True], grads[False])


def test_malloc_keeps_freed_memory_for_the_next_iteration():
    """After a CPU net is built, freeing and reallocating a 16 MiB array costs no page faults."""
    import resource
    import sys

    from minivgg.cpu.fast.arena import keep_freed_memory

    if not sys.platform.startswith("linux") or not keep_freed_memory():
        pytest.skip("malloc tuning applies to glibc only")
    a = np.ones(4 << 20, np.float32)
    del a
    faults = []
    for _ in range(3):  # the least of three: a stray fault from elsewhere in the process is not the tuning
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        b = np.ones(4 << 20, np.float32)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
        del b
    assert min(faults) < 64, faults  # ~4100 (4 KiB pages) or ~500 (huge pages) without the tuning
