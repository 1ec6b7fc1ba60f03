"""The other commands: texture, invert, dream, visualize, classify, demo, and the
registration of extension command modules."""

import csv
import sys
import types

import pytest

from minivgg import cli
from minivgg.cli import main
from minivgg.image import load_image, resize, sample_image, save_image
from minivgg.vgg import random_weights
from minivgg.weights import CAFFE, write_weights


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cmds")
    weights = str(d / "vgg16-test.h5")
    write_weights(weights, random_weights("vgg16", seed=2), {"arch": "vgg16", "source_format": "test",
                                                             "convention": CAFFE})
    image = str(d / "img.png")
    save_image(image, resize(sample_image("astronaut"), (32, 32)))
    return {"weights": weights, "image": image}


def common(files, out, log):
    return ["--arch", "vgg16", "--weights", files["weights"], "--out", str(out), "--log", str(log), "--quiet"]


def log_rows(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def test_texture(files, tmp_path):
    out, log = tmp_path / "t.png", tmp_path / "t.csv"
    assert main(["texture", "--image", files["image"], "--layers", "conv1_1,pool1", "--size", "24", "--iters", "2",
                 *common(files, out, log)]) == 0
    assert load_image(out).shape == (24, 24, 3)
    rows = log_rows(log)
    assert len(rows) == 3 and float(rows[0]["content"]) == 0 and float(rows[0]["style"]) > 0


def test_invert(files, tmp_path):
    out, log = tmp_path / "i.png", tmp_path / "i.csv"
    assert main(["invert", "--image", files["image"], "--layer", "conv2_1", "--size", "32", "--iters", "2",
                 *common(files, out, log)]) == 0
    rows = log_rows(log)
    assert len(rows) == 3 and "alpha" in rows[0] and float(rows[0]["tv"]) > 0


def test_dream_with_frames(files, tmp_path):
    out, log = tmp_path / "d.png", tmp_path / "d.csv"
    assert main(["dream", "--image", files["image"], "--layer", "relu2_1", "--size", "32", "--octaves", "1",
                 "--iters", "2", "--jitter", "2", "--zoom-steps", "1", "--frames", *common(files, out, log)]) == 0
    assert (tmp_path / "d_frame000.png").exists() and (tmp_path / "d_frame001.png").exists()
    rows = log_rows(log)
    assert float(rows[-1]["activation"]) > float(rows[0]["activation"])


def test_commands_build_the_net_only_as_deep_as_their_layers(files, tmp_path, monkeypatch):
    from minivgg import vgg

    built, real = [], vgg.load_vgg

    def spy(*args, **kwargs):
        net = real(*args, **kwargs)
        built.append((kwargs.get("up_to"), net.layer_names[-1]))
        return net

    monkeypatch.setattr(vgg, "load_vgg", spy)
    out, log = tmp_path / "o.png", tmp_path / "o.csv"
    assert main(["texture", "--image", files["image"], "--layers", "pool1,conv1_1", "--size", "24", "--iters", "1",
                 *common(files, out, log)]) == 0
    assert main(["dream", "--image", files["image"], "--layer", "relu2_1", "--size", "32", "--octaves", "1",
                 "--iters", "1", *common(files, out, log)]) == 0
    assert built == [("pool1", "pool1"), ("relu2_1", "relu2_1")]


def test_visualize(files, tmp_path):
    out, log = tmp_path / "v.png", tmp_path / "v.csv"
    assert main(["visualize", "--layer", "relu2_1", "--channel", "3", "--size", "32", "--iters", "2",
                 *common(files, out, log)]) == 0
    assert load_image(out).shape == (32, 32, 3) and len(log_rows(log)) == 3


def test_visualize_class_needs_classifier(files, tmp_path, capsys):
    out, log = tmp_path / "v.png", tmp_path / "v.csv"
    assert main(["visualize", "--class", "goldfish", *common(files, out, log)]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "classifier" in err and not out.exists()


def test_classify_says_when_weights_have_no_classifier(files, capsys):
    pytest.importorskip("minivgg.classify")
    rc = main(["classify", files["image"], "--arch", "vgg16", "--weights", files["weights"]])
    err = capsys.readouterr().err
    assert rc == 2 and "no classifier" in err


def test_classify_bad_top(files):
    with pytest.raises(SystemExit) as e:
        main(["classify", files["image"], "--top", "0"])
    assert e.value.code == 2


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "style" in capsys.readouterr().err


def test_demo_small(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    out = tmp_path / "demo"
    from minivgg.cli.demo import run_demo

    assert run_demo(str(out), size=32, iters=1, quiet=True) == 0
    for name in ("content.png", "style_image.png", "texture_source.png", "style.png", "texture.png",
                 "side_by_side.png", "style_log.csv", "texture_log.csv"):
        assert (out / name).exists(), name
    captured = capsys.readouterr()
    assert "RANDOM weights" in captured.err and "side_by_side.png" in captured.out


def test_extension_modules_register_commands(monkeypatch, capsys):
    mod = types.ModuleType("fake_ext")

    def add_parser(sub):
        p = sub.add_parser("atlas", help="fake")
        p.add_argument("--n", type=int, default=1)
        sub.add_parser("sweep", help="fake too")

    mod.add_parser = add_parser
    mod.run = lambda args: 40 + args.n if args.command == "atlas" else 7
    monkeypatch.setitem(sys.modules, "fake_ext", mod)
    monkeypatch.setattr(cli, "EXTENSION_MODULES", ["fake_ext"])
    assert main(["atlas", "--n", "2"]) == 42
    assert main(["sweep"]) == 7


def test_missing_extension_module_is_skipped(monkeypatch):
    monkeypatch.setattr(cli, "EXTENSION_MODULES", ["minivgg.no_such_module"])
    parser = cli.build_parser()
    assert "style" in parser._subparsers._group_actions[0].choices
