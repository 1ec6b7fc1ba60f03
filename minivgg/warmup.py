"""``minivgg warmup``: compile the kernels a run needs before any run is timed.

The CPU kernels are numba functions (``minivgg/cpu``), compiled on first use for the
argument types they meet and for this processor. Compiling all that a style transfer
needs takes from half a minute to a few minutes on a 2-core machine (docs/benchmarks.md);
without a warmup it happens inside the first iteration, which then looks like a hung
progress bar and eats any time budget. Every kernel is ``@njit(cache=True)``, so numba
writes what it compiled to its on-disk cache (the ``__pycache__`` folder next to the
sources, or ``$NUMBA_CACHE_DIR``) and later processes load it in a second or two. The
cache is per processor model: numba's index is keyed by the target CPU's name and
features (``NUMBA_CPU_NAME`` changes it), so a new machine, or a new target, compiles
again. The kernels built on llvmlite intrinsics (``cpu/fast/gemm.py``'s AVX-512 GEMM,
``cpu/fast/simd.py``'s shuffles) are cached like the others: the intrinsic's IR is compiled
into the calling ``@njit`` function, and that function's object code is what is stored.

:func:`warmup` runs, on random weights, each code path a run can take, at sizes small
enough that the arithmetic is negligible next to compiling:

- a forward + backward through VGG-19 at a few image sizes whose feature maps send some
  layers through Winograd keeping its transformed weights, some through Winograd making
  them as it goes, some through im2col, and conv1_1's backward through im2col in bands
  (``cpu/ops.py``: the thresholds; the bands only when a run's images can be large enough,
  ``max_side``), with the layers fused (conv + ReLU, the average pool's
  backward folded in) and unfused (a pre-ReLU conv or a pool output asked for), and the
  max-pool near-tie refinement;
- one or two iterations of each method's objective (content, style with deferred
  gradients, total variation, alpha-norm, activation) under L-BFGS with the line search,
  Adam and SGD.

Numba compiles by argument types, not sizes, so these cover the sizes of real runs; the
tests check that a demo run after a warmup compiles nothing more
(``tests/test_warmup.py``). On ``--device gpu`` the same workload compiles our CUDA
kernels (NVRTC, cached by CuPy) and on ``emulated`` builds their g++ emulation.
"""

import sys
import time

import numpy as np

# (height, width) of the images the forward/backward passes use, and why (VGG-19; see the
# thresholds in cpu/ops.py): 40x52: blocks 1-2 Winograd with their weights kept, blocks 3-5
# im2col, ragged 4x4 tiles; 112x128: block 3 kept, conv4_2-conv4_4 (512 x 512 channels on a
# 14x16 map: 16 tiles, the only count where both apply) Winograd making their weights as
# they go, block 5 im2col.
PASS_SHAPES = ((40, 52), (112, 128))
# conv1_1's im2col backward goes in bands of output rows above 2^21 column floats (27 x H x W):
# an image of 290x290 takes that path (only the first block is run there).
BAND_SHAPE = (290, 290)
# What the first line says compiling costs: measured on 2 cores from AVX-512 to AVX2
# (docs/benchmarks.md, "first run").
COMPILE_ESTIMATE = "about 1-3 minutes on 2 cores"
METHOD_SIDE = 48  # the methods' images: every VGG layer to relu5_1 still has a 3x3 map


def numba_dispatchers():
    """{qualified name: dispatcher} of every numba function loaded from minivgg's modules."""
    try:
        from numba.core.registry import CPUDispatcher
    except ImportError:  # pragma: no cover - numba is a hard dependency
        return {}
    found = {}
    for modname, mod in list(sys.modules.items()):
        if mod is None or not (modname == "minivgg" or modname.startswith("minivgg.")):
            continue
        for attr, obj in list(vars(mod).items()):
            if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == modname:
                found[f"{modname}.{attr}"] = obj
    return found


def _cpu_modules():
    """Import every module holding CPU kernels, so that their dispatchers exist."""
    from .cpu import im2col, ops  # noqa: F401
    from .cpu.fast import fused, gemm, simd, threads, winograd, winograd_codegen, winograd_kernels  # noqa: F401


def cache_dirs():
    """The folders where numba caches minivgg's compiled kernels (one per source folder:
    ``minivgg/cpu`` and ``minivgg/cpu/fast``, or their places under ``$NUMBA_CACHE_DIR``)."""
    _cpu_modules()
    found = set()
    for d in numba_dispatchers().values():
        try:
            found.add(d._cache._cache_path)  # numba internals: only to tell the user where it is
        except AttributeError:
            continue
    return sorted(found)


def cache_dir():
    """Where numba caches minivgg's compiled kernels, for messages (the folders joined by
    commas; None if it cannot be found out)."""
    return ", ".join(cache_dirs()) or None


# Kernels every CPU forward + backward calls, whichever GEMM (ours or BLAS) runs the
# products: when one of them has nothing in numba's cache for this CPU, the warmup is
# going to compile.
CORE_KERNELS = (
    "minivgg.cpu.im2col._im2col_rows",
    "minivgg.cpu.im2col._col2im_planes",
    "minivgg.cpu.fast.winograd_kernels._input_transform_fwd",
    "minivgg.cpu.fast.winograd_kernels._output_transform_fwd",
    "minivgg.cpu.fast.winograd_kernels._output_transform_bwd",
)


def cached_for_this_cpu(names=None):
    """(kernels with at least one specialization cached for this target CPU, kernels), of
    ``names`` (default all of minivgg's), read from numba's cache index; (None, n) where
    numba's internals do not allow it."""
    _cpu_modules()
    disp = numba_dispatchers()
    if names is not None:
        disp = {n: d for n, d in disp.items() if n in names}
    try:
        from numba.core.registry import cpu_target

        magic = cpu_target.target_context.codegen().magic_tuple()
        hits = 0
        for d in disp.values():
            index = d._cache._cache_file._load_index()  # {} when there is no index file
            hits += any(key[1] == magic for key in index)
        return hits, len(disp)
    except Exception:  # internals of numba that may change: then we just do not know
        return None, len(disp)


def target_cpu():
    """The processor numba compiles for (``NUMBA_CPU_NAME`` or the host's)."""
    try:
        from numba.core.registry import cpu_target

        return cpu_target.target_context.codegen().magic_tuple()[1]
    except Exception:
        return "this CPU"


def _signatures():
    return {name: len(d.signatures) for name, d in numba_dispatchers().items()}


class WarmupReport:
    """What :func:`warmup` did: ``seconds``, ``compiled`` ({kernel: specializations
    compiled or loaded by this warmup}), ``from_cache`` (how many of them came from numba's
    cache), ``used`` ({kernel: specializations it holds now}, every kernel the workload ran),
    ``cache_dir``, ``target`` (the CPU name compiled for), ``device``."""

    def __init__(self, device, seconds, compiled, from_cache, cache_dir, target, used=None):
        self.device, self.seconds, self.compiled = device, seconds, compiled
        self.from_cache, self.cache_dir, self.target = from_cache, cache_dir, target
        self.used = used or {}

    @property
    def specializations(self):
        return sum(self.compiled.values())

    def summary(self):
        """One line: how many specializations were compiled (or loaded) and how long it took."""
        n, hit = self.specializations, self.from_cache
        if self.device != "cpu":
            what = "CUDA kernels (NVRTC, cached by CuPy)" if self.device == "gpu" else "emulated CUDA kernels (g++)"
            return f"{what} and {n} CPU kernel specializations ready in {self.seconds:.1f} s"
        if n == 0:
            return f"every CPU kernel specialization was already compiled in this process ({self.seconds:.1f} s)"
        if hit == n:
            return (f"loaded {n} CPU kernel specializations ({len(self.compiled)} kernels) for {self.target} from "
                    f"the cache in {self.seconds:.1f} s")
        return (f"compiled {n - hit} CPU kernel specializations for {self.target} ({len(self.compiled)} kernels, "
                f"{hit} loaded from the cache) in {self.seconds:.1f} s; cached in {self.cache_dir}")


def _hits():
    total = 0
    for d in numba_dispatchers().values():
        try:
            total += sum(d.stats.cache_hits.values())
        except AttributeError:
            pass
    return total


def announce(out=sys.stderr, prefix="minivgg"):
    """Print the one line saying what is about to be compiled, if anything, and where it
    is cached; return whether the cache looked cold for this CPU."""
    cached, n = cached_for_this_cpu(CORE_KERNELS)
    cold = cached is None or cached < n
    if cold:
        where = cache_dir() or "numba's cache"
        out.write(f"{prefix}: compiling CPU kernels for {target_cpu()} (first run on this CPU only: "
                  f"{COMPILE_ESTIMATE}; cached in {where})\n")
        out.flush()
    return cold


METHODS = ("style", "texture", "invert", "dream", "visualize")


def run_workload(device="cpu", poolings=("avg", "max"), methods=METHODS, max_side=None):
    """Every code path of a run, at small sizes, on random weights (see the module docstring);
    ``methods``: the methods whose objectives and optimizers are run; ``max_side``: the
    longest image side the run will use (None: any), which leaves out the banded backward
    when no image is large enough to take it."""
    from .cpu.ops import IM2COL_BAND_ABOVE

    from .methods.dream import dream
    from .methods.invert import invert
    from .methods.style import style_transfer
    from .methods.texture import synthesize_texture
    from .methods.visualize import visualize
    from .vgg import load_vgg, random_weights

    params = random_weights("vgg19", seed=0)
    rng = np.random.default_rng(0)
    style_layers = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
    unfused = ["conv1_1", "pool1", "conv2_1", "pool2", "conv3_1", "conv4_1", "pool4", "conv5_1"]
    for pooling in poolings:
        net = load_vgg("vgg19", weights=params, pooling=pooling, device=device, up_to="relu5_1")
        for h, w in PASS_SHAPES:
            x = net.xp.asarray((rng.standard_normal((1, 3, h, w)) * 50).astype(np.float32))
            for layers in (style_layers + ["relu4_2"], unfused):
                feats = net.forward(x, layers)
                net.backward({name: f * np.float32(1e-3) for name, f in feats.items()}, keep=False)
                del feats
        if device == "cpu" and (max_side is None or 27 * max_side * max_side > IM2COL_BAND_ABOVE):
            shallow = load_vgg("vgg19", weights=params, pooling=pooling, device=device, up_to="relu1_2")
            x = (rng.standard_normal((1, 3) + BAND_SHAPE) * 50).astype(np.float32)
            f = shallow.forward(x, ["relu1_1", "relu1_2"])
            shallow.backward({"relu1_1": f["relu1_1"], "relu1_2": f["relu1_2"]}, keep=False)
            del f
    # the methods: their losses and optimizers (average pooling, as they default to)
    net = load_vgg("vgg19", weights=params, pooling="avg", device=device, up_to="relu5_1")
    img = rng.integers(0, 256, (METHOD_SIDE, METHOD_SIDE + 8, 3), dtype=np.uint8)
    style = rng.integers(0, 256, (METHOD_SIDE, METHOD_SIDE + 8, 3), dtype=np.uint8)
    lbfgs = {"line_search": "strong_wolfe"}
    if "style" in methods:
        for optimizer, options in (("lbfgs", lbfgs), ("lbfgs", None), ("adam", None), ("sgd", None)):
            style_transfer(net, img, [style], init="content", iters=2, optimizer=optimizer, optim_options=options)
    if "texture" in methods:
        synthesize_texture(net, img, iters=2, optimizer="lbfgs", optim_options=lbfgs)
    if "invert" in methods:
        invert(net, img, layer="conv4_1", iters=2)
    if "dream" in methods:
        dream(net, img, layer="relu4_2", octaves=2, iters=1)
    if "visualize" in methods:
        visualize(net, layer="relu3_1", channel=0, size=METHOD_SIDE, iters=1)


def warmup(device="cpu", poolings=("avg", "max"), methods=METHODS, max_side=None, out=None, quiet=False,
           prefix="minivgg"):
    """Compile (or load from numba's cache) every kernel specialization a run on ``device``
    with one of ``poolings`` and ``methods`` on images of at most ``max_side`` (None: any)
    needs, before anything is timed; return a :class:`WarmupReport`. Prints to ``out``
    (default stderr) one line before (on the CPU only when its cache is cold for this
    processor) and one after, unless ``quiet``."""
    from .backend import check_device

    out = out or sys.stderr
    check_device(device)
    _cpu_modules()
    if not quiet and device == "cpu":
        announce(out, prefix)
    elif not quiet:
        out.write(f"{prefix}: compiling the {device} device's CUDA kernels where not cached yet "
                  f"({'NVRTC, cached by CuPy' if device == 'gpu' else 'g++, cached in $MINIVGG_EMULATE_CACHE'})\n")
        out.flush()
    before, hits0 = _signatures(), _hits()
    t0 = time.perf_counter()
    run_workload(device, poolings, methods, max_side)
    seconds = time.perf_counter() - t0
    after = _signatures()
    compiled = {name: n - before.get(name, 0) for name, n in after.items() if n > before.get(name, 0)}
    used = {name: n for name, n in after.items() if n}
    report = WarmupReport(device, seconds, compiled, _hits() - hits0, cache_dir(), target_cpu(), used)
    if not quiet:
        out.write(f"{prefix}: {report.summary()}\n")
        out.flush()
    return report

