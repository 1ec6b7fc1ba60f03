"""minivgg.warmup and `minivgg warmup`: what a run needs is compiled before the run, the
demo's budget never pays for compiling, and the command reports what it did."""

import os
import subprocess
import sys

import numpy as np
import pytest

from minivgg import warmup as wu
from minivgg.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_compiles_nothing_after_the_warmup(tmp_path, monkeypatch):
    """After warmup(the demo's pooling and methods), the demo at its own default size (128:
    Winograd kept and made as it goes, im2col) specializes no numba kernel further, and its
    style transfer changes the image (a compile-eaten budget left style.png == content.png)."""
    from PIL import Image

    from minivgg.cli.demo import run_demo

    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    report = wu.warmup("cpu", poolings=("avg",), methods=("style", "texture"), max_side=128, quiet=True)
    assert report.cache_dir and report.target
    before = wu._signatures()
    assert sum(before.values()) > 0
    assert run_demo(str(tmp_path / "demo"), iters=2, quiet=True) == 0
    after = wu._signatures()
    assert {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)} == {}
    style = np.asarray(Image.open(tmp_path / "demo" / "style.png"), np.int16)
    content = np.asarray(Image.open(tmp_path / "demo" / "content.png"), np.int16)
    assert style.shape == content.shape and np.abs(style - content).mean() > 0.5


def test_demo_budget_counts_the_optimization_only(tmp_path, monkeypatch, capsys):
    """A budget smaller than setting a run up (targets, the first objective) still gets the
    first update in: the clock starts at row 0, after the setup."""
    import minivgg.cli.demo as demo

    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    assert demo.run_demo(str(tmp_path / "d"), size=32, iters=3, quiet=False, budget=0.0) == 0
    err = capsys.readouterr().err
    assert "style: 1 iterations (time budget reached)" in err
    assert "texture: 1 iterations (time budget reached)" in err


def test_warmup_command_reports_what_it_compiled(capsys):
    assert main(["warmup", "--pooling", "avg", "--methods", "style", "--list"]) == 0
    out = capsys.readouterr().out
    assert "CPU kernel specialization" in out and "numba cache:" in out
    assert "minivgg.cpu." in out  # --list: one line per kernel


def test_warmup_command_bad_arguments(capsys):
    assert_exit = pytest.raises(SystemExit)
    with assert_exit as e:
        main(["warmup", "--methods", "style,paint"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown method 'paint'" in err
    with pytest.raises(SystemExit):
        main(["warmup", "--pooling", "median"])


def test_a_cold_cache_is_announced_in_one_line(tmp_path):
    """With an empty numba cache the warmup says, before compiling, what it compiles, about
    how long it takes and where the cache is (only the index is read here: nothing compiled)."""
    code = "import sys; from minivgg.warmup import announce; print(announce(sys.stdout))"
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "nbcache"))
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line, verdict = r.stdout.strip().splitlines()
    assert line.startswith("minivgg: compiling CPU kernels for ") and "first run" in line
    assert "minutes" in line and str(tmp_path / "nbcache") in line
    assert verdict == "True"
