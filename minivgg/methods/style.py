"""Neural style transfer (Gatys, Ecker & Bethge, "Image Style Transfer Using
Convolutional Neural Networks", CVPR 2016).

The image x (in the network's input space, ``net.preprocess``) minimizes

    total = content_weight * Lc + style_weight * Ls + tv_weight * TV

- Lc = sum over content layers l of 1/(2 N_l M_l) sum_ij (F^l_ij - P^l_ij)^2, P^l the
  content image's response: eq. 1 divided by the layer's N_l M_l entries (``loss_norm
  "mean"``, the default; "paper" drops the division, eq. 1 exactly);
- Ls = sum over style layers l of w_l E_l, E_l = 1/(4 N_l^2 M_l^2) sum_ij (G^l_ij -
  A^l_ij)^2 (eq. 4-5), G^l = F^l F^l^T the Gram matrix with no further normalization;
  w_l proportional to 1/N_l^2 and summing to 1 unless given ("equal": 1 / number of
  layers, the paper's); with several style images A^l is the blend-weighted sum of
  their Gram matrices (blend weights normalized to sum 1);
- TV = the mean over pixels of the squared differences to the right and lower
  neighbours, in pixel levels (total_variation(x, beta=2) / (H W s^2), s one pixel level
  in input units), times kappa (``content_gain``: the content layers' mean square over
  the content image's), which puts it in the content term's units whatever the scale of
  the network's responses; "paper": total_variation(x, 2) as it is.

Why these defaults (measured on the pretrained VGG-16 and VGG-19, docs/methods.md):
eq. 1 grows with the image's area while E_l does not, so a ratio that keeps the content
at one size loses it at another; E_l of a 512-channel layer is ~N_l^2 times that of a
64-channel one for the same relative mismatch, so equal w_l let relu4_1/relu5_1 drown
the finer layers (1/N_l^2 is the balance of neural-style's Gram normalization).

The style images keep their aspect ratio: each is resized so that its longest side is
the content's longest side times ``style_scale`` (``stretch_style=True``: to the
content's height and width times the scale, the earlier behaviour); an image already of
that size is not resampled. Coarse to fine (``scales``): each stage resizes the content
to the stage's longest side, recomputes the targets and starts from the previous
stage's result, upsampled.
"""

import time

import numpy as np

from .. import losses
from ..errors import MiniVGGError
from ..image import preserve_colors, resize, resize_array, resize_longest, size_for_longest
from ..vgg import layer_channels
from .common import Objective, check_layers, ensure_memory, initial_x, run_optimizer, MethodResult

CONTENT_LAYERS = ("relu4_2",)
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
CONTENT_WEIGHT = 1.0
STYLE_WEIGHT = 3e-3
TV_WEIGHT = 2e-2
LOSS_NORM = "mean"


def style_layer_weights_for(layers, weights=None):
    """w_l: ``None`` -> proportional to 1/N_l^2, summing to 1; ``"equal"`` -> 1/len(layers);
    else the given list (checked for length)."""
    if weights is None:
        inv = [1.0 / layer_channels(name) ** 2 for name in layers]
        return [v / sum(inv) for v in inv]
    if isinstance(weights, str):
        if weights != "equal":
            raise MiniVGGError(f"unknown style layer weights {weights!r}; give numbers or 'equal'")
        return [1.0 / len(layers)] * len(layers)
    weights = [float(w) for w in weights]
    if len(weights) != len(layers):
        raise MiniVGGError(f"{len(weights)} style layer weight(s) for {len(layers)} style layer(s)")
    return weights


def layer_positions(net, shape, name):
    """M_l = H_l W_l of layer ``name`` for an input of ``shape`` (each 2x2 pooling before
    it halves the map, floor-sized)."""
    h, w = int(shape[0]), int(shape[1])
    for prev in net.layer_names[:net.layer_names.index(name)]:
        if prev.startswith("pool"):
            h, w = h // 2, w // 2
    return h * w


def style_targets(net, styles, blend, layers, shape, result_shape=None):
    """{layer: A} with A = sum_i blend_i G^l(style_i) M_l / M_l(style_i), each style
    resized to ``shape`` ((height, width), or one such pair per style image).

    E_l divides by the result's M_l^2, so a Gram summed over a style's own M_s positions
    must be rescaled by M / M_s (equivalently: every Gram normalized by its own positions)
    when the style keeps an aspect or scale that differs from the result's;
    ``result_shape`` is the result's (height, width) (None: the same as each style's)."""
    targets = {}
    shapes = list(shape) if isinstance(shape, list) else [shape] * len(styles)
    for img, b, s_shape in zip(styles, blend, shapes):
        feats = net.forward(net.preprocess(resize(img, s_shape)), layers)
        for name in layers:
            k = 1.0
            if result_shape is not None:
                k = layer_positions(net, result_shape, name) / layer_positions(net, s_shape, name)
            G = losses.gram_matrix(feats[name]) * np.float32(b * k)
            targets[name] = G if name not in targets else targets[name] + G
    return targets


def content_targets(net, img, layers):
    feats = net.forward(net.preprocess(img), layers)
    return {name: feats[name].copy() for name in layers}


def style_transfer(net, content, styles, *, style_blend=None, content_layers=CONTENT_LAYERS,
                   style_layers=STYLE_LAYERS, style_layer_weights=None, content_weight=CONTENT_WEIGHT,
                   style_weight=STYLE_WEIGHT, tv_weight=TV_WEIGHT, style_scale=1.0, init="noise",
                   original_colors=False, size=None, scales=None, optimizer="lbfgs", iters=500, lr=None,
                   seed=0, optim_options=None, callback=None, loss_norm=LOSS_NORM, stretch_style=False,
                   masks=None, content_mask=None, color_transfer="none", normalize_gradients=False,
                   style_layer_scales=None, tile=None, tile_overlap=32):
    """Gatys et al. 2016 style transfer; the objective is in the module docstring.

    content: uint8 (H, W, 3) RGB; styles: one image or a list; style_blend: a weight
    per style image (normalized to sum 1; default equal); style_layer_weights: None
    (proportional to 1/N_l^2), "equal" or a list; loss_norm: "mean" | "paper" (module
    docstring); stretch_style: resize the styles to the content's height and width
    instead of keeping their aspect; init: "noise" (the mean pixel with a faint noise) |
    "uniform" (white noise over 0..255) | "content"
    (exactly ``net.preprocess(content)``) | "style" | a uint8 image; original_colors:
    keep the content's colours by luminance transfer (Gatys et al. 2016, "Preserving
    color in neural artistic style transfer"); size: longest side of the result (None:
    the content's size); scales: e.g. [256, 512] for coarse to fine (``iters`` per
    stage). tile: make a result larger than ``tile`` px in overlapping tiles of that size
    (methods/tiled.py; tile_overlap px shared). Returns a MethodResult.

    Control (Gatys et al. 2017, minivgg/methods/control.py, minivgg/color.py): masks: one
    mask per style image (grey/binary uint8 image or float array in 0..1, resized to the
    result) giving where that style goes: guided Gram matrices per region, the region's
    weight its share of the map times style_blend_i * (number of styles) (1 each by
    default); content_mask: weights the content loss per position; color_transfer:
    "none" | "histogram" | "cholesky" (the style images' colour mean and covariance
    matched to the content's first) | "luminance" (optimize on luminance, then the
    content's colours); normalize_gradients: each term's gradient divided by its L1 norm
    (neural-style's -normalize_gradients); style_layer_scales: one factor per style
    layer multiplying style_scale for that layer's target (the paper's two-scale
    combination: e.g. [1, 1, 2, 2, 2] takes relu3_1-relu5_1 from a copy of the style
    twice as large, so coarse structures come larger while the fine texture stays).
    """
    from .. import color

    if tile and max(size_for_longest(np.shape(content), size) if size else np.shape(content)[:2]) > tile:
        return _tiled(net, content, styles, tile, tile_overlap, dict(
            style_blend=style_blend, content_layers=content_layers, style_layers=style_layers,
            style_layer_weights=style_layer_weights, content_weight=content_weight, style_weight=style_weight,
            tv_weight=tv_weight, style_scale=style_scale, original_colors=original_colors, size=size, scales=scales,
            optimizer=optimizer, iters=iters, lr=lr, seed=seed, optim_options=optim_options, callback=callback,
            loss_norm=loss_norm, stretch_style=stretch_style, masks=masks, content_mask=content_mask,
            color_transfer=color_transfer, normalize_gradients=normalize_gradients,
            style_layer_scales=style_layer_scales, init=init))
    original_content = content
    content, styles_in = color.prepare(content, [styles] if isinstance(styles, np.ndarray) and styles.ndim == 3
                                       else list(styles), color_transfer)
    if color_transfer == "luminance":
        original_colors = True
    styles = styles_in
    if masks is not None:
        masks = [masks] if isinstance(masks, np.ndarray) and masks.ndim == 2 else list(masks)
        if len(masks) != len(styles):
            raise MiniVGGError(f"{len(masks)} style mask(s) for {len(styles)} style image(s)")
    control = dict(masks=masks, content_mask=content_mask, normalize_gradients=bool(normalize_gradients))
    if isinstance(styles, np.ndarray) and styles.ndim == 3:
        styles = [styles]
    styles = list(styles)
    if not styles:
        raise MiniVGGError("style transfer needs at least one style image")
    if style_blend is None:
        style_blend = [1.0] * len(styles)
    style_blend = [float(b) for b in style_blend]
    if len(style_blend) != len(styles):
        raise MiniVGGError(f"{len(style_blend)} style blend weight(s) for {len(styles)} style image(s)")
    if any(b < 0 for b in style_blend) or sum(style_blend) <= 0:
        raise MiniVGGError("style blend weights must be >= 0 and not all zero")
    blend = [b / sum(style_blend) for b in style_blend]
    content_layers = check_layers(net, content_layers, "content layer")
    style_layers = check_layers(net, style_layers, "style layer")
    style_layer_weights = style_layer_weights_for(style_layers, style_layer_weights)
    for name, v in (("content weight", content_weight), ("style weight", style_weight), ("tv weight", tv_weight)):
        if v < 0:
            raise MiniVGGError(f"{name} must be >= 0; got {v}")
    if not style_scale > 0:
        raise MiniVGGError(f"style scale must be positive; got {style_scale}")
    if style_layer_scales is None:
        style_layer_scales = [1.0] * len(style_layers)
    style_layer_scales = [float(f) for f in style_layer_scales]
    if len(style_layer_scales) != len(style_layers) or not all(f > 0 for f in style_layer_scales):
        raise MiniVGGError(f"style layer scales: give one positive factor per style layer ({len(style_layers)}); "
                           f"got {style_layer_scales}")
    control["layer_scales"] = dict(zip(style_layers, style_layer_scales))
    stages = [int(s) for s in scales] if scales else [size]
    for s in stages:
        if s is not None and s <= 0:
            raise MiniVGGError(f"size must be a positive number of pixels; got {s}")

    rng = np.random.default_rng(seed)
    all_layers = list(dict.fromkeys(list(content_layers) + list(style_layers)))
    history, t0 = [], time.perf_counter()
    x = res = None
    first_row = 0
    settings = dict(content_layers=content_layers, style_layers=style_layers, style_layer_weights=style_layer_weights,
                    content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight,
                    style_blend=blend, style_scale=style_scale, scales=stages, optimizer=optimizer, iters=iters,
                    seed=seed, original_colors=original_colors, loss_norm=loss_norm, stretch_style=stretch_style,
                    init=init if isinstance(init, str) else "image", color_transfer=color_transfer,
                    masks=None if masks is None else len(masks), content_mask=content_mask is not None,
                    normalize_gradients=bool(normalize_gradients), style_layer_scales=style_layer_scales)
    # check every stage's memory before starting any work
    shapes = [size_for_longest(np.shape(content), s) if s else np.shape(content)[:2] for s in stages]
    for shape in shapes:
        ensure_memory(net, shape, all_layers, "content image")
        for s_shape in [t for f in set(style_layer_scales)
                        for t in _style_shapes(styles, shape, style_scale * f, stretch_style)]:
            ensure_memory(net, s_shape, style_layers, "style image")
    for k, s in enumerate(stages):
        try:
            objective, x, c_img = _stage(net, content, styles, blend, s, style_scale, content_layers, style_layers,
                                         style_layer_weights, content_weight, style_weight, tv_weight, init, rng,
                                         None if k == 0 else res.x, loss_norm, stretch_style, control)
        except KeyboardInterrupt:
            if res is None:
                raise
            res.stopped, res.message = "interrupted", f"interrupted before stage {k + 1} of {len(stages)}"
            break
        render = _renderer(net, resize(original_content, c_img.shape[:2]) if original_colors else c_img,
                           original_colors)
        extra = {"scale": s} if len(stages) > 1 else None
        res = run_optimizer(objective, x, optimizer=optimizer, iters=iters, lr=lr, optim_options=optim_options,
                            callback=callback, render=render, net=net, first_row=first_row, t0=t0,
                            history=history, extra=extra)
        first_row = history[-1]["iter"] if history else first_row
        if res.stopped in ("interrupted", "diverged", "callback"):
            break
    return MethodResult(render(res.x), res.x, history, res.stopped, res.message, settings=settings)


def _tiled(net, content, styles, tile, overlap, kw):
    """style_transfer through the tiled final stage (methods/tiled.py)."""
    from .tiled import tiled_style_transfer

    for name in ("masks", "scales", "content_mask"):
        if kw.pop(name) is not None:
            raise MiniVGGError(f"the tiled stage (tile) takes no {name.replace('_', ' ')}")
    if kw.pop("init") not in ("noise", None):
        raise MiniVGGError("the tiled stage (tile) starts from noise; give no init")
    size = kw.pop("size") or max(np.shape(content)[:2])
    img, info = tiled_style_transfer(net, content, styles, size=size, tile=tile, overlap=overlap, **kw)
    n = len(info["boxes"])
    return MethodResult(img, net.preprocess(img), info["history"], info["stopped"],
                        f"{info['stopped']}: coarse {tile} px run and {n} tiles of {tile} px",
                        settings=dict(tile=tile, tile_overlap=overlap, tiles=n, size=size))


def _stage(net, content, styles, blend, s, style_scale, content_layers, style_layers, style_layer_weights,
           content_weight, style_weight, tv_weight, init, rng, prev_x, loss_norm, stretch_style, control=None):
    """Targets, objective and start image of one coarse-to-fine stage."""
    c_img = resize_longest(content, s) if s else np.asarray(content)
    shape = c_img.shape[:2]
    P = content_targets(net, c_img, content_layers)
    control = dict(control or {})
    layer_scales = control.pop("layer_scales", None) or {}
    s_shapes = {name: _style_shapes(styles, shape, style_scale * layer_scales.get(name, 1.0), stretch_style)
                for name in style_layers}
    if loss_norm == "mean":
        tv_weight = tv_weight * content_gain(net, c_img, P)
    if control.get("masks") is not None or control.get("content_mask") is not None or \
            control.get("normalize_gradients"):
        from .control import control_objective

        objective = control_objective(net, P, styles, blend, s_shapes, shape, style_layers, style_layer_weights,
                                      content_weight, style_weight, tv_weight, loss_norm, **control)
    else:
        A = {}
        for f in sorted(set(layer_scales.get(name, 1.0) for name in style_layers)):
            group = [name for name in style_layers if layer_scales.get(name, 1.0) == f]
            A.update(style_targets(net, styles, blend, group, s_shapes[group[0]], result_shape=shape))
        objective = Objective(
            net, content=P, style={name: (A[name], w) for name, w in zip(style_layers, style_layer_weights)},
            content_weight=content_weight, style_weight=style_weight, tv_weight=tv_weight, tv_beta=2.0,
            loss_norm=loss_norm)
    if prev_x is None:
        x = initial_x(net, init, shape, rng, content=c_img, style=resize(styles[0], shape))
    else:
        x = resize_array(prev_x, shape)
    return objective, x, c_img


def content_gain(net, img, P):
    """kappa = mean over the content layers of mean(P^2) / mean((x_c / s)^2): the energy the
    net carries from the content image x_c (in pixel levels about the mean) to its content
    layers. The "mean" objective multiplies TV by it, so that TV is in the content term's
    units: ~1 for the Caffe VGG-16, ~1.6e-4 for its Gatys-normalized copy (mean activation
    1), where an unscaled TV outweighs the content 1000-fold and blurs the result away."""
    from ..backend import to_host
    from .common import input_scale

    x = np.asarray(to_host(net.preprocess(img)), dtype=np.float64) / input_scale(net)
    energy = float((x**2).mean())
    if energy <= 0:
        return 1.0
    return float(np.mean([float((np.asarray(to_host(p), dtype=np.float64) ** 2).mean()) for p in P.values()])) / energy


def _style_shapes(styles, shape, style_scale, stretch):
    """Each style image's (height, width): its own aspect with the longest side the
    content's times the style scale, or (stretch) the content's shape times the scale."""
    if stretch:
        return [(max(1, int(round(shape[0] * style_scale))), max(1, int(round(shape[1] * style_scale))))] * len(styles)
    longest = max(1, int(round(max(shape) * style_scale)))
    return [size_for_longest(np.shape(img), longest) for img in styles]


def _renderer(net, content, original_colors):
    if not original_colors:
        return net.deprocess
    return lambda x: preserve_colors(content, net.deprocess(x))
