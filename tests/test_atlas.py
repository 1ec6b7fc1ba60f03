"""The layer atlas (minivgg atlas) and the drawing it shares with the sweeps: tile
layout, labels, the CSV of runs, random-weights note, bad input."""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minivgg.experiments import execute, pictures
from minivgg.cli import main
from minivgg.image import save_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These runs are tiny: one thread each is faster than several fighting over the cores."""
    restore = execute._limit_threads(1)
    yield
    restore()


@pytest.fixture
def no_weights(tmp_path, monkeypatch):
    """No pretrained weights anywhere: every run uses random weights."""
    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:40, 0:48]
    content = np.stack([xx * 5, yy * 6, (xx + yy) * 3], -1).clip(0, 255).astype(np.uint8)
    style = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
    paths = tmp_path / "content.png", tmp_path / "style.png"
    save_image(paths[0], content)
    save_image(paths[1], style)
    return [str(p) for p in paths]


def read_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_contact_sheet_places_tiles_and_captions():
    colours = [(255, 0, 0), (0, 160, 0), (0, 0, 255)]
    rows = [(f"row {r}", [pictures.Tile(np.full((20, 30, 3), colours[(r + c) % 3], np.uint8), [f"r{r}c{c}", "loss 1"])
                          for c in range(3)]) for r in range(2)]
    sheet, layout = pictures.contact_sheet(rows, box=60, title=["a title"], col_headers=["x=1", "x=2", "x=3"])
    arr = np.asarray(sheet)
    (cw, ch), (x0, y0), (sw, sh) = layout["cell"], layout["origin"], layout["slot"]
    assert (sw, sh) == (60, 40)  # 30x20 images scaled to a longest side of 60
    assert arr.shape[1] >= x0 + 3 * cw - (cw - sw) and arr.shape[0] >= y0 + 2 * ch
    for r in range(2):
        for c in range(3):
            cx, cy = x0 + c * cw + sw // 2, y0 + r * ch + sh // 2
            assert tuple(arr[cy, cx]) == colours[(r + c) % 3]
            caption = arr[y0 + r * ch + sh + 2: y0 + r * ch + sh + 30, x0 + c * cw: x0 + c * cw + sw]
            assert (caption < 128).any(), "caption text drawn under the tile"
    # row labels at the left and the headers above the first row are drawn
    assert (arr[y0:y0 + sh, :x0 - 4] < 128).any()
    assert (arr[y0 - 30:y0 - 4, x0:x0 + sw] < 128).any()


def test_wrap_breaks_layer_sets_after_plus():
    fnt = pictures.font()
    lines = pictures.wrap(fnt, "relu1_1+relu2_1+relu3_1+relu4_1+relu5_1", 60)
    assert len(lines) > 1 and "".join(lines) == "relu1_1+relu2_1+relu3_1+relu4_1+relu5_1"
    assert all(pictures.text_width(fnt, line) <= 60 for line in lines[:-1])


def test_loss_curves_draws_every_panel():
    img = pictures.loss_curves([("a", [("one", [0, 1, 2], [100.0, 10.0, 1.0])]),
                          ("b", [("two", [0, 1], [-1.0, 2.0]), ("nan", [0], [float("nan")])])])
    arr = np.asarray(img)
    assert arr.shape[1] >= 2 * 360 and (arr != 255).any()


def test_atlas_with_style(tmp_path, images, no_weights, capsys):
    out = tmp_path / "atlas.png"
    rc = main(["atlas", "--image", images[0], "--style", images[1], "--out", str(out), "--size", "32",
               "--iters", "2", "--arch", "vgg16", "--workers", "1", "--quiet", "--tile", "64"])
    assert rc == 0
    stdout = capsys.readouterr().out
    assert "RANDOM WEIGHTS" in stdout and str(out) in stdout
    rows = read_rows(tmp_path / "atlas.csv")
    assert [r["row"] for r in rows] == ["content"] * 5 + ["texture"] * 5 + ["style"] * 5
    layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    assert [r["layers"] for r in rows[:5]] == layers
    assert [r["layers"] for r in rows[5:10]] == ["+".join(layers[:k]) for k in range(1, 6)]
    assert [r["layers"] for r in rows[10:]] == ["+".join(layers[:k]) for k in range(1, 6)]
    for r in rows:
        assert r["stopped"] == "iterations" and r["iters"] == "2" and r["iterations"] == "2"
        assert r["arch"] == "vgg16" and r["size"] == "32" and r["weights"].startswith("random")
        assert math.isfinite(float(r["total"])) and float(r["seconds"]) >= 0
    assert {"run", "row", "layers", "iters", "total", "content", "style", "tv", "seconds"} <= set(rows[0])
    from PIL import Image

    with Image.open(out) as im:
        w, h = im.size
    # 1 original + 5 runs per row, 3 rows, 64-pixel tiles with two caption lines each
    assert w >= 6 * 64 and h >= 3 * (64 + 2 * pictures.line_height(pictures.font()))
    with Image.open(tmp_path / "atlas-curves.png") as im:
        assert im.size[0] >= 3 * 360
    assert sorted(os.listdir(tmp_path)) == ["atlas-curves.png", "atlas.csv", "atlas.png", "content.png",
                                            "style.png"]


def test_atlas_without_style_has_two_rows(tmp_path, images, no_weights):
    out = tmp_path / "a.png"
    rc = main(["atlas", "--image", images[0], "--out", str(out), "--size", "32", "--iters", "2", "--arch", "vgg16",
               "--workers", "1", "--quiet", "--content-layers", "relu1_1,relu2_1", "--style-layers",
               "relu1_1,pool1,relu2_1"])
    assert rc == 0
    rows = read_rows(tmp_path / "a.csv")
    assert [(r["row"], r["layers"]) for r in rows] == [
        ("content", "relu1_1"), ("content", "relu2_1"),
        ("texture", "relu1_1"), ("texture", "relu1_1+pool1"), ("texture", "relu1_1+pool1+relu2_1")]


@pytest.mark.parametrize("extra, message", [
    (["--image", "missing.png"], "missing.png: no such image file"),
    (["--content-layers", "conv1_1,conv9_1"], "unknown layer 'conv9_1'"),
    (["--size", "0"], "--size must be a positive"),
    (["--out", "sheet.jpg"], "give a path ending in .png"),
    (["--out", "no/such/folder/a.png"], "does not exist"),
    (["--size", "8"], "too small for relu4_1"),
])
def test_atlas_bad_input(tmp_path, images, no_weights, capsys, extra, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["atlas", "--image", images[0], "--out", "a.png", "--iters", "1", "--workers", "1", "--quiet"]
    args += extra
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "a.png") and not os.path.exists(tmp_path / "a.csv")


def test_atlas_error_is_one_line_from_the_command_line(tmp_path, images):
    env = dict(os.environ, PYTHONPATH=ROOT, MINIVGG_HOME=str(tmp_path / "home"))
    p = subprocess.run([sys.executable, "-m", "minivgg", "atlas", "--image", images[0], "--style",
                        str(tmp_path / "nope.png"), "--out", str(tmp_path / "a.png")],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert not os.path.exists(tmp_path / "a.png")


def test_atlas_on_a_dask_cluster(tmp_path, images, no_weights):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "a.png"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, protocol="tcp",
                                  host="127.0.0.1", dashboard_address=None) as cluster:
        rc = main(["atlas", "--image", images[0], "--out", str(out), "--size", "32", "--iters", "2", "--arch",
                   "vgg16", "--quiet", "--content-layers", "conv1_1", "--style-layers", "conv1_1,conv2_1",
                   "--scheduler", cluster.scheduler_address])
    assert rc == 0
    assert [(r["row"], r["layers"]) for r in read_rows(tmp_path / "a.csv")] == [
        ("content", "conv1_1"), ("texture", "conv1_1"), ("texture", "conv1_1+conv2_1")]
