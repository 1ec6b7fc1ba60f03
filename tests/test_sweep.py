"""Parameter sweeps (minivgg sweep): the grid picture, the CSV, resuming after a
deleted result or an interrupted run, local worker processes, a Dask LocalCluster on
loopback, configs, and bad parameters."""

import csv
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from minivgg.experiments import execute, params, records
from minivgg.cli import main
from minivgg.image import save_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--size", "32", "--arch", "vgg16", "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These runs are tiny: one thread each is faster than several fighting over the cores."""
    restore = execute._limit_threads(1)
    yield
    restore()


@pytest.fixture(autouse=True)
def no_weights(tmp_path, monkeypatch):
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


def style_args(images, out):
    return ["sweep", "--method", "style", "--content", images[0], "--style", images[1], "--out", str(out)]


def mtimes(folder):
    return {n: os.stat(os.path.join(folder, n)).st_mtime_ns for n in os.listdir(folder)}


def test_two_parameter_grid(tmp_path, images, capsys):
    out = tmp_path / "sw"
    rc = main(style_args(images, out) + SMALL + [
        "--grid", "style_layers=relu1_1,relu1_1+relu2_1", "--grid", "iters=2,3", "--workers", "1"])
    assert rc == 0
    assert "RANDOM WEIGHTS" in capsys.readouterr().out
    rows = read_rows(out / "results.csv")
    assert [(r["style_layers"], r["iters"]) for r in rows] == [
        ("relu1_1", "2"), ("relu1_1", "3"), ("relu1_1+relu2_1", "2"), ("relu1_1+relu2_1", "3")]
    cols = list(rows[0])
    assert cols[:4] == ["cell", "file", "style_layers", "iters"]
    assert {"status", "iterations", "total", "content", "style", "tv", "seconds", "size", "arch", "pooling",
            "optimizer", "seed", "content_layers"} <= set(cols)
    for r in rows:
        assert r["status"] == "iterations" and r["iterations"] == r["iters"] and r["size"] == "32"
        assert os.path.isfile(out / r["file"]) and float(r["total"]) > 0
        log = read_rows(out / "logs" / (os.path.basename(r["file"])[:-4] + ".csv"))
        assert [int(float(x["iter"])) for x in log] == list(range(int(r["iters"]) + 1))
    assert sorted(os.listdir(out / "cells")) == sorted(os.path.basename(r["file"]) for r in rows)
    from PIL import Image

    with Image.open(out / "grid.png") as im:
        w, h = im.size
    box = 128  # the default tile for sizes up to 128
    assert w > 2 * box and 2 * box < h < 3 * box + 150  # 2 rows x 2 columns
    assert os.path.isfile(out / "curves.png") and os.path.isfile(out / "sweep.json")
    assert not [n for n in os.listdir(out) if ".tmp" in n]


def test_resume_skips_done_cells(tmp_path, images, capsys):
    out = tmp_path / "sw"
    args = ["sweep", "--method", "texture", "--image", images[1], "--out", str(out), *SMALL,
            "--grid", "layers=relu1_1,relu1_1+relu2_1,pool1", "--iters", "2", "--workers", "1"]
    assert main(args) == 0
    before = mtimes(out / "cells")
    rows_before = read_rows(out / "results.csv")
    victim = sorted(before)[1]
    os.remove(out / "cells" / victim)
    time.sleep(0.05)
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming: 2 of 3 cells already done" in capsys.readouterr().out
    after = mtimes(out / "cells")
    assert set(after) == set(before)
    assert {n for n in after if after[n] != before[n]} == {victim}
    rows_after = read_rows(out / "results.csv")
    assert [r["cell"] for r in rows_after] == [r["cell"] for r in rows_before]
    same = [a for a, b in zip(rows_after, rows_before) if a["file"] != "cells/" + victim]
    assert same == [b for b in rows_before if b["file"] != "cells/" + victim]
    # everything done: a third run does no work at all
    capsys.readouterr()
    assert main(args) == 0
    assert "resuming: 3 of 3" in capsys.readouterr().out and mtimes(out / "cells") == after


def _wait_for_first_row(path, proc, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout and proc.poll() is None:
        if len(records.read_csv(path)) >= 1:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_sweep_resumes(tmp_path, images, sig):
    out = tmp_path / "sw"
    cmd = [sys.executable, "-m", "minivgg", *style_args(images, out), "--size", "48", "--arch", "vgg16",
           "--grid", "seed=0,1,2,3", "--set", "style_layers=relu1_1+relu2_1+relu3_1", "--iters", "15",
           "--workers", "1", "--quiet"]
    env = dict(os.environ, PYTHONPATH=ROOT, MINIVGG_NUM_THREADS="1", NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        started = _wait_for_first_row(out / "results.csv", proc)
        if proc.poll() is None:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started
    done_rows = read_rows(out / "results.csv")
    n_first = len(done_rows)
    if proc.returncode in (130, -signal.SIGKILL):  # stopped mid-way (else it finished first: still resumable)
        assert n_first < 4
        if sig == signal.SIGINT:
            assert "run the same command again to resume" in stderr and "Traceback" not in stderr
    else:
        assert proc.returncode == 0, stderr
    # every row written has its image; no temporary files count as results
    for r in done_rows:
        assert os.path.isfile(out / r["file"])
    kept = {n: t for n, t in mtimes(out / "cells").items() if not n.startswith(".")}
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    if n_first:
        assert f"resuming: {len(kept)} of 4 cells already done" in p.stdout
    rows = read_rows(out / "results.csv")
    assert [r["seed"] for r in rows] == ["0", "1", "2", "3"]
    assert all(r["status"] == "iterations" for r in rows)
    after = mtimes(out / "cells")
    assert all(after[n] == t for n, t in kept.items())  # finished cells were not run again


def test_local_worker_processes(tmp_path, images):
    out = tmp_path / "sw"
    rc = main(["sweep", "--method", "invert", "--image", images[0], "--out", str(out), *SMALL,
               "--grid", "layer=conv1_1,relu2_1", "--iters", "2", "--workers", "2"])
    assert rc == 0
    rows = read_rows(out / "results.csv")
    assert [r["layer"] for r in rows] == ["conv1_1", "relu2_1"] and all(r["status"] == "iterations" for r in rows)
    assert all(r["weights"].startswith("random") for r in rows)


def test_dask_local_cluster(tmp_path, images, capsys):
    distributed = pytest.importorskip("distributed")
    out = tmp_path / "sw"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, protocol="tcp", host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        args = ["sweep", "--method", "dream", "--image", images[0], "--out", str(out), *SMALL,
                "--grid", "layer=relu1_1,relu2_1", "--grid", "octaves=1,2", "--iters", "2",
                "--scheduler", cluster.scheduler_address]
        assert main(args) == 0
        rows = read_rows(out / "results.csv")
        assert [(r["layer"], r["octaves"]) for r in rows] == [
            ("relu1_1", "1"), ("relu1_1", "2"), ("relu2_1", "1"), ("relu2_1", "2")]
        assert all(r["status"] == "iterations" and os.path.isfile(out / r["file"]) for r in rows)
        os.remove(out / rows[0]["file"])
        capsys.readouterr()
        assert main(args) == 0
        assert "resuming: 3 of 4" in capsys.readouterr().out
        assert os.path.isfile(out / rows[0]["file"])


def test_unreachable_scheduler(tmp_path, images, capsys):
    pytest.importorskip("distributed")
    args = style_args(images, tmp_path / "sw") + SMALL + ["--grid", "iters=1,2", "--scheduler",
                                                          "tcp://127.0.0.1:9"]
    assert main(args) == 2
    assert "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err


def test_toml_config_with_three_parameters(tmp_path, images):
    cfg = tmp_path / "exp" / "sweep.toml"
    cfg.parent.mkdir()
    cfg.write_text(f"""
method = "texture"
image = "{os.path.relpath(images[1], cfg.parent)}"
out = "result"
workers = 1
[set]
size = 32
arch = "vgg16"
iters = 2
[grid]
layers = [["relu1_1"], "relu1_1+pool1"]
pooling = ["avg", "max"]
seed = [0, 1]
""")
    assert main(["sweep", str(cfg), "--quiet"]) == 0
    out = cfg.parent / "result"
    rows = read_rows(out / "results.csv")
    assert len(rows) == 8 and list(rows[0])[2:5] == ["layers", "pooling", "seed"]
    assert rows[0]["layers"] == "relu1_1" and rows[-1]["layers"] == "relu1_1+pool1"
    from PIL import Image

    with Image.open(out / "grid.png") as im:
        w, h = im.size
    # rows = layers x pooling (4), columns = seed (2)
    assert 4 * 128 < h < 5 * 128 + 150 and 2 * 128 < w


@pytest.mark.parametrize("extra, message", [
    (["--grid", "colour=red,blue"], "unknown parameter 'colour' for method style; valid parameters: style_layers,"),
    (["--grid", "pooling=avg,mean"], "parameter pooling: unknown value 'mean'; valid values: avg, max"),
    (["--grid", "optimizer=adam,newton"], "valid values: lbfgs, adam, sgd"),
    (["--grid", "style_layers=relu1_1,relu9_1"], "unknown layer 'relu9_1'"),
    (["--grid", "style_layers=relu5_4", "--set", "arch=vgg16"], "unknown layer 'relu5_4' for vgg16"),
    (["--grid", "iters=10,-1"], "parameter iters: must be >= 1"),
    (["--grid", "iters=10,ten"], "parameter iters: expected an integer"),
    (["--grid", "init=noise,photo"], "valid values: noise, content, style"),
    (["--grid", "iters=1,1"], "appears twice"),
    (["--grid", "iters"], "expected PARAM=VALUES"),
    ([], "nothing to sweep"),
    (["--grid", "iters=1,2", "--set", "iters=3"], "both fixed and on the grid"),
    (["--grid", "ratio=1e-3,1e-4", "--set", "style_weight=10"], "either ratio"),
    (["--grid", "size=8,16", "--iters", "1"], "too small for relu"),
])
def test_bad_parameters(tmp_path, images, capsys, extra, message):
    out = tmp_path / "sw"
    assert main(style_args(images, out) + ["--quiet", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not os.path.exists(out)


@pytest.mark.parametrize("text, message", [
    ("method = 'style'\ncolour = 1\n", "unknown key 'colour'; valid keys: method,"),
    ("method = 'style'\n[grid\n", "not valid TOML"),
    ("method = 'paint'\n[grid]\niters = [1, 2]\n", "unknown method 'paint'"),
    ("[grid]\niters = 3\n", "grid.iters must be a non-empty list"),
    ("[grid]\nstyle_layers = [['relu1_1', 'nope']]\n", "unknown layer 'nope'"),
])
def test_bad_configs(tmp_path, images, capsys, text, message):
    cfg = tmp_path / "c.toml"
    cfg.write_text(text)
    out = tmp_path / "sw"
    rc = main(["sweep", str(cfg), "--content", images[0], "--style", images[1], "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err, err
    assert not os.path.exists(out)


def test_missing_config_and_inputs(tmp_path, images, capsys):
    assert main(["sweep", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "none.toml: no such config file" in capsys.readouterr().err
    assert main(["sweep", "--method", "style", "--content", images[0], "--out", str(tmp_path / "o"),
                 "--grid", "iters=1,2"]) == 2
    assert "needs a style image" in capsys.readouterr().err
    assert main(["sweep", "--method", "invert", "--image", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                 "--grid", "iters=1,2"]) == 2
    assert "x.png: no such image file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "o")


def test_other_settings_in_the_same_folder_are_refused(tmp_path, images, capsys):
    out = tmp_path / "sw"
    base = ["sweep", "--method", "texture", "--image", images[1], "--out", str(out), "--arch", "vgg16", "--quiet",
            "--workers", "1", "--grid", "layers=relu1_1,pool1", "--iters", "1"]
    assert main(base + ["--size", "32"]) == 0
    capsys.readouterr()
    assert main(base + ["--size", "40"]) == 2
    err = capsys.readouterr().err
    assert "holds a sweep with other settings (size: 32 there, 40 here)" in err
    # a grid with more values continues the same experiment
    assert main(base[:-4] + ["--grid", "layers=relu1_1,pool1,relu2_1", "--iters", "1", "--size", "32"]) == 0
    assert "resuming: 2 of 3" in capsys.readouterr().out


def test_error_is_one_line_from_the_command_line(tmp_path, images):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "minivgg", *style_args(images, tmp_path / "sw"), "--grid",
                        "pooling=avg,median"], capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
    assert "valid values: avg, max" in p.stderr


def test_list_params(capsys):
    assert main(["sweep", "--list-params", "--method", "invert"]) == 0
    out = capsys.readouterr().out
    for name in params.PARAMS["invert"]:
        assert name in out


def test_the_arch_follows_the_weights_file(tmp_path, capsys, monkeypatch):
    """Without --arch a sweep runs the weights file's network, as the other commands do."""
    from minivgg.vgg import random_weights
    from minivgg.weights import CAFFE, write_weights

    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    weights = str(tmp_path / "vgg16-test.h5")
    write_weights(weights, random_weights("vgg16", seed=1), {"arch": "vgg16", "source_format": "test",
                                                             "convention": CAFFE})
    assert main(["sweep", "--list-params", "--method", "invert", "--weights", weights]) == 0
    line = [l for l in capsys.readouterr().out.splitlines() if l.startswith("arch ")]
    assert line and line[0].endswith("default vgg16")
