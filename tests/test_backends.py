"""Every layer, and each fused layer against its unfused layers, on every backend
(tests/helpers.py: reference, cpu and its ISA levels, emulated, gpu when present),
against torch: forward, and backward with a random upstream gradient."""

import numpy as np
import pytest

from conftest import rel_err
from helpers import backend, check_vs_torch, on_backend  # noqa: F401  (backend: the fixture)
from minivgg.backend import OPS, get_backend, to_host
from minivgg.layers import AvgPool2d, Conv2d, ConvReLU, ConvReLUAvgPool, Linear, MaxPool2d, ReLU, plan

pytestmark = pytest.mark.torch

CONV_CASES = [
    # N, Cin, H, W, Cout, k, stride, pad
    (2, 3, 7, 9, 5, 3, 1, 1),
    (1, 4, 13, 5, 6, 3, 2, 1),
    (1, 5, 6, 7, 3, 1, 1, 0),
    (1, 32, 32, 32, 32, 3, 1, 1),  # where the CPU backend takes Winograd
]


def _rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(backend, case, rng):
    import torch.nn.functional as tF

    N, C, H, Wd, Co, k, s, p = case
    x, W, b = _rand(rng, N, C, H, Wd), _rand(rng, Co, C, k, k, scale=0.2), _rand(rng, Co)

    def ours(be, x, W, b):
        layer = Conv2d(W, b, s, p, ops=be.ops)
        y = layer.forward(x)
        return y, lambda dy: [layer.backward(dy, param_grads=True), layer.dW, layer.db]

    check_vs_torch(ours, lambda x, W, b: tF.conv2d(x, W, b, stride=s, padding=p), [x, W, b], backend)


def test_relu(backend, rng):
    import torch

    x = _rand(rng, 2, 3, 7, 9)
    x[0, 0, 0, :3] = 0.0  # the kink: gradient 0 there, as torch

    def ours(be, x):
        layer = ReLU(ops=be.ops)
        return layer.forward(x), lambda dy: [layer.backward(dy)]

    check_vs_torch(ours, torch.relu, [x], backend)


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("k,s,shape", [(2, 2, (2, 3, 7, 9)), (2, 2, (1, 2, 5, 11)), (3, 2, (2, 3, 11, 10))])
def test_pool(backend, kind, k, s, shape, rng):
    import torch.nn.functional as tF

    x = _rand(rng, *shape)
    cls, tf = (AvgPool2d, tF.avg_pool2d) if kind == "avg" else (MaxPool2d, tF.max_pool2d)

    def ours(be, x):
        layer = cls(k, s, ops=be.ops)
        return layer.forward(x), lambda dy: [layer.backward(dy)]

    check_vs_torch(ours, lambda t: tf(t, k, s), [x], backend)


@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 3, 3)])
def test_linear(backend, shape, rng):
    import torch.nn.functional as tF

    x = _rand(rng, *shape)
    W, b = _rand(rng, 6, int(np.prod(shape[1:]))), _rand(rng, 6)

    def ours(be, x, W, b):
        layer = Linear(W, b, ops=be.ops)
        y = layer.forward(x)
        return y, lambda dy: [layer.backward(dy, param_grads=True), layer.dW, layer.db]

    check_vs_torch(ours, lambda x, W, b: tF.linear(x.flatten(1), W, b), [x, W, b], backend)


FUSED_CASES = [(1, 3, 12, 10, 8), (1, 32, 32, 32, 32)]  # the second where the CPU takes Winograd


@pytest.mark.parametrize("case", FUSED_CASES)
@pytest.mark.parametrize("pool", [None, "avg", "max"])
def test_fused_conv_relu_matches_torch_and_its_unfused_layers(backend, case, pool, rng):
    """ConvReLU (and ConvReLUAvgPool) on this backend against torch, and against the same
    layers run one by one on the reference backend."""
    import torch
    import torch.nn.functional as tF

    N, C, H, Wd, Co = case
    x, W, b = _rand(rng, N, C, H, Wd, scale=10), _rand(rng, Co, C, 3, 3, scale=0.2), _rand(rng, Co)

    def layers(be, W, b):
        seq = [Conv2d(W, b, 1, 1, ops=be.ops, name="conv"), ReLU(ops=be.ops, name="relu")]
        if pool:
            seq.append((AvgPool2d if pool == "avg" else MaxPool2d)(2, 2, ops=be.ops, name="pool"))
        return seq

    def fused(be, x, W, b):
        seq = layers(be, W, b)
        conv, relu = seq[:2]
        step = ConvReLUAvgPool(conv, relu, seq[2]) if pool == "avg" else ConvReLU(conv, relu, pool_ties=pool == "max")
        h = step.forward(x)
        if pool == "max":
            h = seq[2].forward(h)

        def back(dy):
            if pool == "max":
                dy = seq[2].backward(dy)
            return [step.backward(dy), None, None]

        return h, back

    def torch_fn(x, W, b):
        y = torch.relu(tF.conv2d(x, W, b, padding=1))
        return y if pool is None else (tF.avg_pool2d if pool == "avg" else tF.max_pool2d)(y, 2)

    y, (dx, _, _) = check_vs_torch(fused, torch_fn, [x, W, b], backend)
    ref = get_backend("reference")
    seq = layers(ref, W, b)
    h = x
    for layer in seq:
        h = layer.forward(h)
    dy = np.random.default_rng(7).standard_normal(h.shape).astype(np.float32)
    for layer in reversed(seq):
        dy = layer.backward(dy)
    assert rel_err(y, h) <= 1e-5 and rel_err(dx, dy) <= 1e-5


def test_every_backend_has_every_op_and_says_which_are_the_reference(backend):
    for op in OPS:
        assert callable(getattr(backend.ops, op))
    text = backend.describe()
    assert backend.name in text and "from the reference" in text
    for op in backend.fallbacks:
        assert op in text


def test_the_plan_fuses_only_adjacent_conv_relu_and_says_so():
    """A layer between a conv and its ReLU turns the fusion off, visibly; a conv asked for by
    name is not fused; the reference backend fuses nothing."""
    rng = np.random.default_rng(0)
    cpu = get_backend("cpu")
    W, b = _rand(rng, 4, 3, 3, 3), _rand(rng, 4)

    def net(*kinds):
        out = []
        for i, k in enumerate(kinds):
            name = f"{k}{i}"
            if k == "conv":
                out.append(Conv2d(W if i == 0 else _rand(rng, 4, 4, 3, 3), b, ops=cpu.ops, name=name))
            elif k == "relu":
                out.append(ReLU(ops=cpu.ops, name=name))
            else:
                out.append(AvgPool2d(2, 2, ops=cpu.ops, name=name))
        return out

    p = plan(net("conv", "relu", "pool"), {"pool2"}, cpu)
    assert [type(s) for s in p.steps] == [ConvReLUAvgPool]
    p = plan(net("conv", "pool", "relu"), {"relu2"}, cpu)  # something between: no fusion
    assert [type(s) for s in p.steps] == [Conv2d, AvgPool2d, ReLU] and "ConvReLU" not in p.describe()
    p = plan(net("conv", "relu"), {"conv0", "relu1"}, cpu)  # the pre-activation asked for
    assert [type(s) for s in p.steps] == [Conv2d, ReLU]
    p = plan(net("conv", "relu", "pool"), {"pool2"}, get_backend("reference"))
    assert [type(s) for s in p.steps] == [Conv2d, ReLU, AvgPool2d]
    p = plan(net("conv", "relu", "conv", "relu"), {"relu3"}, get_backend("emulated"))
    assert [type(s) for s in p.steps] == [ConvReLU, ConvReLU] and not p.compact_after


@pytest.mark.parametrize("name", ["reference", "emulated"])
def test_whole_net_on_a_backend_equals_the_cpu_net(name, rng):
    """The VGG net through the plan on another backend: features and gradient as the CPU's."""
    from minivgg import load_vgg
    from minivgg.vgg import random_weights

    params = random_weights("vgg16")
    x = _rand(rng, 1, 3, 20, 22, scale=30)
    layers = ["relu1_1", "conv2_1", "relu3_1", "pool3"]
    out = {}
    for dev in ("cpu", name):
        net = load_vgg("vgg16", weights=params, device=dev, up_to="pool3")
        f = net.forward(x, layers)
        g = net.backward({l: np.cos(to_host(f[l])) for l in layers})
        out[dev] = ({l: to_host(v) for l, v in f.items()}, to_host(g))
    for l in layers:
        assert rel_err(out[name][0][l], out["cpu"][0][l]) < 1e-5
    assert rel_err(out[name][1], out["cpu"][1]) < 1e-4
