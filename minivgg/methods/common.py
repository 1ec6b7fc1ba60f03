"""What every method shares: the objective (content, style, TV, alpha-norm and
activation terms through one forward and one backward), initial images, the
optimizer loop with its log rows, and the result type.

The objective evaluated at an input-space image x (1, 3, H, W):

    total = content_weight * Lc + style_weight * Ls + tv_weight * TV
            + alpha_weight * R_alpha - activation_weight * A

with Ls = sum over style layers of w_l E_l (E_l = 1/(4 N^2 M^2) sum (G - A)^2),
R_alpha = alpha_norm(x, alpha), A an activation to maximize (dream, visualize), and
Lc, TV in one of two forms (``loss_norm``):

- "paper": Lc = sum over content layers of 1/2 sum (F - P)^2 (Gatys 2016, eq. 1) and
  TV = total_variation(x, beta) (Mahendran & Vedaldi 2015, eq. 5), as written;
- "mean": each content layer's term divided by its N_l M_l entries, and TV divided by
  H W s^beta (s = ``input_scale``: one pixel level in input units), i.e.
  Lc = sum_l 1/(2 N_l M_l) sum (F - P)^2 and TV = the mean over pixels of the squared
  neighbour differences in pixel levels. E_l is already a mean over its Gram entries
  (the 1/M^2 undoes the sum over positions), so in this form no term grows with the
  image's area and the weights that suit one size suit all (docs/methods.md).
Every value and gradient comes from ``minivgg.losses`` (on the GPU and emulated devices
from the same functions written as kernels, ``net.ops``); the gradient with respect to x
is one ``net.backward`` of the per-layer gradients plus the regularizers' gradients.
"""

import time

import numpy as np

from ..backend import get_array_module
from ..errors import MiniVGGError
from ..image import check_memory
from ..optim import make_optimizer

LOG_COLUMNS = ("iter", "total", "content", "style", "tv", "seconds")
LOSS_NORMS = ("mean", "paper")
LINE_SEARCH = "strong_wolfe"  # the methods' L-BFGS default


class MethodResult:
    """A method's outcome: ``image`` (uint8 H x W x 3 RGB), ``x`` (final input-space
    array on the net's device), ``history`` (list of row dicts: iter, total, content,
    style, tv, seconds, and method-specific terms), ``stopped`` (iterations | tolerance
    | diverged | interrupted | callback), ``message``, ``frames`` (dream zoom frames)
    and ``settings`` (the effective parameters, weights included)."""

    def __init__(self, image, x, history, stopped, message, frames=None, settings=None):
        self.image, self.x, self.history = image, x, history
        self.stopped, self.message = stopped, message
        self.frames = frames or []
        self.settings = settings or {}

    @property
    def final_loss(self):
        return self.history[-1]["total"] if self.history else float("nan")

    def __repr__(self):
        return f"MethodResult(shape={self.image.shape}, rows={len(self.history)}, stopped={self.stopped!r})"


def input_scale(net):
    """How many input-space units one pixel level (of 255) is: 1 for Caffe-style
    weights (0-255 inputs), about 0.017 for torchvision-style (0-1, divided by std)."""
    c = net.convention
    return float(c["scale"]) / 255.0 / float(np.mean(c["std"]))


def default_lr(net, optimizer):
    """L-BFGS: 1 (its steps are scaled by the curvature estimate). Adam: 10 pixel levels
    per step at most, in the net's input units. SGD has no fixed default: the methods
    let it pick ``lr`` at its first update so that the step moves the pixels by one
    level on average (``SGD(first_step=...)``); 1e-3 is returned for other callers."""
    if optimizer == "adam":
        return 10.0 * input_scale(net)
    if optimizer == "sgd":
        return 1e-3
    return 1.0


def check_layers(net, layers, what="layer"):
    """Validate a list of layer names against ``net`` (MiniVGGError lists the valid ones)."""
    layers = [layers] if isinstance(layers, str) else list(layers)
    if not layers:
        raise MiniVGGError(f"no {what} given")
    return net.check_layers(layers)


def deepest(net, layers):
    return max(layers, key=net.layer_names.index)


def tv_term(total_variation, net, x, beta, loss_norm):
    """TV_beta(x) and its gradient; with loss_norm "mean" divided by H W s^beta (s the
    input scale), so that the weight means the same at every size and convention."""
    v, g = total_variation(x, beta)
    if loss_norm == "mean":
        k = 1.0 / (x.shape[2] * x.shape[3] * input_scale(net) ** beta)
        v, g = v * k, g * k
    return v, g


class Objective:
    """f(x) -> (total, grad, info) for the optimizers; see the module docstring.

    content: {layer: P}; style: {layer: (A, w_l)}; activation: list of
    (layer, channel or None, kind) with kind "l2" (1/2 sum F^2, DeepDream) or "mean"
    (mean of F, activation maximization) or "score" (F[0, channel], a class score);
    jitter: the largest random shift (pixels) applied to x before the forward pass.
    """

    def __init__(self, net, content=None, style=None, content_weight=1.0, style_weight=1.0, tv_weight=0.0,
                 tv_beta=2.0, alpha_weight=0.0, alpha=6.0, activation=None, activation_weight=1.0,
                 jitter=0, rng=None, loss_norm="paper"):
        self.net = net
        self.content = dict(content or {})
        self.style = dict(style or {})
        self.activation = list(activation or [])
        self.cw, self.sw, self.tvw = float(content_weight), float(style_weight), float(tv_weight)
        self.tv_beta, self.aw, self.alpha = float(tv_beta), float(alpha_weight), float(alpha)
        self.actw = float(activation_weight)
        self.jitter = int(jitter)
        if loss_norm not in LOSS_NORMS:
            raise MiniVGGError(f"unknown loss normalization {loss_norm!r}; choose {' or '.join(LOSS_NORMS)}")
        self.loss_norm = loss_norm
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.layers = list(dict.fromkeys(list(self.content) + list(self.style) + [a[0] for a in self.activation]))
        self.evaluations = 0
        self.L = _loss_ops(net)

    def __call__(self, x):
        self.evaluations += 1
        xp = get_array_module(x)
        shift = None
        xin = x
        if self.jitter > 0:
            shift = tuple(int(v) for v in self.rng.integers(-self.jitter, self.jitter + 1, size=2))
            xin = xp.roll(x, shift, axis=(2, 3))
        info = {}
        grads = {}
        grad = None
        if self.layers:
            feats = self.net.forward(xin, self.layers)
            lc = 0.0
            for name, P in self.content.items():
                v, dF = self.L.content_loss(feats[name], P)
                k = 1.0 / P.size if self.loss_norm == "mean" else 1.0
                lc += k * v
                dF *= self.cw * k  # the losses' gradients are fresh arrays: scaled in place
                _add(grads, name, dF)
            ls = 0.0
            for name, (A, w) in self.style.items():
                # the reference makes the gradient when the backward reaches the layer
                v, dF = self.L.style_loss_deferred(feats[name], A, self.sw * w)
                ls += w * v
                _add(grads, name, dF)
            act = 0.0
            for name, channel, kind in self.activation:
                v, dF = _activation(feats[name], channel, kind)
                act += v
                _add(grads, name, dF * (-self.actw))
            if self.content:
                info["content"] = lc
            if self.style:
                info["style"] = ls
            if self.activation:
                info["activation"] = act
            del feats  # the net's arrays can go as soon as backward is done with them
            grad = self.net.backward(grads, keep=False)
            if shift is not None:
                grad = xp.roll(grad, (-shift[0], -shift[1]), axis=(2, 3))
        else:
            grad = xp.zeros_like(x)
        total = self.cw * info.get("content", 0.0) + self.sw * info.get("style", 0.0) - self.actw * info.get("activation", 0.0)
        if self.tvw:
            v, g = tv_term(self.L.total_variation, self.net, x, self.tv_beta, self.loss_norm)
            info["tv"] = v
            total += self.tvw * v
            grad = grad + g * self.tvw
        else:
            info["tv"] = 0.0
        if self.aw:
            v, g = self.L.alpha_norm(x, self.alpha)
            info["alpha"] = v
            total += self.aw * v
            grad = grad + g * self.aw
        return total, grad, info


def _loss_ops(net):
    """Where the losses come from: the net's backend (its kernels on gpu and emulated;
    ``minivgg.losses``, the reference, where the backend declares that: minivgg/backend.py)."""
    return net.backend.ops


def _add(grads, name, g):
    """grads[name] += g, where either may be a function making the array (style_loss_deferred)."""
    if name not in grads:
        grads[name] = g
    elif callable(g) or callable(grads[name]):
        a, b = grads[name], g
        grads[name] = lambda: (a() if callable(a) else a) + (b() if callable(b) else b)
    else:
        grads[name] = grads[name] + g


def _activation(F, channel, kind):
    """Value and dValue/dF of an activation objective on a layer response F."""
    xp = get_array_module(F)
    dF = xp.zeros_like(F)
    if kind == "l2":
        sel = F if channel is None else F[:, channel]
        v = 0.5 * float((sel.astype("float64") ** 2).sum())
        if channel is None:
            dF = F.copy()
        else:
            dF[:, channel] = F[:, channel]
        return v, dF
    if kind == "mean":
        sel = F if channel is None else F[:, channel]
        v = float(sel.astype("float64").mean())
        if channel is None:
            dF[...] = 1.0 / sel.size
        else:
            dF[:, channel] = 1.0 / sel.size
        return v, dF
    if kind == "score":
        v = float(F[0, channel])
        dF[0, channel] = 1.0
        return v, dF
    raise ValueError(kind)


NOISE_LEVELS = 1.0  # standard deviation of the default start image's noise, in pixel levels
INITS = ("noise", "uniform", "content", "style")


def noise_image(shape, rng):
    """White noise: every pixel and channel uniform in 0..255 (uint8 H x W x 3)."""
    h, w = shape
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def noise_x(net, shape, rng, levels=NOISE_LEVELS):
    """The default start: the mean pixel plus Gaussian noise of ``levels`` pixel levels,
    in input space (x = 0 is the mean pixel in every convention). Full-range white noise
    ("uniform") leaves pixel-level grain that the deep layers never see and so never
    remove; a faint noise only breaks the symmetry, as neural-style's randn * 0.001."""
    h, w = shape
    x = rng.standard_normal((1, 3, h, w)).astype(np.float32) * np.float32(levels * input_scale(net))
    return net.xp.asarray(x)


def initial_x(net, init, shape, rng, content=None, style=None):
    """The start image in input space: "noise" (the mean pixel with a faint Gaussian noise,
    ``noise_x``), "uniform" (white noise uniform over 0..255), "content" (exactly
    ``net.preprocess(content)``), "style" (the first style image resized to the
    content's size) or a uint8 image (resized to ``shape`` if needed)."""
    from ..image import resize

    if isinstance(init, str):
        if init == "noise":
            return noise_x(net, shape, rng)
        if init == "uniform":
            return net.preprocess(noise_image(shape, rng))
        if init == "content":
            if content is None:
                raise MiniVGGError("init 'content' needs a content image")
            return net.preprocess(resize(content, shape))
        if init == "style":
            if style is None:
                raise MiniVGGError("init 'style' needs a style image")
            return net.preprocess(resize(style, shape))
        raise MiniVGGError(f"unknown init {init!r}; choose {', '.join(INITS)} or an image file")
    return net.preprocess(resize(np.asarray(init), shape))


def run_optimizer(objective, x0, *, optimizer="lbfgs", iters=100, lr=None, optim_options=None, callback=None,
                  render=None, net=None, first_row=0, t0=None, history=None, extra=None):
    """Minimize ``objective`` from ``x0``; append one row per logged iterate to
    ``history`` and call ``callback(record)`` (row + ``x`` + ``render``).

    Rows are numbered from ``first_row`` (coarse-to-fine stages continue the count);
    ``seconds`` counts from ``t0``. Returns the optimizer's OptimResult.
    """
    if history is None:
        history = []
    if t0 is None:
        t0 = time.perf_counter()
    options = dict(optim_options or {})
    if optimizer == "lbfgs":
        # every method and command: fixed-step L-BFGS overshoots from noise on pretrained
        # weights (the loss explodes at update 2), the line search does not
        options.setdefault("line_search", LINE_SEARCH)
    if lr is None and net is not None:
        if optimizer == "sgd":
            options.setdefault("first_step", input_scale(net))  # one pixel level, then fixed
        else:
            lr = default_lr(net, optimizer)
    opt = make_optimizer(optimizer, lr=lr, **options)
    if net is not None:
        opt.ops = net.backend.ops  # the update steps: the backend's kernels, or the reference

    def on_row(rec):
        row = {"iter": first_row + rec["iter"], "total": rec["loss"]}
        for key in ("content", "style", "tv"):
            row[key] = float(rec["info"].get(key, 0.0))
        row["seconds"] = time.perf_counter() - t0
        for key in ("alpha", "activation"):
            if key in rec["info"]:
                row[key] = float(rec["info"][key])
        if extra:
            row.update(extra)
        history.append(row)
        if callback is not None:
            record = dict(row)
            record["x"] = rec["x"]
            record["render"] = render
            return callback(record)
        return False

    return opt.run(objective, x0, iters, callback=on_row)


def ensure_memory(net, shape, layers, what="image"):
    check_memory(net, shape[0], shape[1], deepest(net, layers), what=what)

