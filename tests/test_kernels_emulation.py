"""The emulation harness itself: the kernels' sources obey the rules that let a CPU
run them, the launcher checks every argument against the kernel's C signature, the
compiled libraries are cached, and the whole kernel set runs clean under
AddressSanitizer + UndefinedBehaviorSanitizer (built with -fsanitize=address,undefined)."""

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from minivgg import MiniVGGError
from minivgg.gpu import emulate, get_ops, sources

ROOT = Path(__file__).resolve().parents[1]
KERNELS = ROOT / "kernels"
CU_FILES = sorted(KERNELS.glob("*.cu"))


def test_kernel_sources_present():
    assert {p.stem for p in CU_FILES} >= {"conv", "bias", "relu", "pool", "losses", "optim"}
    assert sources.kernels_dir() == KERNELS
    assert sources.kernel_files() == [p.stem for p in CU_FILES]


@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_kernel_source_rules(path):
    """No host headers, no shared memory, barriers or atomics; extern "C" grid-stride kernels."""
    text = path.read_text()
    code = re.sub(r"//[^\n]*", "", text)  # the rules apply to code, not to comments
    assert re.findall(r'#\s*include\s*[<"]([^>"]+)', code) == ["common.cuh"]
    for banned in ("__shared__", "__syncthreads", "atomic", "printf", "malloc"):
        assert banned not in code, banned
    kernels = sources.kernel_names(text)
    assert kernels and len(re.findall(r"__global__", code)) == len(kernels)
    assert code.count("GRID_STRIDE_LOOP(") == len(kernels)  # every kernel is one grid-stride loop


def test_kernel_source_expansion():
    src = sources.kernel_source("pool", (("POOL_K", 3), ("POOL_S", 2)))
    assert src.startswith("#define POOL_K 3\n#define POOL_S 2\n")
    assert "#include" not in src and "MINIVGG_COMMON_CUH" in src
    assert sources.kernel_names(src) == ["avg_pool_forward", "avg_pool_backward", "max_pool_forward", "max_pool_backward"]


def test_emulated_signature_checks():
    ops = get_ops("emulated")
    k = ops.kernel("relu", "relu_forward", np.float32)
    assert k.signature == "FFq" and k.writable == "rwr"
    x, y = np.ones(10, np.float32), np.empty(10, np.float32)
    k((1,), (32,), (x, y, np.int64(10)))
    np.testing.assert_array_equal(y, x)
    with pytest.raises(TypeError, match="int64"):
        k((1,), (32,), (x, y, 10))  # a Python int: CuPy would pass it as a different C type
    with pytest.raises(TypeError, match="int64"):
        k((1,), (32,), (x, y, np.int32(10)))
    with pytest.raises(TypeError, match="float32"):
        k((1,), (32,), (x.astype(np.float64), y, np.int64(10)))
    with pytest.raises(TypeError, match="arguments"):
        k((1,), (32,), (x, y))
    with pytest.raises(ValueError, match="contiguous"):
        k((1,), (32,), (np.ones(20, np.float32)[::2], y, np.int64(10)))
    y.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        k((1,), (32,), (x, y, np.int64(10)))
    y2 = np.empty(10, np.float32)
    for grid, block in [((0,), (32,)), ((1,), (0,)), ((1,), (2048,)), ((1,), (32, 32, 2))]:
        with pytest.raises(ValueError, match="launch configuration"):
            k(grid, block, (x, y2, np.int64(10)))


def test_emulated_multidimensional_grid():
    """blockIdx/threadIdx follow CUDA's x-fastest order; a 1-D kernel sees only x."""
    ops = get_ops("emulated")
    k = ops.kernel("relu", "relu_forward", np.float32)
    x, y = np.arange(1, 50, dtype=np.float32), np.zeros(49, np.float32)
    k((2, 3), (4, 2), (x, y, np.int64(49)))  # gridDim.x * blockDim.x = 8 threads stride the data
    np.testing.assert_array_equal(y, x)


def test_emulated_modules_are_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVGG_EMULATE_CACHE", str(tmp_path))
    a = emulate.build("relu", (("MINIVGG_REAL", "float"),), sanitize=False)
    mtime = a.stat().st_mtime_ns
    b = emulate.build("relu", (("MINIVGG_REAL", "float"),), sanitize=False)
    c = emulate.build("relu", (("MINIVGG_REAL", "double"),), sanitize=False)
    assert a == b and a.stat().st_mtime_ns == mtime and c != a
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".so", ".so"]  # no leftovers


def _bad_kernels(tmp_path, body):
    d = tmp_path / "kernels"
    d.mkdir()
    shutil.copy(KERNELS / "common.cuh", d)
    (d / "bad.cu").write_text('#include "common.cuh"\n' + textwrap.dedent(body))
    return d


@pytest.mark.parametrize("real", ["float", "double"])
@pytest.mark.parametrize("path", CU_FILES, ids=lambda p: p.name)
def test_kernel_builds_without_warnings(path, real, tmp_path):
    """The emulation's translation unit is warning-free even with -Wextra -Wconversion."""
    cxx = emulate.compiler()
    src = tmp_path / "tu.cpp"
    src.write_text(emulate.translation_unit(path.stem, (("MINIVGG_REAL", real),)))
    flags = [f for f in emulate.FLAGS if f not in ("-shared",)]
    proc = subprocess.run([cxx, *flags, "-fsyntax-only", "-Wextra", "-Wconversion", "-Wno-sign-conversion", "-Werror",
                           "-I", str(emulate.HEADER.parent), str(src)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_emulated_refuses_shared_memory(tmp_path, monkeypatch):
    """__shared__/__syncthreads are left undefined, so a kernel that needs them cannot be emulated wrongly."""
    d = _bad_kernels(tmp_path, """
        extern "C" __global__ void reduce(const real* x, real* y) {
            __shared__ real buf[32];
            buf[threadIdx.x] = x[threadIdx.x];
            __syncthreads();
            y[0] = buf[0];
        }
        """)
    monkeypatch.setenv("MINIVGG_KERNELS_DIR", str(d))
    monkeypatch.setenv("MINIVGG_EMULATE_CACHE", str(tmp_path / "cache"))
    with pytest.raises(MiniVGGError, match="emulation build failed"):
        emulate.build("bad", (), sanitize=False)


def _sanitized_env(tmp_path):
    if sys.platform != "linux":
        pytest.skip("the sanitizer run preloads the ASan runtime, which needs Linux")
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        pytest.skip("no C++ compiler (g++ or $CXX) for the emulation")
    asan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(asan) or not os.path.exists(asan):
        pytest.skip(f"{cxx} has no AddressSanitizer runtime (libasan.so)")
    env = dict(os.environ)
    env.update(
        LD_PRELOAD=asan,  # the ASan runtime must be loaded before anything else
        ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",  # the Python interpreter itself leaks by design
        UBSAN_OPTIONS="print_stacktrace=1",
        MINIVGG_EMULATE_SANITIZE="1",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    probe = subprocess.run([sys.executable, "-c", "import numpy"], env=env, capture_output=True, text=True, timeout=120)
    if probe.returncode != 0:  # e.g. a virtual-memory limit that leaves no room for ASan's shadow memory
        pytest.skip("the ASan runtime cannot start a Python process here: " + (probe.stderr.strip().splitlines() or ["?"])[-1])
    return env


SANITIZED_SCRIPT = """
import sys
import numpy as np
from minivgg.gpu import get_ops

out = {}
rng = np.random.default_rng(7)
for dt in (np.float32, np.float64):
    o = get_ops("emulated", threads=7, max_blocks=3)
    x = rng.standard_normal((2, 3, 7, 5)).astype(dt)
    W = rng.standard_normal((4, 3, 3, 3)).astype(dt)
    b = rng.standard_normal(4).astype(dt)
    for s, p in [(1, 1), (2, 0)]:
        y, c = o.conv2d_forward(x, W, b, s, p, {})
        out[f"conv{s}{p}{dt.__name__}"] = y
        out[f"dconv{s}{p}{dt.__name__}"] = o.conv2d_backward(y, c, True)[0]
    r = o.relu_forward(y)
    out["relu" + dt.__name__] = o.relu_backward(y * 3, r)
    yr, _ = o.conv2d_relu_forward(x, W, b, 1, 1, {})
    flag = np.empty(yr.shape, np.int32)  # refine.cu: a loose tolerance marks many ties
    o.launch(o.kernel("refine", "pool_tie_mark", dt), yr.size, yr, np.full(2, 1.0, dt), flag,
             np.int32(2), np.int32(4), np.int32(7), np.int32(5))
    at = np.flatnonzero(flag).astype(np.int64)
    ye = np.zeros_like(yr)
    o.launch(o.kernel("refine", "conv3x3_relu_exact", dt), at.size, x, W, b, ye, at, np.int64(at.size),
             np.int32(3), np.int32(4), np.int32(7), np.int32(5))
    out["ties" + dt.__name__] = flag.astype(dt)
    out["exact" + dt.__name__] = ye
    for k, s in [(2, 2), (3, 2), (2, 1)]:
        a = o.avg_pool2d_forward(x, k, s)
        out[f"avg{k}{s}{dt.__name__}"] = o.avg_pool2d_backward(a, x.shape, k, s)
        m, mc = o.max_pool2d_forward(x, k, s)
        out[f"max{k}{s}{dt.__name__}"] = o.max_pool2d_backward(m, mc)
    out["lin" + dt.__name__] = o.linear_forward(x.reshape(2, -1), rng.standard_normal((6, 105)).astype(dt), b[:1].repeat(6))
    for beta in (2.0, 1.5):
        out[f"tv{beta}{dt.__name__}"] = o.total_variation(x, beta)[1]
    out["style" + dt.__name__] = o.style_loss(x, np.eye(3, dtype=dt), mask=True)[1]
    out["content" + dt.__name__] = o.content_loss(x, x * 2)[1]
    out["alpha" + dt.__name__] = o.alpha_norm(x, 6.0)[1]
    z, m, v = x.copy(), np.zeros_like(x), np.zeros_like(x)
    o.adam_update(z, x, m, v, 1, 0.1)
    o.sgd_update(z, x, m, 0.1, 0.9, first=True)
    out["optim" + dt.__name__] = z
np.savez(sys.argv[1], **out)
print("sanitized run ok")
"""


def test_emulated_kernels_under_sanitizers(tmp_path):
    """Every kernel, both element types, odd shapes, a wrapping grid: no ASan/UBSan report,
    and the same numbers as the unsanitized (-O2) build."""
    env = _sanitized_env(tmp_path)
    script = tmp_path / "run.py"
    script.write_text(SANITIZED_SCRIPT)
    res = tmp_path / "out.npz"
    proc = subprocess.run([sys.executable, str(script), str(res)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "sanitized run ok" in proc.stdout, proc.stderr[-4000:]
    assert "AddressSanitizer" not in proc.stderr and "runtime error" not in proc.stderr, proc.stderr[-4000:]
    # the same script without sanitizers, in this process
    ns = {}
    sys_argv = sys.argv
    try:
        sys.argv = ["run.py", str(tmp_path / "plain.npz")]
        exec(compile(SANITIZED_SCRIPT, "run.py", "exec"), ns)
    finally:
        sys.argv = sys_argv
    a, b = np.load(res), np.load(tmp_path / "plain.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6, err_msg=k)


def test_emulated_sanitizer_catches_overflow(tmp_path):
    """The sanitized harness is not blind: a kernel that writes one element too far is reported."""
    env = _sanitized_env(tmp_path)
    d = _bad_kernels(tmp_path, """
        extern "C" __global__ void off_by_one(real* y, long long n) {
            GRID_STRIDE_LOOP(i, n + 1) { y[i] = 1; }
        }
        """)
    env["MINIVGG_KERNELS_DIR"] = str(d)
    env["MINIVGG_EMULATE_CACHE"] = str(tmp_path / "cache")
    script = (
        "import numpy as np\nfrom minivgg.gpu import emulate\n"
        "k = emulate.load_module('bad', (('MINIVGG_REAL', 'float'),)).get_function('off_by_one')\n"
        "y = np.zeros(37, np.float32)\nk((3,), (7,), (y, np.int64(37)))\nprint('not caught')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "not caught" not in proc.stdout
    assert "heap-buffer-overflow" in proc.stderr, proc.stderr[-3000:]


def test_emulated_ops_check_shapes_before_launching():
    """A kernel trusts its sizes; the ops refuse mismatched arrays instead of overrunning them."""
    ops = get_ops("emulated")
    y = np.ones((1, 2, 4, 4), np.float32)
    with pytest.raises(ValueError, match="relu_backward"):
        ops.relu_backward(np.ones((1, 2, 4, 3), np.float32), y)
    with pytest.raises(ValueError, match="avg_pool2d_backward"):
        ops.avg_pool2d_backward(np.ones((1, 2, 3, 2), np.float32), y.shape, 2, 2)
    _, cache = ops.conv2d_forward(y, np.ones((3, 2, 3, 3), np.float32), np.zeros(3, np.float32), 1, 1, {})
    with pytest.raises(ValueError, match="conv2d_backward"):
        ops.conv2d_backward(np.ones((1, 2, 4, 4), np.float32), cache, False)
    with pytest.raises(ValueError, match="adam_update"):
        ops.adam_update(y, y, y[:, :1].copy(), y.copy(), 1, 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.relu_forward(np.ones(4, np.float16))


def test_emulated_get_ops():
    assert get_ops("emulated") is get_ops("emulated")
    assert get_ops("emulated", threads=3) is not get_ops("emulated")
    with pytest.raises(MiniVGGError, match="unknown GPU backend"):
        get_ops("tpu")


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="POSIX file ownership")
def test_emulated_cache_folder_must_be_private(tmp_path, monkeypatch):
    """Libraries from the cache are loaded into the process: a folder others can write is refused."""
    monkeypatch.delenv("MINIVGG_EMULATE_CACHE", raising=False)
    monkeypatch.setattr(emulate.tempfile, "gettempdir", lambda: str(tmp_path))
    d = tmp_path / f"minivgg-emulate-{os.getuid()}"
    assert emulate.cache_dir() == d and (d.stat().st_mode & 0o077) == 0
    d.chmod(0o777)
    with pytest.raises(MiniVGGError, match="writable by others"):
        emulate.cache_dir()
