"""VGG-16 / VGG-19 (Simonyan & Zisserman 2014) as a list of hand-written layers.

Both nets are five blocks of 3x3 stride-1 pad-1 convolutions, each followed by a ReLU,
and a 2x2 stride-2 pooling after every block; VGG-16 has 2, 2, 3, 3, 3 convs per block
(13 in all), VGG-19 2, 2, 4, 4, 4 (16). The classifier (fc6 25088->4096, fc7
4096->4096, fc8 4096->1000, ReLU after the first two) is kept only on request: image
synthesis uses the convolutional part, at any input size.

A ``Net`` owns its weights and the activations its last forward kept for backward.
``forward(x, layers)`` runs only as deep as the deepest requested layer;
``backward(grads)`` returns the gradient with respect to the input of
``sum_l <grads[l], F_l(x)>``: walking from the deepest layer down, the incoming gradient
of each requested layer is added where that layer's output enters the chain.
"""

import contextlib
import sys

import numpy as np

from . import weights as weights_mod
from .backend import array_module_for, get_ops, to_host
from .errors import MiniVGGError
from .layers import AvgPool2d, Conv2d, Linear, MaxPool2d, ReLU

BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
FC = (("fc6", 512 * 7 * 7, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000))


def conv_specs(arch):
    """[(name, c_in, c_out)] for the conv layers of ``arch``."""
    if arch not in BLOCKS:
        raise MiniVGGError(f"unknown architecture {arch!r}; choose vgg16 or vgg19")
    specs, c_in = [], 3
    for blk, (n, width) in enumerate(zip(BLOCKS[arch], WIDTHS), start=1):
        for i in range(1, n + 1):
            specs.append((f"conv{blk}_{i}", c_in, width))
            c_in = width
    return specs


def layer_names(arch, keep_classifier=False):
    """The ordered layer names: conv1_1, relu1_1, ..., pool5 (then fc6 ... fc8)."""
    names = []
    for blk, n in enumerate(BLOCKS[arch], start=1):
        for i in range(1, n + 1):
            names += [f"conv{blk}_{i}", f"relu{blk}_{i}"]
        names.append(f"pool{blk}")
    if keep_classifier:
        names += ["fc6", "relu6", "fc7", "relu7", "fc8"]
    return names


def layer_block(name):
    """The block a layer belongs to: 1-5 for conv/relu/pool (relu4_2 -> 4), 6 for the classifier."""
    for prefix in ("conv", "relu", "pool"):
        if name.startswith(prefix) and name[len(prefix):len(prefix) + 1].isdigit():
            return int(name[len(prefix)])
    return 6


def layer_channels(name):
    """N_l, the number of channels of layer ``name`` (conv4_2, relu4_2, pool4 -> 512)."""
    block = layer_block(name)
    if block <= 5:
        return WIDTHS[block - 1]
    return 1000 if name == "fc8" else 4096


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
        self.ops = get_ops(device)
        self.xp = array_module_for(device)
        self.layer_names = layer_names(arch, keep_classifier)
        self.up_to = up_to
        if up_to is not None:
            if up_to not in self.layer_names:
                raise MiniVGGError(f"up_to: unknown layer {up_to!r} for {arch}; valid layers: {', '.join(self.layer_names)}")
            if keep_classifier and not up_to.startswith(("fc", "relu6", "relu7")):
                raise MiniVGGError(f"keep_classifier keeps fc6-fc8, but up_to={up_to!r} stops before them")
            self.layer_names = self.layer_names[: self.layer_names.index(up_to) + 1]
        self._check_params(params)
        self.layers = {}
        for name in self.layer_names:
            if name.startswith("conv"):
                W, b = params[name]
                self.layers[name] = Conv2d(self._dev(W), self._dev(b), 1, 1, ops=self.ops)
            elif name.startswith("fc"):
                W, b = params[name]
                self.layers[name] = Linear(self._dev(W), self._dev(b), ops=self.ops)
            elif name.startswith("relu"):
                self.layers[name] = ReLU(ops=self.ops)
            else:
                pool = AvgPool2d if pooling == "avg" else MaxPool2d
                self.layers[name] = pool(2, 2, ops=self.ops)
        self._index = {n: i for i, n in enumerate(self.layer_names)}
        self._depth = -1  # index of the deepest layer the last forward computed
        self._released = False  # backward(keep=False) dropped the last forward's caches
        self._cpu_arena = None  # cpu/arena.py, made on the first CPU forward

    def _dev(self, a):
        return self.xp.asarray(np.ascontiguousarray(a, dtype=np.float32))

    def _check_params(self, params):
        expect = {name: ((cout, cin, 3, 3), (cout,)) for name, cin, cout in conv_specs(self.arch)}
        if self.keep_classifier:
            expect.update({name: ((fout, fin), (fout,)) for name, fin, fout in FC})
        expect = {name: shapes for name, shapes in expect.items() if name in self.layer_names}
        for name, (wshape, bshape) in expect.items():
            if name not in params:
                what = "classifier layer" if name.startswith("fc") else "layer"
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
        multi-threaded call slowed the next layers by ~20% (cpu/threads.py)."""
        if self.device == "cpu":
            from .cpu.fast.threads import one_blas_thread

            return one_blas_thread()
        return contextlib.nullcontext()

    def _arena(self):
        """On the CPU the forward's outputs come from an arena that hands the previous
        pass's arrays back when nobody holds them any more (cpu/arena.py)."""
        if self.device == "cpu":
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
        for l in self.layers.values():
            l.clear()
        self._released = False
        wanted, out, h = set(layers), {}, x
        fuse = hasattr(self.ops, "conv2d_relu_forward")
        compact = getattr(self.ops, "compact_mask", None)
        i = 0
        while i <= depth:
            first = i
            name = self.layer_names[i]
            if name == "fc6" and h.shape[2:] != (7, 7):
                raise MiniVGGError(
                    f"the classifier needs pool5 of 7x7 (a 224x224 input); this input gives pool5 of {h.shape[2]}x{h.shape[3]}"
                )
            if name.startswith("pool") and min(h.shape[2:]) < 2:
                raise MiniVGGError(f"input {x.shape[2]}x{x.shape[3]} is too small to reach {name}; use a larger image")
            layer = self.layers[name]
            if fuse and name.startswith("conv") and name not in wanted and i < depth and self.layer_names[i + 1].startswith("relu"):
                # conv + ReLU in one pass when nobody asked for the pre-activation (the CPU
                # backend folds bias and ReLU into its output transform); both layers keep
                # what their own forward would have kept.
                relu = self.layers[self.layer_names[i + 1]]
                # a max pool next: its near-ties are recomputed exactly (docs/winograd.md)
                ties = self.pooling == "max" and i + 2 <= depth and self.layer_names[i + 2].startswith("pool")
                h, layer._cache = self.ops.conv2d_relu_forward(
                    h, layer.W, layer.b, layer.stride, layer.pad, layer.state, pool_ties=ties)
                relu._cache = h
                i += 1
                name = self.layer_names[i]
            else:
                h = layer.forward(h)
            if name in wanted:
                out[name] = h
            below = self.layer_names[first - 1] if first > 0 else ""
            if compact is not None and below.startswith("relu") and below not in wanted and (
                    name.startswith("pool") or first < i):
                # the ReLU below has been read (by a pool, or by a fused conv + ReLU, whose
                # caches keep only its shape): its backward needs just the mask
                relu = self.layers[below]
                relu._cache = compact(relu._cache)
            i += 1
        self._depth = depth
        return out

    def backward(self, grads, keep=True):
        """Gradient wrt the last forward's input of ``sum_l <grads[l], F_l(x)>``.

        A value of grads may also be a function of no arguments returning the array: it is
        called when the backward reaches that layer, so the array exists only from there
        on. ``losses.style_loss_deferred``'s are also added straight into the gradient
        arriving from the layers above (in the GEMM that makes them), so no second array
        of that size exists at all (relu1_1's style gradient: 16 MB at 256x256).

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
        fuse = hasattr(self.ops, "relu_conv2d_backward")
        i = deepest
        while i >= 0:
            name = self.layer_names[i]
            below = self.layer_names[i - 1] if i > 0 else ""
            fused = fuse and name.startswith("relu") and below.startswith("conv") and below not in grads
            extra = None  # a loss gradient on this ReLU's output, added inside the fused op
            if name in grads and ours and hasattr(grads[name], "add_to") and grads[name].fits(g):
                g = grads[name].add_to(g)  # made straight into g (losses.style_loss_deferred): no second array
            elif name in grads:
                gi = grads[name]
                made = callable(gi)  # a function making the array: the array is ours
                gi = self.xp.asarray(gi() if made else gi)
                if g is None:
                    g, ours = gi, made
                elif fused and g.shape == gi.shape and g.dtype == gi.dtype:
                    extra = gi
                elif ours and g.shape == gi.shape and g.dtype == np.result_type(g.dtype, gi.dtype):
                    g += gi
                else:
                    g = g + gi
            top = i
            if self._pool_fuses(i, grads):
                # an average pool's backward folded into the input transform of the ReLU-conv
                # below it (its full-size output is never written)
                relu, conv = self.layers[self.layer_names[i - 1]], self.layers[self.layer_names[i - 2]]
                g = self.ops.relu_conv2d_backward(g, relu._need_cache(), conv._need_cache(), None, pooled=True)
                i -= 3
            elif fused:
                # ReLU's mask folded into the conv's backward (one pass, no masked copy of g)
                relu, conv = self.layers[name], self.layers[below]
                g = self.ops.relu_conv2d_backward(g, relu._need_cache(), conv._need_cache(), extra)
                i -= 2
            else:
                g = self.layers[name].backward(g)
                i -= 1
            ours = True
            if not keep:  # these layers' caches are spent: let their arrays go now
                for done in self.layer_names[i + 1 : top + 1]:
                    self.layers[done].clear()
        return g

    def _pool_fuses(self, i, grads):
        """Whether layer i is a 2x2 average pool whose backward the CPU backend can fold
        into the ReLU-conv below it (nothing asked of those two layers)."""
        if i < 2 or self.pooling != "avg" or not hasattr(self.ops, "relu_conv2d_backward"):
            return False
        pool, relu, conv = self.layer_names[i], self.layer_names[i - 1], self.layer_names[i - 2]
        layer = self.layers[pool]
        return (pool.startswith("pool") and relu.startswith("relu") and conv.startswith("conv")
                and relu not in grads and conv not in grads and layer.k == 2 and layer.s == 2)

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
    weights past it (VGG-19's conv5_2-conv5_4 are 28 MB that style transfer never uses).
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
