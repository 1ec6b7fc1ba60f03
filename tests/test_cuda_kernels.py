"""CUDA-side checks. With nvcc: every kernels/*.cu compiles to PTX for sm_80 and
sm_90, and so does the exact text the loader hands to NVRTC (defines prepended,
header inlined) for other geometries and for double; the PTX has no shared memory
and no atomics. With a GPU and CuPy: every op of the "gpu" backend equals the
emulated one. Without them the tests are skipped, saying why."""

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import rel_err
from minivgg import MiniVGGError
from minivgg.backend import NO_GPU_MESSAGE
from minivgg.gpu import get_ops, sources

ROOT = Path(__file__).resolve().parents[1]
CU_FILES = sorted((ROOT / "kernels").glob("*.cu"))
ARCHS = ["sm_80", "sm_90"]


def _nvcc():
    nvcc = shutil.which("nvcc") or (shutil.which("nvcc", path="/usr/local/cuda/bin"))
    if nvcc is None:
        pytest.skip("nvcc not found on PATH: install the CUDA toolkit to check that the kernels compile")
    return nvcc


def _ptx(nvcc, src, arch, out, extra=()):
    proc = subprocess.run([nvcc, "--ptx", f"-arch={arch}", *extra, "-o", str(out), str(src)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr.lower(), proc.stderr
    return out.read_text()


def _check_ptx(ptx, kernels):
    for k in kernels:
        assert re.search(rf"\.entry\s+{k}\s*\(", ptx), f"kernel {k} missing from the PTX (extern \"C\" name)"
    assert ".shared" not in ptx and "atom." not in ptx and "red." not in ptx


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_cuda_ptx_compiles(path, arch, tmp_path):
    ptx = _ptx(_nvcc(), path, arch, tmp_path / f"{path.stem}.ptx")
    _check_ptx(ptx, sources.kernel_names(path.read_text()))


# the modules the backend builds besides the defaults: other geometries, double
VARIANTS = [
    ("conv", (("KH", 5), ("KW", 3), ("PAD", 2), ("STRIDE", 2), ("MINIVGG_REAL", "double"))),
    ("conv", (("KH", 3), ("KW", 3), ("PAD", 1), ("STRIDE", 1), ("MINIVGG_REAL", "float"))),
    ("pool", (("POOL_K", 3), ("POOL_S", 2), ("MINIVGG_REAL", "float"))),
    ("losses", (("MINIVGG_REAL", "double"),)),
    ("optim", (("MINIVGG_REAL", "double"),)),
    ("bias", (("MINIVGG_REAL", "double"),)),
]


@pytest.mark.nvcc
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("name, defines", VARIANTS, ids=lambda v: str(v))
def test_cuda_ptx_of_loader_text(name, defines, arch, tmp_path):
    """What cupy.RawModule compiles: one self-contained text, no include path needed."""
    src = tmp_path / f"{name}.cu"
    src.write_text(sources.kernel_source(name, defines))
    ptx = _ptx(_nvcc(), src, arch, tmp_path / f"{name}.ptx", extra=("-std=c++14",))
    _check_ptx(ptx, sources.kernel_names(src.read_text()))


def test_cuda_missing_gives_one_clear_error():
    """Selecting the GPU without CuPy or a device: MiniVGGError with one line, never CuPy's traceback."""
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() > 0:
            pytest.skip("a CUDA device is present")
    except Exception:
        pass
    with pytest.raises(MiniVGGError) as e:
        get_ops("gpu")
    assert str(e.value) == NO_GPU_MESSAGE and "\n" not in str(e.value)


# ---- on a real GPU -----------------------------------------------------------------------


def _gpu_ops():
    try:
        import cupy

        if cupy.cuda.runtime.getDeviceCount() < 1:
            raise RuntimeError
    except Exception:
        pytest.skip("needs CuPy and a CUDA device (this machine has none); the emulated tests cover the same code")
    return cupy, get_ops("gpu"), get_ops("emulated")


def _both(cp, f_gpu, f_emu, *arrays):
    """Run f on GPU copies and on the host arrays; return (gpu result on host, emulated result)."""
    g = f_gpu(*[cp.asarray(a) if isinstance(a, np.ndarray) else a for a in arrays])
    e = f_emu(*arrays)
    host = lambda r: tuple(host(t) for t in r) if isinstance(r, tuple) else (r.get() if hasattr(r, "get") else r)  # noqa: E731
    return host(g), e


@pytest.mark.gpu
def test_cuda_layers_match_emulation(rng):
    cp, gpu, emu = _gpu_ops()
    x = rng.standard_normal((2, 3, 7, 5)).astype(np.float32)
    W = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    (yg, _), (ye, ce) = _both(cp, lambda *a: gpu.conv2d_forward(*a, 1, 1, {}), lambda *a: emu.conv2d_forward(*a, 1, 1, {}), x, W, b)
    assert rel_err(yg, ye) < 1e-5
    yg2, cg = gpu.conv2d_forward(cp.asarray(x), cp.asarray(W), cp.asarray(b), 1, 1, {})
    dy = rng.standard_normal(ye.shape).astype(np.float32)
    dg = gpu.conv2d_backward(cp.asarray(dy), cg, True)
    de = emu.conv2d_backward(dy, ce, True)
    for a, e in zip(dg, de):
        assert rel_err(a.get(), e) < 1e-5
    r = gpu.relu_forward(cp.asarray(ye))
    np.testing.assert_array_equal(r.get(), emu.relu_forward(ye))
    np.testing.assert_array_equal(gpu.relu_backward(cp.asarray(dy), r).get(), emu.relu_backward(dy, emu.relu_forward(ye)))
    for k, s in [(2, 2), (3, 2)]:
        a = gpu.avg_pool2d_forward(cp.asarray(x), k, s)
        assert rel_err(a.get(), emu.avg_pool2d_forward(x, k, s)) < 1e-6
        assert rel_err(gpu.avg_pool2d_backward(a, x.shape, k, s).get(),
                       emu.avg_pool2d_backward(a.get(), x.shape, k, s)) < 1e-6
        m, mc = gpu.max_pool2d_forward(cp.asarray(x), k, s)
        me, mce = emu.max_pool2d_forward(x, k, s)
        np.testing.assert_array_equal(m.get(), me)
        np.testing.assert_array_equal(gpu.max_pool2d_backward(m, mc).get(), emu.max_pool2d_backward(me, mce))
    xl = x.reshape(2, -1)
    Wl = rng.standard_normal((6, xl.shape[1])).astype(np.float32)
    bl = rng.standard_normal(6).astype(np.float32)
    assert rel_err(gpu.linear_forward(cp.asarray(xl), cp.asarray(Wl), cp.asarray(bl)).get(), emu.linear_forward(xl, Wl, bl)) < 1e-5


@pytest.mark.gpu
def test_cuda_losses_and_optim_match_emulation(rng):
    cp, gpu, emu = _gpu_ops()
    x = rng.standard_normal((1, 3, 9, 7)).astype(np.float32)
    for beta in (2.0, 1.5):
        vg, gg = gpu.total_variation(cp.asarray(x), beta)
        ve, ge = emu.total_variation(x, beta)
        assert abs(vg - ve) <= 1e-5 * abs(ve) and rel_err(gg.get(), ge) < 1e-5
    A = np.eye(3, dtype=np.float32)
    vg, gg = gpu.style_loss(cp.asarray(x), cp.asarray(A))
    ve, ge = emu.style_loss(x, A)
    assert abs(vg - ve) <= 1e-5 * abs(ve) and rel_err(gg.get(), ge) < 1e-5
    z, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    zg, mg, vg_ = cp.asarray(z), cp.zeros_like(cp.asarray(x)), cp.zeros_like(cp.asarray(x))
    for k in (1, 2, 3):
        gpu.adam_update(zg, cp.asarray(x), mg, vg_, k, 0.1)
        emu.adam_update(z, x, m, v, k, 0.1)
    assert rel_err(zg.get(), z) < 1e-6


@pytest.mark.gpu
def test_cuda_vgg_matches_emulation():
    cp, gpu, emu = _gpu_ops()
    from minivgg import load_vgg
    from minivgg.vgg import random_weights

    params = random_weights("vgg16", seed=2)
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((1, 3, 36, 44)) * 40).astype(np.float32)
    ng = load_vgg("vgg16", weights=params, device="gpu")
    ne = load_vgg("vgg16", weights=params, device="emulated")
    fg = ng.forward(cp.asarray(x), ["relu3_3", "pool5"])
    fe = ne.forward(x, ["relu3_3", "pool5"])
    assert rel_err(fg["pool5"].get(), fe["pool5"]) < 1e-5
    dy = rng.standard_normal(fe["pool5"].shape).astype(np.float32)
    assert rel_err(ng.backward({"pool5": cp.asarray(dy)}).get(), ne.backward({"pool5": dy})) < 1e-4
