import numpy as np
import pytest


def pytest_configure(config):
    for name, what in [
        ("slow", "takes more than a few seconds"),
        ("torch", "compares with PyTorch (skipped when torch is not installed)"),
        ("nvcc", "compiles CUDA sources with nvcc (skipped when nvcc is absent)"),
        ("gpu", "needs a real CUDA GPU and CuPy (skipped otherwise)"),
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
