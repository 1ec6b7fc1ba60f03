"""The command line on `style`: the log CSV, the loss plot, snapshots, determinism,
atomic outputs, Ctrl-C on a running process, and bad input (one line, exit 2, no
output)."""

import csv
import os
import signal
import subprocess
import sys
import time

import pytest

from helpers_cli import cli_files, style_args
from minivgg import load_vgg
from minivgg.cli import main
from minivgg.image import atomic_write, load_image
from minivgg.methods import style_transfer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return cli_files(tmp_path_factory.mktemp("cli"))


def read_log(path):
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    return rows[0], rows[1:]


def no_temp_files(folder):
    return not [n for n in os.listdir(folder) if ".tmp-" in n]


def test_log_plot_snapshots(files, tmp_path):
    out, log = tmp_path / "out.png", tmp_path / "run.csv"
    rc = main(style_args(files, out, "--iters", "3", "--optimizer", "adam", "--log", str(log), "--plot",
                         "--save-every", "2"))
    assert rc == 0
    header, rows = read_log(log)
    assert header[:6] == ["iter", "total", "content", "style", "tv", "seconds"]
    assert [int(r[0]) for r in rows] == [0, 1, 2, 3]
    img = load_image(out)
    assert img.shape == (32, 40, 3)
    assert (tmp_path / "run.png").exists() and (tmp_path / "out_iter00002.png").exists()
    assert no_temp_files(tmp_path)
    # row 0 is the objective at the initial image, the same as through the Python API
    net = load_vgg("vgg16", weights=files["weights"])
    r = style_transfer(net, load_image(files["content"]), [load_image(files["style"])], iters=0, size=40)
    assert float(rows[0][1]) == pytest.approx(r.history[0]["total"], rel=1e-12)
    from minivgg.methods.style import CONTENT_WEIGHT, STYLE_WEIGHT, TV_WEIGHT, content_gain, content_targets

    content = load_image(files["content"])
    kappa = content_gain(net, content, content_targets(net, content, ["relu4_2"]))  # TV in content units
    total = (CONTENT_WEIGHT * float(rows[1][2]) + STYLE_WEIGHT * float(rows[1][3])
             + TV_WEIGHT * kappa * float(rows[1][4]))
    assert float(rows[1][1]) == pytest.approx(total, rel=1e-9)


def test_same_seed_same_output(files, tmp_path):
    a, b, c = tmp_path / "a.png", tmp_path / "b.png", tmp_path / "c.png"
    assert main(style_args(files, a, "--iters", "2", "--seed", "1")) == 0
    assert main(style_args(files, b, "--iters", "2", "--seed", "1")) == 0
    assert main(style_args(files, c, "--iters", "0", "--seed", "2")) == 0
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_options_reach_the_method(files, tmp_path, monkeypatch):
    import minivgg.methods as methods

    seen = {}

    def fake(net, content, styles, **kw):
        seen.update(kw, n_styles=len(styles))
        raise SystemExit(0)

    monkeypatch.setattr(methods, "style_transfer", fake)
    with pytest.raises(SystemExit):
        main(style_args(files, tmp_path / "o.png", "--style", files["style"], files["style"], "--style-blend", "1,3",
                        "--content-layers", "relu3_1,relu4_2", "--style-layers", "relu1_1,relu2_1",
                        "--style-layer-weights", "0.5,2", "--content-weight", "5", "--style-weight", "100",
                        "--tv-weight", "0", "--init", "content", "--original-colors", "--scales", "16,32",
                        "--style-scale", "0.5", "--optimizer", "lbfgs", "--history-size", "7",
                        "--line-search", "strong_wolfe", "--lr", "0.5", "--seed", "9", "--iters", "11"))
    assert seen["n_styles"] == 2 and seen["style_blend"] == [1.0, 3.0]
    assert seen["content_layers"] == ["relu3_1", "relu4_2"] and seen["style_layers"] == ["relu1_1", "relu2_1"]
    assert seen["style_layer_weights"] == [0.5, 2.0] and seen["content_weight"] == 5.0
    assert seen["style_weight"] == 100.0 and seen["tv_weight"] == 0.0 and seen["init"] == "content"
    assert seen["original_colors"] and seen["scales"] == [16, 32] and seen["style_scale"] == 0.5
    assert seen["optim_options"]["history_size"] == 7 and seen["optim_options"]["line_search"] == "strong_wolfe"
    assert seen["lr"] == 0.5 and seen["seed"] == 9 and seen["iters"] == 11


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "x.png"
    target.write_bytes(b"old")

    def fail(tmp):
        with open(tmp, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        atomic_write(str(target), fail)
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["x.png"]


def run_cli(args, env_extra=None, **kw):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "minivgg", *args], capture_output=True, text=True, env=env, **kw)


def error_lines(stderr):
    return [l for l in stderr.splitlines() if l.strip() and not l.startswith("minivgg: warning")]


BAD = {
    "missing image": (["--content", "/no/such/file.jpg"], "no such image"),
    "unreadable image": (["--content", "BADFILE"], "cannot read image"),
    "unknown layer": (["--style-layers", "relu1_1,relu9_9"], "valid layers: conv1_1"),
    "size zero": (["--size", "0"], "positive"),
    "negative size": (["--size", "-5"], "positive"),
    "too large": (["--size", "300000"], "GiB"),
    "blend count": (["--style-blend", "1,2"], "blend"),
    "bad init file": (["--init", "/no/such/init.png"], "no such image"),
    "no gpu": (["--device", "gpu"], "CUDA"),
    "missing weights": (["--weights", "/no/such/w.h5"], "no such weights"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_one_line_exit_2_no_output(files, tmp_path, capsys, case):
    extra, needle = BAD[case]
    if case == "no gpu":
        try:
            import cupy

            if cupy.cuda.runtime.getDeviceCount() > 0:
                pytest.skip("a GPU is present")
        except Exception:
            pass
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    extra = [str(bad) if e == "BADFILE" else e for e in extra]
    out, log = tmp_path / "o.png", tmp_path / "o.csv"
    args = style_args(files, out, "--iters", "1", "--log", str(log), "--plot")
    for i in range(0, len(extra), 2):  # later options override the defaults above
        args += extra[i:i + 2]
    with pytest.raises(SystemExit) if extra[0] == "--size" and int(extra[1]) <= 0 else _noop() as ctx:
        rc = main(args)
    rc = ctx.value.code if ctx is not None and hasattr(ctx, "value") else rc
    err = error_lines(capsys.readouterr().err)
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert sorted(os.listdir(tmp_path)) == ["bad.jpg"]


class _noop:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_bad_input_in_a_subprocess_has_no_traceback(files, tmp_path):
    p = run_cli(style_args(files, tmp_path / "o.png", "--iters", "1", "--content-layers", "relu4_9"), timeout=300)
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    err = error_lines(p.stderr)
    assert len(err) == 1 and err[0].startswith("error: unknown layer 'relu4_9'")
    assert not (tmp_path / "o.png").exists()


def test_sigint_stops_and_still_writes(files, tmp_path):
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
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    assert load_image(out).shape == (32, 40, 3)
    header, rows = read_log(log)
    assert header[0] == "iter" and len(rows) >= 3
    assert [int(r[0]) for r in rows] == list(range(len(rows)))
    assert no_temp_files(tmp_path)


def test_help_documents_the_objective():
    p = run_cli(["style", "--help"], timeout=120)
    assert p.returncode == 0
    for text in ("content_weight * Lc", "1/(4 N_l^2 M_l^2)", "--style-blend", "--original-colors", "--scales",
                 "--save-every", "--log", "--plot", "--quiet", "--device", "emulated"):
        assert text in p.stdout, text


def test_init_file_tol_and_max_pooling(files, tmp_path):
    """--init FILE starts from exactly that image; --tol stops early; --pooling max runs."""
    out, log = tmp_path / "o.png", tmp_path / "o.csv"
    assert main(style_args(files, out, "--init", files["style"], "--iters", "30", "--optimizer", "adam",
                           "--tol", "0.5", "--log", str(log), "--pooling", "max")) == 0
    _, rows = read_log(log)
    assert 2 <= len(rows) < 31
    net = load_vgg("vgg16", weights=files["weights"], pooling="max")
    r = style_transfer(net, load_image(files["content"]), [load_image(files["style"])], init="style", iters=0)
    assert float(rows[0][1]) == pytest.approx(r.history[0]["total"], rel=1e-12)


def test_sigint_during_setup_stops_at_the_first_iteration(files, tmp_path, monkeypatch):
    """A Ctrl-C while the weights load is remembered: the run stops at row 0 and still
    writes the initial image and the log."""
    from minivgg.cli import common

    real = common.load_net

    def load_and_interrupt(args, **kw):
        net = real(args, **kw)
        os.kill(os.getpid(), signal.SIGINT)
        return net

    monkeypatch.setattr(common, "load_net", load_and_interrupt)
    out, log = tmp_path / "o.png", tmp_path / "o.csv"
    assert main(style_args(files, out, "--iters", "50", "--log", str(log))) == 130
    _, rows = read_log(log)
    assert len(rows) == 1 and rows[0][0] == "0"
    assert load_image(out).shape == (32, 40, 3)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
