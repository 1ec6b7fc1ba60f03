"""Image reconstruction from one layer's response (Mahendran & Vedaldi,
"Understanding Deep Image Representations by Inverting Them", CVPR 2015).

Starting from white noise, the image x minimizes

    total = content_weight * Lc + alpha_weight * R_alpha + tv_weight * TV_beta

- Lc = 1/2 sum (F(x) - F(x0))^2 over the chosen layer(s) (eq. 1 with the squared
  Euclidean loss), x0 the image being inverted;
- R_alpha = sum |x|^alpha (eq. 4), alpha = 6 by default;
- TV_beta = sum ((x_{i,j+1} - x_ij)^2 + (x_{i+1,j} - x_ij)^2)^(beta/2) (eq. 5), beta = 2.

Default weights follow the paper's normalization: its objective
``||F(x) - F0||^2 / ||F0||^2 + l_a R_alpha / (H W B^alpha) + l_tv TV_beta / (H W V^beta)``
(B = 80 pixel levels, V = B / 6.5), multiplied by ||F0||^2 / 2 so that the content
weight is 1: ``alpha_weight = l_a ||F0||^2 / (2 H W B^alpha)``, ``tv_weight = l_tv
||F0||^2 / (2 H W V^beta)``, with B and V in the net's input units.

l_a and l_tv (``ALPHA_LAMBDA``, ``tv_lambda``) were measured on the pretrained VGG-16
(docs/methods.md): with l_a = l_tv = 1 the regularizers outweigh the feature loss of a
shallow layer and the optimum is a blur (conv1_1 at 96 px: 20 dB against the input;
the true image scores 25x worse than the blur); B = 80 also pulls every pixel that lies
further than 80 levels from the mean, washing out the contrast. l_a = 0.01 keeps it a
soft bound on the range; l_tv = 0.001 for blocks 1-3 leaves their near-exact
reconstructions sharp (conv1_1 41 dB, conv3_1 30 dB), 0.01 for blocks 4-5 and the
classifier smooths the deep layers' high-frequency artefacts.
"""

import time

import numpy as np

from ..errors import MiniVGGError
from ..image import resize_longest, size_for_longest
from .common import MethodResult, Objective, check_layers, ensure_memory, initial_x, input_scale, run_optimizer
from ..vgg import layer_block
from .style import content_targets

INVERT_LAYER = "conv4_2"
B_PIXELS = 80.0
ALPHA_LAMBDA = 0.01


def tv_lambda(layers):
    """l_tv of the deepest layer: 0.001 up to block 3, 0.01 below (see the module docstring)."""
    return 0.01 if max(layer_block(name) for name in layers) >= 4 else 0.001


def invert(net, image, layer=INVERT_LAYER, *, size=None, content_weight=1.0, alpha=6.0, alpha_weight=None,
           beta=2.0, tv_weight=None, init="noise", optimizer="lbfgs", iters=300, lr=None, seed=0,
           optim_options=None, callback=None):
    """Reconstruct ``image`` from its response at ``layer`` (a name or a list of names).

    image: uint8 (H, W, 3); size: longest side to work at (default the image's own);
    alpha_weight / tv_weight: None for the paper's normalized defaults (see the module
    docstring); init: "noise" | "content" (the image itself) | a uint8 image.
    Returns a MethodResult; ``settings`` holds the weights used.
    """
    layers = check_layers(net, layer, "layer")
    if alpha <= 0 or beta <= 0:
        raise MiniVGGError(f"alpha and beta must be positive; got alpha={alpha}, beta={beta}")
    shape = size_for_longest(np.shape(image), size) if size else np.shape(image)[:2]
    ensure_memory(net, shape, layers)
    img = resize_longest(image, size) if size else np.asarray(image)
    P = content_targets(net, img, layers)
    norm0 = float(sum(float((p.astype("float64") ** 2).sum()) for p in P.values()))
    H, W = shape
    B = B_PIXELS * input_scale(net)
    V = B / 6.5
    if alpha_weight is None:
        alpha_weight = ALPHA_LAMBDA * norm0 / (2.0 * H * W * B**alpha)
    if tv_weight is None:
        tv_weight = tv_lambda(layers) * norm0 / (2.0 * H * W * V**beta)
    if min(content_weight, alpha_weight, tv_weight) < 0:
        raise MiniVGGError("weights must be >= 0")
    objective = Objective(net, content=P, content_weight=content_weight, tv_weight=tv_weight, tv_beta=beta,
                          alpha_weight=alpha_weight, alpha=alpha)
    rng = np.random.default_rng(seed)
    x = initial_x(net, init, shape, rng, content=img)
    history = []
    res = run_optimizer(objective, x, optimizer=optimizer, iters=iters, lr=lr, optim_options=optim_options,
                        callback=callback, render=net.deprocess, net=net, t0=time.perf_counter(), history=history)
    settings = dict(layers=layers, content_weight=content_weight, alpha=alpha, alpha_weight=alpha_weight,
                    beta=beta, tv_weight=tv_weight, optimizer=optimizer, iters=iters, seed=seed, size=shape)
    return MethodResult(net.deprocess(res.x), res.x, history, res.stopped, res.message, settings=settings)
