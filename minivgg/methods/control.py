r"""Control over a style transfer's result (Gatys, Ecker, Bethge, Hertzmann & Shechtman,
"Controlling Perceptual Factors in Neural Style Transfer", CVPR 2017): spatial masks
(guided Gram matrices), gradient normalization (neural-style's -normalize_gradients) and
the objective that evaluates them. Colour control is in minivgg/color.py.

Notation as minivgg.losses: F (N x M) a layer's response, M = H W positions.

- Normalized Gram matrix of a region with mask m (one weight per position, the mask
  pooled down to the layer's map by the net's own pooling, ``layer_masks``):

      G_m = (F diag(m)) (F diag(m))^T / mu,   mu = sum_k m_k^2

  the m^2-weighted mean of f_k f_k^T over the positions k; m = 1 gives G / M, so a
  constant mask gives the unmasked Gram of the mean-over-positions form, and a grey
  mask c * m the same as m (scale-free).
- Guided style loss of region r with target a_r (the style image's G_s / M_s):

      E_r = 1/(4 N^2) sum_ij (G_m,ij - a_r,ij)^2
      dE_r/dF = 1/N^2 (G_m - a_r) F diag(m^2) / mu

  and the layer's style term is sum_r beta_r (mu_r / M) E_r: each region's weight its
  share of the map, so that every position feels the same pull as in the unmasked loss
  (mu/M cancels the 1/mu of the gradient); with one all-ones mask and beta = 1 this is
  E_l = 1/(4 N^2 M^2) sum (G - A)^2 of minivgg.losses exactly.
- Masked content loss: Lc = 1/2 sum_ij c_j (F_ij - P_ij)^2 (c the content mask pooled to
  the layer), dLc/dF = c (F - P); divided by N M in the "mean" form as the unmasked one.
- Gradient normalization (neural-style ``-normalize_gradients``): each content and
  style term's gradient at its layer is divided by its L1 norm (+1e-8) before the
  weight multiplies it: dF <- weight * g / (||g||_1 + 1e-8). The reported values stay
  the losses' own, so the gradient is no longer the value's gradient; L-BFGS stalls in
  its line search or diverges without it, Adam works (measured, docs/methods.md).
"""

import numpy as np

from .. import losses
from ..backend import get_array_module, to_host
from ..errors import MiniVGGError
from .common import tv_term

NORMALIZE_EPS = 1e-8


# --- masks ------------------------------------------------------------------------------
def mask_array(img, shape):
    """A mask image (uint8 grey or RGB, or a float array in 0..1) as float32 (H, W) in
    0..1 at ``shape`` = (height, width), resized bilinearly."""
    from PIL import Image

    a = np.asarray(img)
    if a.ndim == 3:
        a = a.astype(np.float64).mean(axis=-1)
    a = a.astype(np.float32)
    if np.issubdtype(np.asarray(img).dtype, np.integer):
        a = a / 255.0
    if a.min() < 0 or a.max() > 1.0 + 1e-6:
        raise MiniVGGError("a mask must hold values in 0..1 (or be an 8-bit image)")
    h, w = int(shape[0]), int(shape[1])
    if a.shape != (h, w):
        a = np.asarray(Image.fromarray(a, mode="F").resize((w, h), Image.BILINEAR), np.float32)
    return np.clip(a, 0.0, 1.0)


def pool_mask(m, pooling):
    """One 2x2 stride-2 pooling of an (H, W) mask, floor-sized as the net's pooling."""
    h, w = m.shape[0] // 2 * 2, m.shape[1] // 2 * 2
    blocks = m[:h, :w].reshape(h // 2, 2, w // 2, 2)
    return blocks.max(axis=(1, 3)) if pooling == "max" else blocks.mean(axis=(1, 3))


def layer_masks(net, mask, layers):
    """{layer: (M_l,) float32} the (H, W) mask taken down to each layer's map by the
    pooling the net uses (avg or max), one pooling per pool layer before the layer."""
    out = {}
    order = net.layer_names
    for name in layers:
        m = np.asarray(mask, np.float32)
        for prev in order[:order.index(name)]:
            if prev.startswith("pool"):
                m = pool_mask(m, net.pooling)
        out[name] = np.ascontiguousarray(m.reshape(-1))
    return out


# --- losses -----------------------------------------------------------------------------
def normalized_gram(F, m=None):
    """G_m = (F m)(F m)^T / sum m^2 of a (1, N, H, W) or (N, H, W) response (m None:
    G / M); returns (G_m, mu)."""
    xp = get_array_module(F)
    Fm = F.reshape(F.shape[-3], -1)
    if m is None:
        return losses.gram_matrix(Fm.reshape(1, *Fm.shape, 1))[0] / Fm.dtype.type(Fm.shape[1]), float(Fm.shape[1])
    m = xp.asarray(m, dtype=Fm.dtype)
    mu = float((m.astype("float64") ** 2).sum())
    if mu <= 0:
        raise MiniVGGError("a style mask is empty at a style layer (all zero after pooling)")
    Fw = Fm * m[None, :]
    return losses.gram_matrix(Fw.reshape(1, *Fw.shape, 1))[0] / Fm.dtype.type(mu), mu


def guided_style_loss(F, a, m=None, beta=1.0):
    """beta (mu/M) E_m and its gradient w.r.t. F (module docstring); ``a`` the target
    normalized Gram (N x N), ``m`` the (M,) mask at F's map or None (all ones)."""
    xp = get_array_module(F)
    N = F.shape[-3]
    Fm = F.reshape(N, -1)
    M = Fm.shape[1]
    G, mu = normalized_gram(F, m)
    D = G - a
    w = beta * mu / M
    value = w * 0.25 / (N * N) * float((D.astype("float64") ** 2).sum())
    coef = Fm.dtype.type(w / (N * N * mu))
    Fw = Fm if m is None else Fm * (xp.asarray(m, dtype=Fm.dtype) ** 2)[None, :]
    grad = xp.matmul(D * coef, Fw).reshape(F.shape)
    return value, grad


def masked_content_loss(F, P, c=None):
    """1/2 sum c (F - P)^2 and its gradient c (F - P) (c: (M,) mask at F's map or None)."""
    xp = get_array_module(F)
    d = F - P
    if c is not None:
        shape = (1,) * (F.ndim - 2) + F.shape[-2:]
        dc = d * xp.asarray(c, dtype=F.dtype).reshape(shape)
        return 0.5 * float((d.astype("float64") * dc.astype("float64")).sum()), dc
    return 0.5 * float((d.astype("float64") ** 2).sum()), d


def normalize_gradient(g, weight):
    """weight * g / (||g||_1 + 1e-8), neural-style's -normalize_gradients."""
    xp = get_array_module(g)
    n = float(xp.abs(g).astype("float64").sum())
    return g * g.dtype.type(weight / (n + NORMALIZE_EPS))


class ControlObjective:
    """f(x) -> (total, grad, info) of a style transfer with masks and/or normalized
    gradients (module docstring); the same terms, values and log keys as
    methods.common.Objective otherwise, and the same value on the same inputs when no
    mask is given and nothing is normalized.

    content: {layer: (P, c or None)}; style: {layer: (w_l, [(a_r, m_r or None, beta_r)])}
    with a_r normalized Gram targets (target_gram).
    """

    def __init__(self, net, content, style, content_weight=1.0, style_weight=1.0, tv_weight=0.0,
                 tv_beta=2.0, loss_norm="mean", normalize_gradients=False):
        self.net, self.content, self.style = net, dict(content), dict(style)
        self.cw, self.sw, self.tvw, self.tv_beta = float(content_weight), float(style_weight), float(tv_weight), tv_beta
        self.loss_norm, self.normalize = loss_norm, bool(normalize_gradients)
        self.layers = list(dict.fromkeys(list(self.content) + list(self.style)))
        self.evaluations = 0
        xp = net.xp
        self._dev = lambda a: None if a is None else xp.asarray(a)
        self.content = {k: (P, self._dev(c)) for k, (P, c) in self.content.items()}
        self.style = {k: (w, [(xp.asarray(a), self._dev(m), b) for a, m, b in regions])
                      for k, (w, regions) in self.style.items()}

    def __call__(self, x):
        self.evaluations += 1
        feats = self.net.forward(x, self.layers)
        grads, info = {}, {}
        lc = 0.0
        for name, (P, c) in self.content.items():
            v, dF = masked_content_loss(feats[name], P, c)
            k = 1.0 / P.size if self.loss_norm == "mean" else 1.0
            lc += k * v
            dF = normalize_gradient(dF, self.cw) if self.normalize else dF * dF.dtype.type(self.cw * k)
            _add(grads, name, dF)
        ls = 0.0
        for name, (w, regions) in self.style.items():
            g_layer = None
            for a, m, beta in regions:
                v, dF = guided_style_loss(feats[name], a, m, beta)
                ls += w * v
                g_layer = dF if g_layer is None else g_layer + dF
            g_layer = normalize_gradient(g_layer, self.sw * w) if self.normalize else g_layer * g_layer.dtype.type(self.sw * w)
            _add(grads, name, g_layer)
        if self.content:
            info["content"] = lc
        if self.style:
            info["style"] = ls
        del feats
        grad = self.net.backward(grads, keep=False)
        total = self.cw * lc + self.sw * ls
        info["tv"] = 0.0
        if self.tvw:
            v, g = tv_term(losses.total_variation, self.net, x, self.tv_beta, self.loss_norm)
            info["tv"] = v
            total += self.tvw * v
            grad = grad + g * self.tvw
        return total, grad, info


def _add(grads, name, g):
    grads[name] = g if name not in grads else grads[name] + g


def target_gram(feats):
    """a = G_s / M_s: the style image's Gram normalized by its own positions (so a
    style of another size or aspect than the result gives a target of the same scale)."""
    return to_host(normalized_gram(feats)[0])


# --- command line -----------------------------------------------------------------------
COLOR_TRANSFERS = ("none", "histogram", "cholesky", "luminance")


def control_objective(net, P, styles, blend, style_shapes, shape, style_layers, style_layer_weights, content_weight,
                      style_weight, tv_weight, loss_norm, masks=None, content_mask=None, normalize_gradients=False):
    """The ControlObjective of one style-transfer stage (style_shapes: one (h, w) per
    style, or {layer: that list} when layers take the style at different scales) at the result's ``shape``: the
    style targets a_i = G(style_i) / M_i, one region per style with its mask pooled down
    the net (beta_i = blend_i * number of styles), or without masks one region, all
    ones, with the blend-weighted sum of the a_i (as the unmasked objective)."""
    from ..image import resize

    if not isinstance(style_shapes, dict):
        style_shapes = {name: style_shapes for name in style_layers}
    a = [{} for _ in styles]
    for i, img in enumerate(styles):  # one forward per distinct size of the style (style_layer_scales)
        for s_shape in dict.fromkeys(tuple(style_shapes[name][i]) for name in style_layers):
            group = [name for name in style_layers if tuple(style_shapes[name][i]) == s_shape]
            feats = net.forward(net.preprocess(resize(img, s_shape)), group)
            a[i].update({name: target_gram(feats[name]) for name in group})
    style = {}
    if masks is None:
        for name, w in zip(style_layers, style_layer_weights):
            style[name] = (w, [(sum(b * t[name] for b, t in zip(blend, a)), None, 1.0)])
    else:
        pooled = [layer_masks(net, mask_array(m, shape), style_layers) for m in masks]
        n = len(styles)
        for name, w in zip(style_layers, style_layer_weights):
            regions = [(t[name], pm[name], b * n) for t, pm, b in zip(a, pooled, blend)
                       if float((pm[name].astype(np.float64) ** 2).sum()) > 0]  # a region pooled away at a deep layer
            style[name] = (w, regions)
    c = layer_masks(net, mask_array(content_mask, shape), list(P)) if content_mask is not None else {}
    content = {name: (p, c.get(name)) for name, p in P.items()}
    return ControlObjective(net, content, style, content_weight=content_weight, style_weight=style_weight,
                            tv_weight=tv_weight, loss_norm=loss_norm, normalize_gradients=normalize_gradients)


# --- sweep ------------------------------------------------------------------------------
# The control parameters a sweep can vary (kinds as in minivgg.experiments.params.KINDS: a
# tuple is the choices); params adds them to the style method's parameters.
SWEEP_KINDS = {"color_transfer": COLOR_TRANSFERS, "normalize_gradients": ("off", "on")}


def sweep_kwargs(p):
    """style_transfer keyword arguments from a sweep cell's parameters (None: default)."""
    kw = {}
    if p.get("color_transfer") not in (None, "none"):
        kw["color_transfer"] = p["color_transfer"]
    if p.get("normalize_gradients") == "on":
        kw["normalize_gradients"] = True
    return kw
