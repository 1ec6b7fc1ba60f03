"""Texture synthesis from Gram matrices (Gatys, Ecker & Bethge, "Texture Synthesis
Using Convolutional Neural Networks", NIPS 2015).

Starting from white noise, the image x minimizes

    total = style_weight * sum over layers l of w_l E_l + tv_weight * TV,
    E_l = 1/(4 N_l^2 M_l^2) sum_ij (G^l_ij - A^l_ij)^2    (eq. 4)

with A^l the source's Gram matrices and w_l = 1 / (number of layers) unless given.
Because E_l compares Gram matrices normalized by M_l^2, the output size is independent
of the source size, but the scale of what is matched is not: a 128 px output matched to
the statistics of a 512 px source must fit structures 4x larger than its own features
see, and on the pretrained VGG-16 it gives saturated blotches instead of the texture.
So the source is taken at the output's scale by default (``source_size`` = the output's
longest side when ``size`` is given); a different ``source_size`` scales the texture.
"""

import time

import numpy as np

from ..errors import MiniVGGError
from ..image import resize_longest, size_for_longest
from .common import MethodResult, Objective, check_layers, ensure_memory, initial_x, run_optimizer
from .style import style_targets

TEXTURE_LAYERS = ("relu1_1", "pool1", "pool2", "pool3", "pool4")


def synthesize_texture(net, source, *, layers=TEXTURE_LAYERS, layer_weights=None, size=None, source_size=None,
                       style_weight=1.0, tv_weight=0.0, init="noise", optimizer="lbfgs", iters=500, lr=None,
                       seed=0, optim_options=None, callback=None):
    """Gatys et al. 2015 texture synthesis; the objective is in the module docstring.

    source: uint8 (H, W, 3); layers: the layers whose Gram matrices are matched;
    layer_weights: w_l per layer (default 1/len(layers)); size: the output's longest
    side (source aspect ratio) or (height, width) (default the source's size);
    source_size: resize the source (longest side) before taking its Gram matrices
    (default: the output's longest side when ``size`` is given, else the source's own).
    Returns a MethodResult.
    """
    layers = check_layers(net, layers, "texture layer")
    if layer_weights is None:
        layer_weights = [1.0 / len(layers)] * len(layers)
    layer_weights = [float(w) for w in layer_weights]
    if len(layer_weights) != len(layers):
        raise MiniVGGError(f"{len(layer_weights)} layer weight(s) for {len(layers)} layer(s)")
    source = np.asarray(source)
    if source_size is None and size is not None:
        source_size = int(size) if np.ndim(size) == 0 else int(max(size))
    src_shape = size_for_longest(source.shape, source_size) if source_size else source.shape[:2]
    if size is None:
        shape = src_shape
    elif np.ndim(size) == 0:
        shape = size_for_longest(src_shape, size)
    else:
        shape = (int(size[0]), int(size[1]))
        if min(shape) <= 0:
            raise MiniVGGError(f"size must be positive; got {shape[0]}x{shape[1]}")
    ensure_memory(net, shape, layers, "texture")
    ensure_memory(net, src_shape, layers, "source image")
    if source_size:
        source = resize_longest(source, source_size)
    A = style_targets(net, [source], [1.0], layers, source.shape[:2])
    objective = Objective(net, style={n: (A[n], w) for n, w in zip(layers, layer_weights)},
                          style_weight=style_weight, tv_weight=tv_weight)
    rng = np.random.default_rng(seed)
    x = initial_x(net, init, shape, rng, content=None, style=source)
    history = []
    res = run_optimizer(objective, x, optimizer=optimizer, iters=iters, lr=lr, optim_options=optim_options,
                        callback=callback, render=net.deprocess, net=net, t0=time.perf_counter(), history=history)
    settings = dict(layers=layers, layer_weights=layer_weights, size=shape, style_weight=style_weight,
                    tv_weight=tv_weight, optimizer=optimizer, iters=iters, seed=seed)
    return MethodResult(net.deprocess(res.x), res.x, history, res.stopped, res.message, settings=settings)
