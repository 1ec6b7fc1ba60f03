"""The tiled final stage (minivgg/methods/tiled.py): tiles cover the image with the
overlap asked, the blend weights sum to a partition, a small run end to end."""

import numpy as np

from minivgg import load_vgg
from minivgg.image import resize, sample_image
from minivgg.methods.tiled import _ramp, seam_ratio, tile_starts, tiled_style_transfer
from minivgg.vgg import random_weights


def test_tile_starts_cover_with_overlap():
    for length, tile, overlap in [(384, 192, 32), (500, 256, 64), (100, 128, 16), (257, 128, 32)]:
        s = tile_starts(length, tile, overlap)
        assert s[0] == 0 and s[-1] + min(tile, length) == length
        assert all(b - a <= tile - overlap for a, b in zip(s, s[1:]))


def test_ramps_blend_to_one_inside_the_overlap():
    w1, w2 = _ramp(64, 16, True, False), _ramp(64, 16, False, True)
    # two tiles at 0 and 48 overlapping by 16: the weights in the overlap are a tent pair
    assert np.allclose(w1[48:] + w2[:16], 1.0)


def test_tiled_run_end_to_end():
    net = load_vgg("vgg16", weights=random_weights("vgg16", seed=3), pooling="avg", up_to="relu4_2")
    content = resize(sample_image("chelsea"), (40, 48))
    style = resize(sample_image("immunohistochemistry"), (32, 32))
    img, info = tiled_style_transfer(net, content, [style], size=48, tile=32, overlap=8, coarse=32, iters=2,
                                     style_layers=["relu1_1", "relu2_1"], content_layers=["relu3_1"])
    assert img.shape == (40, 48, 3) and img.dtype == np.uint8
    assert len(info["boxes"]) == 4
    assert np.isfinite(seam_ratio(img, info["boxes"]))


def test_style_transfer_tile_keyword_and_cli(tmp_path):
    from minivgg.cli import main
    from minivgg.image import load_image, save_image
    from minivgg.methods import style_transfer
    from minivgg.weights import CAFFE, write_weights

    params = random_weights("vgg16", seed=3)
    net = load_vgg("vgg16", weights=params, pooling="avg", up_to="relu4_2")
    content = resize(sample_image("chelsea"), (40, 48))
    style = resize(sample_image("immunohistochemistry"), (32, 32))
    rows = []
    r = style_transfer(net, content, [style], size=48, tile=32, tile_overlap=8, iters=2, callback=rows.append,
                       style_layers=["relu1_1", "relu2_1"], content_layers=["relu3_1"])
    assert r.image.shape == (40, 48, 3) and r.settings["tiles"] == 4
    assert len(r.history) == 5 * 3 == len(rows) and all(row["render"] is None for row in rows[3:])
    weights = str(tmp_path / "w.h5")
    write_weights(weights, params, {"arch": "vgg16", "source_format": "test", "convention": CAFFE})
    save_image(str(tmp_path / "c.png"), content)
    save_image(str(tmp_path / "s.png"), style)
    out = tmp_path / "o.png"
    assert main(["style", "--content", str(tmp_path / "c.png"), "--style", str(tmp_path / "s.png"), "--size", "48",
                 "--arch", "vgg16", "--weights", weights, "--out", str(out), "--quiet", "--iters", "2",
                 "--tile", "32", "--tile-overlap", "8", "--style-layers", "relu1_1,relu2_1",
                 "--content-layers", "relu3_1"]) in (0, None)
    assert load_image(str(out)).shape == (40, 48, 3)
