"""The red-team findings on the `minivgg` command line: absurd values refused at parse
time with their range, outputs that would destroy an input or a device refused before
any work, library warnings kept off stderr, and SIGTERM / SIGHUP ending a run as Ctrl-C
does (the current image and the log written, exit 130)."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers_cli import cli_files, style_args
from minivgg.cli import main
from minivgg.image import load_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return cli_files(tmp_path_factory.mktemp("fuzzcli"))


def _one_error(capsys):
    err = [l for l in capsys.readouterr().err.splitlines() if l.strip()]
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


VALUES = [
    (["--seed", "-1"], "--seed", "0 to 4294967295"),
    (["--seed", str(1 << 70)], "--seed", "0 to 4294967295"),
    (["--style-weight", "1e308"], "--style-weight", "[0, 1e+15]"),
    (["--content-weight", "nan"], "--content-weight", "[0, 1e+15]"),
    (["--tv-weight", "-1"], "--tv-weight", "[0, 1e+15]"),
    (["--lr", "inf"], "--lr", "(0, 1e+06]"),
    (["--lr", "0"], "--lr", "(0, 1e+06]"),
    (["--iters", "10000000000"], "--iters", "0 to 1000000"),
    (["--size", "-5"], "--size", "positive integer"),
    (["--style-scale", "1e300"], "--style-scale", "(0, 16]"),
    (["--style-layer-weights", "1,inf"], "--style-layer-weights", "[0, 1e+15]"),
    (["--momentum", "1.5"], "--momentum", "[0, 1)"),
    (["--history-size", "0"], "--history-size", "positive integer"),
]


@pytest.mark.parametrize("extra, option, span", VALUES, ids=[" ".join(v[0]) for v in VALUES])
def test_values_refused_at_parse_time_with_their_range(files, tmp_path, capsys, extra, option, span):
    out = tmp_path / "o.png"
    with pytest.raises(SystemExit) as e:
        main(style_args(files, out, *extra))
    assert e.value.code == 2
    line = _one_error(capsys)
    assert option in line and span in line, line
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("extra, span", [(["--alpha", "1e308"], "(0, 32]"), (["--beta", "0"], "(0, 16]"),
                                         (["--alpha-weight", "inf"], "[0, 1e+15]")])
def test_invert_values(files, tmp_path, capsys, extra, span):
    with pytest.raises(SystemExit):
        main(["invert", "--image", files["content"], "--out", str(tmp_path / "o.png"), *extra])
    assert span in _one_error(capsys)


def test_dream_values(files, tmp_path, capsys):
    for extra, span in ((["--octaves", "1000"], "up to 16"), (["--seed", "-3"], "0 to 4294967295"),
                        (["--zoom-scale", "nan"], "(0, 8]")):
        with pytest.raises(SystemExit):
            main(["dream", "--image", files["content"], "--out", str(tmp_path / "o.png"), *extra])
        assert span in _one_error(capsys)


def test_outputs_never_destroy_inputs(files, tmp_path, capsys):
    content_bytes = open(files["content"], "rb").read()
    out = tmp_path / "o.png"
    cases = [
        (style_args(files, files["content"], "--iters", "1"), "is also an input"),
        (style_args(files, out, "--iters", "1", "--log", str(out)), "--log is the same file as --out"),
        (style_args(files, out, "--iters", "1", "--log", files["style"]), "is also an input"),
        (style_args(files, out, "--iters", "1", "--log", files["weights"]), "is also an input"),
        (style_args(files, "/proc/fuzz.png", "--iters", "1"), "cannot write in /proc"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2
        line = _one_error(capsys)
        assert needle in line, line
    assert open(files["content"], "rb").read() == content_bytes
    assert os.listdir(tmp_path) == []


def test_output_that_is_a_device_or_fifo_is_refused(files, tmp_path, capsys):
    fifo = tmp_path / "f.png"
    os.mkfifo(fifo)
    for out in (str(fifo),):
        assert main(style_args(files, out, "--iters", "1")) == 2
        assert "not a regular file" in _one_error(capsys)
    log = tmp_path / "l.csv"
    os.mkfifo(log)
    assert main(style_args(files, tmp_path / "o.png", "--iters", "1", "--log", str(log))) == 2
    assert "not a regular file" in _one_error(capsys)
    assert sorted(os.listdir(tmp_path)) == ["f.png", "l.csv"]


def test_decompression_bomb_image_is_one_error_line(files, tmp_path, capsys):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("L", (12000, 8000)).save(big)  # 96 MP: above Pillow's warning threshold
    assert main(style_args(files, tmp_path / "o.png", "--iters", "1", "--content", str(big))) == 2
    line = _one_error(capsys)
    assert "big.png" in line


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_and_sighup_stop_and_still_write(files, tmp_path, sig):
    out, log = tmp_path / "o.png", tmp_path / "o.csv"
    env = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "minivgg", *style_args(files, out, "--iters", "100000", "--optimizer", "adam",
                                                      "--save-every", "1", "--log", str(log))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 240
        while not (tmp_path / "o_iter00002.png").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "the run never reached iteration 2"
            time.sleep(0.2)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert load_image(out).shape == (32, 40, 3)
    rows = open(log).read().splitlines()
    assert rows[0].startswith("iter,") and len(rows) >= 4
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    assert np.isfinite(np.asarray([float(r.split(",")[1]) for r in rows[1:]])).all()


ODD_VALUES = ["-1", "0", "1", "1e308", "-1e308", "nan", "inf", "-inf", "1e-320", "9" * 400, "0x10", "", " ",
              "1_000", "\x00", "3\n4", "\x1b[31m", "1e15", "4294967296", "-0"]
NUMERIC = {
    "style": ["--iters", "--lr", "--history-size", "--momentum", "--tol", "--seed", "--save-every", "--style-scale",
              "--content-weight", "--style-weight", "--tv-weight", "--size", "--scales", "--style-blend",
              "--style-layer-weights"],
    "invert": ["--alpha", "--beta", "--alpha-weight", "--tv-weight", "--content-weight", "--size"],
    "dream": ["--channel", "--octaves", "--octave-scale", "--iters", "--lr", "--jitter", "--zoom-steps",
              "--zoom-scale", "--seed", "--size"],
    "visualize": ["--channel", "--size", "--jitter", "--tv-weight", "--l2-weight"],
    "texture": ["--size", "--source-size", "--style-weight", "--tv-weight", "--layer-weights"],
}


def test_odd_option_values_parse_or_fail_in_one_clean_line(capsys):
    """Every numeric option of the method commands with 20 odd values: either a finite
    value comes out, or one printable error line and exit 2 (nothing runs: parse only)."""
    from minivgg.cli import build_parser

    parser = build_parser()
    required = {"style": ["--content", "a.png", "--style", "b.png"], "invert": ["--image", "a.png"],
                "dream": ["--image", "a.png"], "visualize": ["--layer", "relu1_1"], "texture": ["--image", "a.png"]}
    tried = 0
    for command, options in NUMERIC.items():
        for opt in options:
            for value in ODD_VALUES:
                tried += 1
                try:
                    args = parser.parse_args([command, *required[command], f"{opt}={value}"])
                except SystemExit as e:
                    assert e.code == 2
                    line = _one_error(capsys)
                    assert line.isprintable() and opt in line, line
                    continue
                v = getattr(args, opt[2:].replace("-", "_"))
                for x in (v if isinstance(v, list) else [v]):
                    assert np.isfinite(x) and x >= 0, (command, opt, value, v)
    assert tried == 20 * sum(len(o) for o in NUMERIC.values())
