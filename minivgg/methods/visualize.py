"""Activation maximization: the image that most excites one channel of a layer, or
one ImageNet class score (Erhan et al. 2009; Simonyan, Vedaldi & Zisserman, "Deep
Inside Convolutional Networks", 2014; Yosinski et al. 2015 for jitter).

The image x minimizes

    total = -activation_weight * A(x) + tv_weight * TV(x) + l2_weight * sum x^2

with A the mean of the channel's response over all positions (or of the whole layer
when no channel is given), or the class score fc8[c] (before the softmax, as in
Simonyan et al.). Each evaluation shifts the image by a random jitter of up to
``jitter`` pixels (torus roll) before the forward pass. ``activation_weight`` is
1 / mean|dA/dx| at the start image, so that the default TV and L2 weights (set in
pixel units) mean the same for any weights and layer.
"""

import time

import numpy as np

from ..errors import MiniVGGError
from .common import MethodResult, Objective, check_layers, ensure_memory, input_scale, run_optimizer

TV_PIXEL_WEIGHT = 5e-3
L2_PIXEL_WEIGHT = 1e-4


def visualize(net, layer=None, channel=None, class_index=None, *, size=224, iters=200, optimizer="adam", lr=None,
              jitter=8, tv_weight=None, l2_weight=None, seed=0, optim_options=None, callback=None):
    """Maximize a channel of ``layer`` (or the whole layer), or ImageNet class
    ``class_index`` (needs the classifier: ``load_vgg(..., keep_classifier=True)``,
    224 x 224 input). Starts from grey plus faint noise. Returns a MethodResult."""
    rng = np.random.default_rng(seed)
    size = int(size)
    if class_index is not None:
        if "fc8" not in net.layer_names:
            raise MiniVGGError("class visualization needs the classifier (fc6-fc8): weights converted with "
                               "--keep-classifier, loaded with keep_classifier=True")
        if not 0 <= int(class_index) < 1000:
            raise MiniVGGError(f"class index must be in 0..999; got {class_index}")
        if size != 224:
            raise MiniVGGError(f"class visualization needs a 224x224 image (the classifier's input); got size {size}")
        terms = [("fc8", int(class_index), "score")]
        layers = ["fc8"]
    else:
        if layer is None:
            raise MiniVGGError("give a layer (and optionally a channel) or a class index")
        layers = check_layers(net, layer, "layer")
        if len(layers) != 1:
            raise MiniVGGError("visualize takes one layer")
        terms = [(layers[0], None if channel is None else int(channel), "mean")]
    if size <= 0:
        raise MiniVGGError(f"size must be a positive number of pixels; got {size}")
    if jitter < 0:
        raise MiniVGGError(f"jitter must be >= 0; got {jitter}")
    ensure_memory(net, (size, size), layers)
    grey = np.clip(128 + rng.normal(0, 8, size=(size, size, 3)), 0, 255).astype(np.uint8)
    x = net.preprocess(grey)
    feats = net.forward(x, layers)
    if class_index is None and channel is not None:
        n = feats[layers[0]].shape[1]
        if not 0 <= int(channel) < n:
            raise MiniVGGError(f"channel {channel} out of range for {layers[0]}, which has {n} channels (0..{n - 1})")
    # scale the activation term so its gradient has mean magnitude 1 at the start
    probe = Objective(net, activation=terms, activation_weight=1.0)
    _, g0, _ = probe(x)
    gmean = float(abs(g0).mean())
    activation_weight = 1.0 / gmean if gmean > 0 else 1.0
    s = input_scale(net)
    if tv_weight is None:
        tv_weight = TV_PIXEL_WEIGHT / s
    if l2_weight is None:
        l2_weight = L2_PIXEL_WEIGHT / s
    objective = Objective(net, activation=terms, activation_weight=activation_weight, tv_weight=tv_weight,
                          alpha_weight=l2_weight, alpha=2.0, jitter=jitter, rng=rng)
    history = []
    res = run_optimizer(objective, x, optimizer=optimizer, iters=iters, lr=lr, optim_options=optim_options,
                        callback=callback, render=net.deprocess, net=net, t0=time.perf_counter(), history=history)
    settings = dict(layer=layers[0], channel=channel, class_index=class_index, size=size, jitter=jitter,
                    activation_weight=activation_weight, tv_weight=tv_weight, l2_weight=l2_weight,
                    optimizer=optimizer, iters=iters, seed=seed)
    return MethodResult(net.deprocess(res.x), res.x, history, res.stopped, res.message, settings=settings)
