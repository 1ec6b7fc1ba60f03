"""Image helpers the methods use: load/save (atomic), resize, colour preservation,
samples, the memory estimate and the loss plot."""

import os

import numpy as np
import pytest

from minivgg import MiniVGGError, load_vgg
from minivgg.image import (estimate_memory, line_plot, load_image, preserve_colors, resize, resize_array,
                           rgb_to_yiq, sample_image, save_image, side_by_side, size_for_longest)
from minivgg.vgg import random_weights


def test_save_load_roundtrip_and_no_temp(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = tmp_path / "a.png"
    save_image(str(p), img)
    assert np.array_equal(load_image(str(p)), img)
    assert os.listdir(tmp_path) == ["a.png"]


def test_grey_and_rgba_become_rgb(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 5), 77, np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(np.full((4, 5, 4), 200, np.uint8)).save(tmp_path / "r.png")
    assert load_image(str(tmp_path / "g.png")).shape == (4, 5, 3)
    assert load_image(str(tmp_path / "r.png")).shape == (4, 5, 3)


def test_load_errors(tmp_path):
    with pytest.raises(MiniVGGError, match="no such image"):
        load_image(str(tmp_path / "none.png"))
    with pytest.raises(MiniVGGError, match="directory"):
        load_image(str(tmp_path))
    (tmp_path / "bad.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(MiniVGGError, match="cannot read image"):
        load_image(str(tmp_path / "bad.png"))
    with pytest.raises(MiniVGGError, match="extension"):
        save_image(str(tmp_path / "x.unknown"), np.zeros((2, 2, 3), np.uint8))


def test_resize_rules():
    img = sample_image("coffee")
    assert resize(img, img.shape[:2]) is img  # not resampled
    assert size_for_longest((300, 451), 451) == (300, 451)
    assert size_for_longest((300, 451), 100) == (67, 100)
    assert size_for_longest((451, 300), 100) == (100, 67)
    assert resize(img, (10, 20)).shape == (10, 20, 3)
    with pytest.raises(MiniVGGError):
        size_for_longest((3, 3), 0)
    x = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    assert resize_array(x, (8, 8)) is x and resize_array(x, (16, 12)).shape == (1, 3, 16, 12)


def test_preserve_colors_is_a_luminance_transfer():
    rng = np.random.default_rng(1)
    content = rng.integers(60, 200, (6, 6, 3), dtype=np.uint8)
    generated = rng.integers(60, 200, (6, 6, 3), dtype=np.uint8)
    out = preserve_colors(content, generated)
    y = rgb_to_yiq(out)
    assert np.abs(y[..., 0] - rgb_to_yiq(generated)[..., 0]).max() <= 1.5
    assert np.abs(y[..., 1:] - rgb_to_yiq(content)[..., 1:]).max() <= 1.5


def test_samples_and_side_by_side():
    a, b = sample_image("astronaut"), sample_image("chelsea")
    assert a.dtype == np.uint8 and a.shape[2] == 3
    s = side_by_side([a, b], height=50, gap=2)
    assert s.shape[0] == 50 and s.shape[1] == 50 + 2 + round(451 * 50 / 300)
    with pytest.raises(MiniVGGError, match="choose one of"):
        sample_image("lena")


def test_memory_estimate_grows_with_size_and_depth():
    net = load_vgg("vgg16", weights=random_weights("vgg16", seed=0))
    small = estimate_memory(net, 64, 64, "relu3_1")
    assert estimate_memory(net, 128, 128, "relu3_1") > 1.5 * small
    assert estimate_memory(net, 512, 512, "relu3_1") > 10 * small
    assert estimate_memory(net, 64, 64, "relu5_1") > small


def test_line_plot():
    img = line_plot([0, 1, 2], {"total": [10.0, 5.0, 1.0], "style": [1.0, 0.5, float("nan")]}, title="t")
    assert img.shape == (400, 640, 3) and img.dtype == np.uint8 and img.min() < 50
    neg = line_plot([0, 1], {"total": [-1.0, -3.0]})
    assert neg.shape == (400, 640, 3)
