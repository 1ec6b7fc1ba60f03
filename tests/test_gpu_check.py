"""scripts/gpu_check.sh and scripts/gpu_check.py, as far as a machine without a GPU can
check them: argument handling, the one-line answer and distinct exit code without a GPU,
and the comparison logic run on the emulated device (the same launch code and CUDA
kernels as the gpu device), which must pass, and fail on an injected mismatch."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SH = os.path.join(ROOT, "scripts", "gpu_check.sh")
PY = os.path.join(ROOT, "scripts", "gpu_check.py")
NO_GPU = 3

needs_bash = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _sh(*args, **env):
    e = dict(os.environ, GPU_CHECK_NVIDIA_SMI="/nonexistent/nvidia-smi", **env)
    return subprocess.run(["bash", SH, *args], cwd=ROOT, env=e, capture_output=True, text=True, timeout=60)


@needs_bash
def test_sh_help_and_bad_arguments():
    r = _sh("--help")
    assert r.returncode == 0 and r.stdout.startswith("usage: scripts/gpu_check.sh")
    assert "exit status" in r.stdout and "cupy-cuda12x" in r.stdout
    for args, what in [(("--frobnicate",), "unknown argument '--frobnicate'"), (("--sizes", "big"), "--sizes"),
                       (("--budget",), "--budget"), (("--weights", "/nonexistent.h5"), "--weights")]:
        r = _sh(*args)
        assert r.returncode == 2, args
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: ") and what in r.stderr, r.stderr


@needs_bash
def test_sh_without_a_gpu_says_so_in_one_line(tmp_path):
    venv = tmp_path / "venv"
    r = _sh("--venv", str(venv))
    assert r.returncode == NO_GPU
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "no NVIDIA GPU found" in r.stderr
    assert not venv.exists()  # nothing installed


def _py(*args):
    return subprocess.run([sys.executable, PY, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_py_without_a_gpu_says_so_in_one_line():
    pytest.importorskip("numpy")
    from minivgg.backend import check_device
    from minivgg.errors import MiniVGGError

    try:
        check_device("gpu")
        pytest.skip("this machine has a GPU")
    except MiniVGGError:
        pass
    r = _py("--device", "gpu")
    assert r.returncode == NO_GPU and r.stderr.count("\n") == 1 and "no gpu device" in r.stderr
    assert _py("--frobnicate").returncode == 2


def test_py_comparison_passes_on_the_emulated_device_and_catches_an_injected_mismatch():
    r = _py("--device", "emulated", "--quick", "--size", "36")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "vgg16 avg random" in r.stdout and "vgg16 max random" in r.stdout and "0 mismatches" in r.stdout
    r = _py("--device", "emulated", "--quick", "--size", "36", "--inject-mismatch")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH vgg16 avg random relu3_1" in r.stdout  # the perturbed layer is the first one caught
