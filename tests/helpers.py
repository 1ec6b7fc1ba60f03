"""What the layer and backend tests share.

- ``BACKENDS`` / the ``backend`` fixture: one parametrization over every backend this
  host can run: the reference, the CPU backend (at its default ISA level, and at every
  level the host supports, forced as tests/test_gemm.py does), the emulated GPU path, and
  the GPU when one is present. A test that takes ``backend`` runs on each.
- ``check_vs_torch``: in the spirit of tinygrad's helper_test_op: the same numpy inputs
  through ours and through torch, forward values compared, and our backward against
  ``torch.autograd.grad`` with a random upstream gradient.
- ``assert_float32_as_good_as_torch`` and the torch VGG (tests/helpers_torch.py).
"""

import contextlib

import numpy as np
import pytest

from conftest import rel_err
from helpers_torch import assert_float32_as_good_as_torch, torch_reference, torch_vgg  # noqa: F401
from minivgg.backend import get_backend, to_host
from minivgg.cpu.fast import isa


def _gpu_present():
    try:
        get_backend("gpu")
        return True
    except Exception:
        return False


def _cpu_level(name):
    return pytest.param(f"cpu-{name}", marks=pytest.mark.skipif(name not in isa.supported(), reason=(
        f"ISA level {name} needs a host that has it; this one's level is {isa.host_level()}")))


BACKENDS = (["reference", "cpu"] + [_cpu_level(n) for n in isa.LEVELS] + ["emulated"]
            + [pytest.param("gpu", marks=[pytest.mark.gpu, pytest.mark.skipif(not _gpu_present(), reason=(
                "needs CuPy and a CUDA device; the emulated backend covers the same code"))])])


@contextlib.contextmanager
def on_backend(param):
    """The Backend named by a BACKENDS entry, with its ISA level forced for cpu-<level>."""
    if param.startswith("cpu-"):
        level = param[4:]
        with isa.forced(level, gemm=None if level == "blas" else "ours"):
            yield get_backend("cpu")
    else:
        yield get_backend(param)


@pytest.fixture(params=BACKENDS)
def backend(request):
    with on_backend(request.param) as b:
        yield b


def check_vs_torch(forward, torch_fn, inputs, backend, bound=1e-5, seed=7):
    """Run ``forward(backend, *inputs on the device) -> (y, backward)``, with
    ``backward(dy) -> [gradient of each input or None]``, and torch's ``torch_fn(*tensors)``
    on the same numpy ``inputs``; compare y, and each gradient with torch.autograd.grad's
    for the same random upstream gradient dy (rel_err <= bound). Returns (y, grads) on the host."""
    torch = pytest.importorskip("torch")
    dev = [backend.asarray(np.ascontiguousarray(a)) for a in inputs]
    y, backward = forward(backend, *dev)
    dy = np.random.default_rng(seed).standard_normal(y.shape).astype(inputs[0].dtype)
    grads = backward(backend.asarray(dy))
    ts = [torch.from_numpy(np.array(a)).requires_grad_(True) for a in inputs]
    yt = torch_fn(*ts)
    asked = [(t, g) for t, g in zip(ts, grads) if g is not None]
    tg = torch.autograd.grad(yt, [t for t, _ in asked], torch.from_numpy(dy))
    e = rel_err(to_host(y), yt.detach().numpy())
    assert e <= bound, f"{backend.name}: forward off by {e:.3g} > {bound:.3g}"
    for i, ((_, g), want) in enumerate(zip(asked, tg)):
        e = rel_err(to_host(g), want.numpy())
        assert e <= bound, f"{backend.name}: gradient {i} off by {e:.3g} > {bound:.3g}"
    return to_host(y), [None if g is None else to_host(g) for g in grads]
