"""Texture synthesis, inversion, DeepDream and activation maximization: each reduces
its objective; sizes, options and bad arguments."""

import pytest

from minivgg import MiniVGGError, load_vgg
from minivgg.image import resize, sample_image
from minivgg.methods import dream, invert, synthesize_texture, visualize
from minivgg.vgg import random_weights


@pytest.fixture(scope="module")
def net():
    return load_vgg("vgg16", weights=random_weights("vgg16", seed=3))


@pytest.fixture(scope="module")
def img():
    return resize(sample_image("astronaut"), (32, 32))


def decreasing(history):
    t = [row["total"] for row in history]
    return t[-1] < t[0]


def test_texture_reduces_objective_and_size_is_free(net, img):
    r = synthesize_texture(net, img, layers=["conv1_1", "pool1", "pool2"], size=(24, 40), iters=4,
                           optim_options={"line_search": "strong_wolfe"})
    assert r.image.shape == (24, 40, 3) and decreasing(r.history) and len(r.history) == 5
    assert all(row["content"] == 0 and row["style"] > 0 for row in r.history)
    r2 = synthesize_texture(net, img, layers=["conv1_1"], size=20, iters=0)
    assert r2.image.shape == (20, 20, 3)


def test_texture_layer_weights(net, img):
    r1 = synthesize_texture(net, img, layers=["conv1_1", "pool1"], layer_weights=[1.0, 0.0], iters=0, seed=1)
    r2 = synthesize_texture(net, img, layers=["conv1_1"], layer_weights=[1.0], iters=0, seed=1)
    assert r1.history[0]["total"] == pytest.approx(r2.history[0]["total"], rel=1e-6)
    with pytest.raises(MiniVGGError):
        synthesize_texture(net, img, layers=["conv1_1"], layer_weights=[1.0, 2.0], iters=0)


def test_invert_reduces_objective(net, img):
    r = invert(net, img, "conv2_1", iters=4, optim_options={"line_search": "strong_wolfe"})
    assert decreasing(r.history) and r.image.shape == img.shape
    s = r.settings
    assert s["alpha_weight"] > 0 and s["tv_weight"] > 0
    assert r.history[0]["alpha"] > 0 and r.history[0]["tv"] > 0
    # content init: the feature loss starts at zero
    r0 = invert(net, img, ["conv1_1", "conv2_1"], init="content", iters=0)
    assert r0.history[0]["content"] == 0.0


def test_dream_increases_activation(net, img):
    frames = []
    r = dream(net, img, "relu3_1", octaves=2, octave_scale=1.4, iters=3, jitter=2, zoom_steps=1,
              callback=lambda rec: frames.append(rec["iter"]) and False)
    acts = [row["activation"] for row in r.history]
    assert acts[-1] > acts[0]
    assert all(row["total"] == -row["activation"] for row in r.history)
    assert len(r.frames) == 2 and r.image.shape == img.shape
    assert r.stopped == "iterations"


def test_dream_one_channel_and_bad_channel(net, img):
    r = dream(net, img, "relu2_1", channel=5, octaves=1, iters=2, jitter=0)
    assert r.history[-1]["activation"] > r.history[0]["activation"]
    with pytest.raises(MiniVGGError, match="channels"):
        dream(net, img, "relu2_1", channel=500, iters=1)


def test_dream_warns_on_average_pooling(net, img, capsys):
    dream(net, img, "relu2_1", octaves=1, iters=1, jitter=0)  # the fixture's net: avg pooling
    assert "trained with max pooling" in capsys.readouterr().err
    max_net = load_vgg("vgg16", weights=random_weights("vgg16", seed=3), pooling="max", up_to="relu2_1")
    dream(max_net, img, "relu2_1", octaves=1, iters=1, jitter=0)
    assert "pooling" not in capsys.readouterr().err


def test_cli_dream_defaults_to_max_pooling():
    from minivgg.cli import build_parser
    from minivgg.methods.dream import DREAM_LAYER, DREAM_POOLING

    args = build_parser().parse_args(["dream", "--image", "a.png"])
    assert (args.pooling, args.layer, DREAM_POOLING) == ("max", DREAM_LAYER, "max")


def test_visualize_channel(net):
    r = visualize(net, "relu3_1", channel=2, size=32, iters=6, jitter=2)
    assert decreasing(r.history) and r.image.shape == (32, 32, 3)
    with pytest.raises(MiniVGGError, match="channels"):
        visualize(net, "relu3_1", channel=9999, size=32, iters=1)
    with pytest.raises(MiniVGGError, match="classifier"):
        visualize(net, class_index=1, iters=1)


@pytest.mark.slow
def test_visualize_class_score():
    net = load_vgg("vgg16", weights=random_weights("vgg16", keep_classifier=True, seed=1), keep_classifier=True)
    r = visualize(net, class_index=3, size=224, iters=2, jitter=0)
    assert r.history[-1]["activation"] > r.history[0]["activation"]


def test_unknown_layer_lists_valid_ones(net, img):
    for call in (lambda: invert(net, img, "conv9_9", iters=0),
                 lambda: synthesize_texture(net, img, layers=["pool7"], iters=0),
                 lambda: dream(net, img, "nope", iters=0)):
        with pytest.raises(MiniVGGError, match="valid layers: conv1_1"):
            call()
