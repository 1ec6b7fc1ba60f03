"""The style command's control options (--style-mask, --content-mask, --color-transfer,
--normalize-gradients): they reach the method, a small masked run works end to end, a
wrong number of masks is one error line."""

import numpy as np
import pytest

from minivgg.cli import build_parser, main
from minivgg.image import load_image, resize, sample_image, save_image
from minivgg.vgg import random_weights
from minivgg.weights import CAFFE, write_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("control-cli")
    weights = str(d / "vgg16-test.h5")
    write_weights(weights, random_weights("vgg16", seed=5), {"arch": "vgg16", "source_format": "test", "convention": CAFFE})
    content, style, mask = str(d / "content.png"), str(d / "style.png"), str(d / "mask.png")
    save_image(content, resize(sample_image("chelsea"), (32, 40)))
    save_image(style, resize(sample_image("immunohistochemistry"), (32, 40)))
    m = np.zeros((32, 40, 3), np.uint8)
    m[:, :20] = 255
    save_image(mask, m)
    return {"weights": weights, "content": content, "style": style, "mask": mask}


def _args(files, out, *extra):
    return ["style", "--content", files["content"], "--style", files["style"], "--size", "40", "--arch", "vgg16",
            "--weights", files["weights"], "--out", str(out), "--quiet", "--iters", "3", *extra]


def test_help_names_the_control_options():
    text = build_parser()._subparsers._group_actions[0].choices["style"].format_help()
    for opt in ("--style-mask", "--content-mask", "--color-transfer", "--normalize-gradients"):
        assert opt in text


def test_options_reach_the_method(files, tmp_path, monkeypatch):
    import minivgg.methods as methods

    seen = {}

    def fake(net, content, styles, **kw):
        seen.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(methods, "style_transfer", fake)
    with pytest.raises(SystemExit):
        main(_args(files, tmp_path / "o.png", "--style-mask", files["mask"], "--content-mask", files["mask"],
                   "--color-transfer", "histogram", "--normalize-gradients"))
    assert len(seen["masks"]) == 1 and seen["masks"][0].shape == (32, 40, 3)
    assert seen["content_mask"].shape == (32, 40, 3)
    assert seen["color_transfer"] == "histogram" and seen["normalize_gradients"] is True


def test_masked_run_end_to_end(files, tmp_path):
    out = tmp_path / "masked.png"
    assert main(_args(files, out, "--style-mask", files["mask"], "--color-transfer", "luminance",
                      "--normalize-gradients")) in (0, None)
    assert load_image(str(out)).shape == (32, 40, 3)


def test_mask_count_mismatch_is_one_error(files, tmp_path, capsys):
    assert main(_args(files, tmp_path / "x.png", "--style-mask", files["mask"], files["mask"])) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--style-mask has 2 mask(s) for 1 style image(s)" in err[0]
    assert not (tmp_path / "x.png").exists()


def test_sweep_kwargs():
    from minivgg.methods.control import SWEEP_KINDS, sweep_kwargs

    assert sweep_kwargs({}) == {} and sweep_kwargs({"color_transfer": "none", "normalize_gradients": "off"}) == {}
    assert sweep_kwargs({"color_transfer": "histogram", "normalize_gradients": "on"}) == {
        "color_transfer": "histogram", "normalize_gradients": True}
    assert "histogram" in SWEEP_KINDS["color_transfer"]
