"""VGG-16 / VGG-19 (Simonyan & Zisserman 2014) as a list of hand-written layers.

The architecture is written once, in ``minivgg/arch.py`` (five blocks of 3x3 convs, each
followed by a ReLU, and a 2x2 pool after every block; the classifier fc6-fc8, kept only
on request: image synthesis uses the convolutional part, at any input size). This module
builds one layer per spec on a backend (``minivgg/backend.py``).

A forward runs the steps of a plan (``minivgg/layers/fused.py``), made once per set of
requested layers: the layers themselves, or fused layers standing for a conv and its
ReLU (and the average pool after them) where the backend has the fused code and nobody
asked for the inner output. ``Net.plan(layers).describe()`` shows them. The net never
looks inside a step: a step computes its outputs, keeps its own cache, and runs its own
backward.

A ``Net`` owns its weights and the activations its last forward kept for backward.
``forward(x, layers)`` runs only as deep as the deepest requested layer;
``backward(grads)`` returns the gradient with respect to the input of
``sum_l <grads[l], F_l(x)>``: walking from the deepest layer down, the incoming gradient
of each requested layer is added where that layer's output enters the chain.
"""

import contextlib
import sys

import numpy as np

from . import arch as _arch
from . import weights as weights_mod
from .arch import BLOCKS, FC, WIDTHS, conv_specs, layer_names  # noqa: F401  (the names callers import from here)
from .backend import get_backend, to_host
from .errors import MiniVGGError
from .layers import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU
from .layers.fused import add_gradient, plan

layer_block = _arch.block
layer_channels = _arch.channels


def random_weights(arch, keep_classifier=False, seed=0):
    """Deterministic He-initialised weights (normal, std sqrt(2 / fan_in)), zero biases."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, cin, cout in conv_specs(arch):
        W = rng.standard_normal((cout, cin, 3, 3), dtype=np.float32) * np.float32(np.sqrt(2.0 / (cin * 9)))
        params[name] = (W, np.zeros(cout, np.float32))
    if keep_classifier:
        for name, fin, fout in FC:
            W = rng.standard_normal((fout, fin), dtype=np.float32) * np.float32(np.sqrt(2.0 / fin))
            params[name] = (W, np.zeros(fout, np.float32))
    return params


class Net:
    """A VGG network on one device. Build it with :func:`load_vgg`."""

    def __init__(self, arch, params, pooling="avg", device="cpu", keep_classifier=False, convention=None, source=None,
                 up_to=None, weights_meta=None):
        if pooling not in ("avg", "max"):
            raise MiniVGGError(f"unknown pooling {pooling!r}; choose avg or max")
        self.arch, self.pooling, self.device = arch, pooling, device
        self.keep_classifier = keep_classifier
        self.convention = dict(convention or weights_mod.CAFFE)
        self.source = source
        self.weights_meta = weights_meta  # the weights file's attributes (None: random or a mapping)
        self.backend = get_backend(device)
        self.ops, self.xp = self.backend.ops, self.backend.xp
        self.specs = _arch.specs(arch, keep_classifier)
        self.layer_names = [spec.name for spec in self.specs]
        self.up_to = up_to
        if up_to is not None:
            if up_to not in self.layer_names:
                raise MiniVGGError(f"up_to: unknown layer {up_to!r} for {arch}; valid layers: {', '.join(self.layer_names)}")
            if keep_classifier and _arch.block(up_to) != 6:
                raise MiniVGGError(f"keep_classifier keeps fc6-fc8, but up_to={up_to!r} stops before them")
            self.layer_names = self.layer_names[: self.layer_names.index(up_to) + 1]
        self._check_params(params)
        self.specs = self.specs[: len(self.layer_names)]
        self.layers = {}
        for spec in self.specs:
            name = spec.name
            if spec.kind == "conv":
                W, b = params[name]
                layer = Conv2d(self._dev(W), self._dev(b), spec.stride, spec.pad, ops=self.ops, name=name)
            elif spec.kind == "fc":
                W, b = params[name]
                layer = Linear(self._dev(W), self._dev(b), ops=self.ops, name=name)
            elif spec.kind == "relu":
                layer = ReLU(ops=self.ops, name=name)
            else:
                pool = AvgPool2d if pooling == "avg" else MaxPool2d
                layer = pool(spec.k, spec.stride, ops=self.ops, name=name)
            self.layers[name] = layer
        self._plans = {}  # (asked-for layers, deepest) -> Plan, made once per request
        self._plan = None  # the last forward's
        self._index = {n: i for i, n in enumerate(self.layer_names)}
        self._depth = -1  # index of the deepest layer the last forward computed
        self._released = False  # backward(keep=False) dropped the last forward's caches
        self._cpu_arena = None  # cpu/fast/arena.py, made on the first CPU forward

    def _dev(self, a):
        return self.xp.asarray(np.ascontiguousarray(a, dtype=np.float32))

    def _check_params(self, params):
        expect = {name: ((cout, cin, 3, 3), (cout,)) for name, cin, cout in conv_specs(self.arch)}
        if self.keep_classifier:
            expect.update({name: ((fout, fin), (fout,)) for name, fin, fout in FC})
        expect = {name: shapes for name, shapes in expect.items() if name in self.layer_names}
        for name, (wshape, bshape) in expect.items():
            if name not in params:
                what = "classifier layer" if _arch.kind(name) == "fc" else "layer"
                raise MiniVGGError(f"weights for {self.arch} lack {what} {name}")
            W, b = params[name]
            if tuple(np.shape(W)) != wshape or tuple(np.shape(b)) != bshape:
                raise MiniVGGError(
                    f"weights for {name} have shapes W{tuple(np.shape(W))} b{tuple(np.shape(b))}; "
                    f"{self.arch} needs W{wshape} b{bshape}"
                )

    def params(self):
        """{name: (W, b)} as host numpy arrays."""
        return {n: (to_host(l.W), to_host(l.b)) for n, l in self.layers.items() if l.has_params}

    def check_layers(self, layers):
        """Validate layer names; raise MiniVGGError listing the valid ones."""
        if isinstance(layers, str):
            layers = [layers]
        layers = list(layers)
        bad = [l for l in layers if l not in self._index]
        if bad and self.up_to is not None and all(l in layer_names(self.arch, self.keep_classifier) for l in bad):
            raise MiniVGGError(f"layer {', '.join(map(repr, bad))} lies past {self.up_to!r}, where this net was built to stop (load_vgg(up_to=...))")
        if bad:
            raise MiniVGGError(
                f"unknown layer {', '.join(map(repr, bad))} for {self.arch}"
                f"{'' if self.keep_classifier else ' (classifier not kept)'}; valid layers: {', '.join(self.layer_names)}"
            )
        return layers

    def _one_blas_thread(self):
        """On the CPU the whole pass keeps numpy's BLAS single-threaded: the kernels split
        their work over minivgg's own pool, and BLAS threads left spinning after a
        multi-threaded call slow the next layers (cpu/fast/threads.py)."""
        if self.backend.name == "cpu":
            from .cpu.fast.threads import one_blas_thread

            return one_blas_thread()
        return contextlib.nullcontext()

    def _arena(self):
        """On the CPU the forward's outputs come from an arena that hands the previous
        pass's arrays back when nobody holds them any more (cpu/fast/arena.py)."""
        if self.backend.name == "cpu":
            if self._cpu_arena is None:
                from .cpu.fast.arena import Arena, keep_freed_memory

                keep_freed_memory()
                self._cpu_arena = Arena()
            return self._cpu_arena.active()
        return contextlib.nullcontext()

    def forward(self, x, layers):
        """Run ``x`` (N, 3, H, W) up to the deepest of ``layers``; return {name: output}."""
        with self._one_blas_thread(), self._arena():
            return self._forward(x, layers)

    def _forward(self, x, layers):
        layers = self.check_layers(layers)
        if not layers:
            raise MiniVGGError("forward needs at least one layer name")
        x = self.xp.asarray(x)
        if x.ndim != 4 or x.shape[1] != 3:
            raise MiniVGGError(f"input must have shape (N, 3, H, W); got {tuple(x.shape)}")
        if x.dtype not in (np.float32, np.float64):
            x = x.astype(np.float32)
        depth = max(self._index[l] for l in layers)
        self._check_shapes(x, depth)
        if self._plan is not None:
            self._plan.clear()
        self._released = False
        wanted = set(layers)
        self._plan = p = self.plan(wanted, depth)
        out, h = {}, x
        for j, step in enumerate(p.steps):
            h = step.forward(h)
            out.update((n, v) for n, v in step.outputs(h).items() if n in wanted)
            if j - 1 in p.compact_after:  # its output has been read: a mask is all its backward needs
                p.steps[j - 1].compact()
        self._depth = depth
        return out

    def plan(self, layers, depth=None):
        """The steps a forward to ``layers`` runs (layers/fused.py), made once per request.
        ``net.plan(["relu4_2"]).describe()`` prints them."""
        layers = frozenset(self.check_layers(layers))
        if depth is None:
            depth = max(self._index[l] for l in layers)
        key = (layers, depth)
        p = self._plans.get(key)
        if p is None:
            p = self._plans[key] = plan([self.layers[n] for n in self.layer_names[: depth + 1]], layers, self.backend)
        return p

    def _check_shapes(self, x, depth):
        """Refuse an input the layers up to ``depth`` cannot take, before computing anything."""
        shape = tuple(x.shape)
        for spec in self.specs[: depth + 1]:
            if spec.name == "fc6" and shape[2:] != (7, 7):
                raise MiniVGGError(
                    f"the classifier needs pool5 of 7x7 (a 224x224 input); this input gives pool5 of {shape[2]}x{shape[3]}"
                )
            if spec.kind == "pool" and min(shape[2:]) < spec.k:
                raise MiniVGGError(f"input {x.shape[2]}x{x.shape[3]} is too small to reach {spec.name}; use a larger image")
            shape = self.layers[spec.name].out_shape(shape)

    def backward(self, grads, keep=True):
        """Gradient wrt the last forward's input of ``sum_l <grads[l], F_l(x)>``.

        A value of grads may also be a function of no arguments returning the array: it is
        called when the backward reaches that layer, so the array exists only from there
        on. ``losses.style_loss_deferred``'s are also added straight into the gradient
        arriving from the layers above (in the GEMM that makes them), so no second array
        of that size exists at all.

        keep=False drops each layer's forward cache as soon as its backward is done, which
        lowers the peak memory of an iteration (the methods do this); another backward
        then needs another forward first. By default the caches stay, so several
        backward calls can follow one forward.
        """
        with self._one_blas_thread():
            try:
                return self._backward(grads, keep)
            finally:
                if not keep:
                    self._released = True
                    for l in self.layers.values():
                        l.clear()

    def _backward(self, grads, keep=True):
        if self._depth < 0:
            raise RuntimeError("backward called before forward")
        if self._released:
            raise RuntimeError("the last forward's caches were dropped by backward(keep=False); run forward again")
        names = self.check_layers(list(grads))
        if not names:
            raise MiniVGGError("backward needs at least one layer gradient")
        deepest = max(self._index[n] for n in names)
        if deepest > self._depth:
            raise MiniVGGError(f"backward from {self.layer_names[deepest]}, but the last forward stopped at {self.layer_names[self._depth]}")
        g, ours = None, False  # ours: g is a temporary of this loop, free to update in place
        steps = self._plan.steps
        last = self._plan.index[self.layer_names[deepest]]
        for j in range(last, -1, -1):
            step = steps[j]
            names = step.names
            top = names[-1]
            extra = None  # a second gradient at the step's output, added inside its own pass
            if top in grads and self._index[top] <= deepest:
                g, extra, ours = add_gradient(g, grads[top], ours, self.xp, fold=step.takes_extra)
            inner = {n: grads[n] for n in names[:-1] if n in grads and self._index[n] <= deepest}
            g = step.backward_step(g, extra, inner)  # g None: the deepest gradient is an inner one
            ours = True
            if not keep:  # this step's caches are spent: let its arrays go now
                step.clear()
        return g

    # --- input convention -------------------------------------------------------
    def _conv_arrays(self):
        c = self.convention
        order = [2, 1, 0] if c["channel_order"] == "BGR" else [0, 1, 2]
        mean = np.asarray(c["mean"], np.float64)
        std = np.asarray(c["std"], np.float64)
        return order, float(c["scale"]) / 255.0, mean, std

    def preprocess(self, img):
        """uint8 RGB image (H, W, 3) -> x (1, 3, H, W) float32 in the net's input space:
        channels reordered, scaled to the weights' range, mean subtracted, divided by std."""
        img = np.asarray(to_host(img))
        if img.ndim != 3 or img.shape[2] != 3:
            raise MiniVGGError(f"preprocess needs an RGB image of shape (H, W, 3); got {img.shape}")
        order, scale, mean, std = self._conv_arrays()
        x = (img[..., order].astype(np.float64) * scale - mean) / std
        return self.xp.asarray(np.ascontiguousarray(x.transpose(2, 0, 1)[None], dtype=np.float32))

    def deprocess(self, x):
        """x (1, 3, H, W) or (3, H, W) -> uint8 RGB image: the inverse of preprocess, clipped."""
        x = np.asarray(to_host(x), dtype=np.float64)
        if x.ndim == 4:
            x = x[0]
        order, scale, mean, std = self._conv_arrays()
        img = (x.transpose(1, 2, 0) * std + mean) / scale
        img = img[..., np.argsort(order)]
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def load_vgg(arch="vgg19", weights=None, pooling="avg", device="cpu", keep_classifier=False, seed=0, convention=None,
             up_to=None):
    """Build a VGG-16/19.

    weights: ``None`` (a converted file from ``$MINIVGG_WEIGHTS`` or the cache, else a
    deterministic random init with a warning), a path to a converted HDF5 file, or a
    mapping ``{"conv1_1": (W, b), ...}`` (W (out, in, 3, 3); fc6-fc8 W (out, in)).
    convention: the input convention for a mapping (default Caffe: BGR, 0-255, mean
    subtracted); a file carries its own.
    up_to: a layer name (e.g. ``"relu5_1"``): build the net only that deep, and keep no
    weights past it (VGG-19's conv5_2-conv5_4, which style transfer never uses).
    Asking a forward or backward for a deeper layer is then an error.
    """
    conv_specs(arch)  # validates arch
    source = meta = None
    if weights is None:
        path = weights_mod.default_weights_path(arch, classifier=keep_classifier)
        if path is None:
            sys.stderr.write(
                f"minivgg: warning: no pretrained {arch} weights found; using random weights (seed {seed}). "
                f"Results need pretrained weights: python -m weights_tools fetch {arch}-caffe, or convert a file "
                f"you have (python -m weights_tools convert FILE --out {weights_mod.cache_dir()}/{arch}-mine.h5)."
                f"{weights_mod.other_arch_hint(arch)}\n"
            )
            params = random_weights(arch, keep_classifier, seed)
            source = f"random(seed={seed})"
        else:
            weights = path
    if isinstance(weights, (str, bytes)) or hasattr(weights, "__fspath__"):
        path = str(weights)
        params, meta = weights_mod.read_weights(path)
        if meta.get("arch") and meta["arch"] != arch:
            raise MiniVGGError(f"{path}: holds {meta['arch']} weights, but arch {arch} was asked for; "
                               f"use --arch {meta['arch']} (or leave --arch out)")
        convention = meta["convention"]
        source = path
        if keep_classifier and "fc6" not in params:
            raise MiniVGGError(f"{path}: has no classifier (fc6-fc8); convert with --keep-classifier")
    elif weights is not None:
        params = weights
        source = "mapping"
    return Net(arch, params, pooling=pooling, device=device, keep_classifier=keep_classifier, convention=convention,
               source=source, up_to=up_to, weights_meta=meta)
