"""DeepDream (Mordvintsev, Olah & Tyka, "Inceptionism: Going Deeper into Neural
Networks", 2015): enhance what a layer (or one of its channels) sees in an image.

Gradient ascent on ``A(x) = 1/2 sum F(x)^2`` over the layer's response (or one
channel's), i.e. descent on ``total = -A``; each step

    x <- clip(x + lr * g / mean|g|),  g = dA/dx at x shifted by a random jitter

(the step normalized by the mean absolute gradient, ``lr`` in pixel levels; clipped
to the valid pixel range). Octaves: the image is processed from the smallest of
``octaves`` scales (each ``octave_scale`` smaller than the next) to the full size;
the detail the ascent added at one octave is upsampled and added to the next.
Zoom: after a dream, the centre is cropped by ``zoom_scale``, resized back and dreamed
again, ``zoom_steps`` times; every dream is a frame.

Defaults (docs/methods.md): the reference's own step (1.5 pixel levels, jitter 32, 4
octaves of 1.4, 10 steps each) at ``relu4_3`` of a max-pooled net. The network must be
the one that was trained: VGG was trained with max pooling, and the average pooling
that suits style transfer (Gatys et al.) changes what the deep layers respond to: the
ascent then grows saturated rainbow rings and streaks instead of eyes, faces and
textures. The CLI loads a max-pooled net for ``dream``; this function warns when it is
given an average-pooled one.

Log rows: row i is the objective after i steps at the current octave's size
(row 0 at the smallest octave's start); the value is taken at the jittered image the
step used, and one final row at the unshifted result.
"""

import sys
import time

import numpy as np

from ..backend import get_array_module
from ..errors import MiniVGGError
from ..image import resize, resize_array, resize_longest, size_for_longest
from .common import MethodResult, Objective, check_layers, ensure_memory, input_scale

DREAM_LAYER = "relu4_3"
DREAM_POOLING = "max"  # the pooling VGG was trained with; avg gives rainbow rings (module docstring)
MIN_OCTAVE_SIDE = 32


def dream(net, image, layer=DREAM_LAYER, *, channel=None, size=None, octaves=4, octave_scale=1.4, iters=10,
          lr=1.5, jitter=32, zoom_steps=0, zoom_scale=1.05, seed=0, callback=None):
    """DeepDream on ``image`` (uint8 (H, W, 3)) at ``layer`` (or its ``channel``).

    size: longest side to work at (default the image's own); iters: steps per octave;
    lr: step size in pixel levels; jitter: largest random shift in pixels; zoom_steps:
    extra dreams on the zoomed-in result (frames in ``result.frames``).
    Returns a MethodResult whose image is the last frame.
    """
    layers = check_layers(net, layer, "layer")
    if len(layers) != 1:
        raise MiniVGGError("dream takes one layer")
    if octaves < 1 or not octave_scale > 1.0:
        raise MiniVGGError(f"need octaves >= 1 and octave scale > 1; got {octaves}, {octave_scale}")
    if iters < 0 or zoom_steps < 0 or jitter < 0:
        raise MiniVGGError("iterations, zoom steps and jitter must be >= 0")
    if not zoom_scale >= 1.0:
        raise MiniVGGError(f"zoom scale must be >= 1; got {zoom_scale}")
    if not lr > 0:
        raise MiniVGGError(f"step size must be positive; got {lr}")
    if getattr(net, "pooling", DREAM_POOLING) != DREAM_POOLING:
        sys.stderr.write(f"minivgg: warning: dream: the net uses {net.pooling} pooling; VGG was trained with "
                         f"{DREAM_POOLING} pooling, and on {net.pooling} the dream grows rainbow rings instead of the "
                         f"layer's patterns (load it with pooling={DREAM_POOLING!r}, or --pooling {DREAM_POOLING})\n")
    ensure_memory(net, size_for_longest(np.shape(image), size) if size else np.shape(image)[:2], layers)
    img = resize_longest(image, size) if size else np.asarray(image)
    used = octaves_that_fit(img.shape[:2], octaves, octave_scale)
    if used < octaves:
        sys.stderr.write(f"minivgg: warning: dream: only {used} of {octaves} octave(s) fit a "
                         f"{img.shape[1]}x{img.shape[0]} image (the smallest side of an octave must be at least "
                         f"{MIN_OCTAVE_SIDE} px); use a larger --size or fewer --octaves\n")
    if channel is not None:
        n = net.forward(net.preprocess(img[:64, :64]), layers)[layers[0]].shape[1]
        if not 0 <= int(channel) < n:
            raise MiniVGGError(f"channel {channel} out of range for {layers[0]}, which has {n} channels (0..{n - 1})")
        channel = int(channel)
    rng = np.random.default_rng(seed)
    objective = Objective(net, activation=[(layers[0], channel, "l2")], jitter=jitter, rng=rng)
    lo = net.preprocess(np.zeros((1, 1, 3), np.uint8)).reshape(1, 3, 1, 1)
    hi = net.preprocess(np.full((1, 1, 3), 255, np.uint8)).reshape(1, 3, 1, 1)
    lo, hi = net.xp.minimum(lo, hi), net.xp.maximum(lo, hi)
    step = lr * input_scale(net)
    state = {"row": 0, "t0": time.perf_counter(), "history": [], "stopped": "iterations", "message": ""}
    frames = []
    current = img
    x = None
    try:
        for z in range(zoom_steps + 1):
            if z > 0:
                current = _zoom(frames[-1], zoom_scale)
            x = _dream_once(net, objective, net.preprocess(current), octaves, octave_scale, iters, step, lo, hi,
                            state, callback)
            frames.append(net.deprocess(x))
            if state["stopped"] != "iterations":
                break
    except KeyboardInterrupt:
        state["stopped"] = "interrupted"
        state["message"] = f"interrupted after {state['row']} step(s)"
        if state.get("x") is not None:
            frames.append(net.deprocess(state["x"]))
    if not frames:
        raise KeyboardInterrupt
    if not state["message"]:
        state["message"] = f"finished {state['row']} step(s)"
    settings = dict(layer=layers[0], channel=channel, octaves=octaves, octaves_used=used, octave_scale=octave_scale,
                    iters=iters, lr=lr,
                    jitter=jitter, zoom_steps=zoom_steps, zoom_scale=zoom_scale, seed=seed)
    final_x = state.get("x") if state["stopped"] == "interrupted" else x
    return MethodResult(frames[-1], final_x, state["history"], state["stopped"], state["message"],
                        frames=frames, settings=settings)


def _zoom(img, scale):
    h, w = img.shape[:2]
    ch, cw = max(1, int(round(h / scale))), max(1, int(round(w / scale)))
    top, left = (h - ch) // 2, (w - cw) // 2
    return resize(np.ascontiguousarray(img[top:top + ch, left:left + cw]), (h, w))


def _log(state, value, info, x, net, callback):
    row = {"iter": state["row"], "total": value, "content": 0.0, "style": 0.0, "tv": 0.0,
           "seconds": time.perf_counter() - state["t0"], "activation": info.get("activation", 0.0)}
    state["history"].append(row)
    state["x"] = x
    if callback is not None:
        rec = dict(row, x=x, render=net.deprocess)
        if callback(rec):
            state["stopped"] = "callback"
            state["message"] = f"stopped by the callback after {state['row']} step(s)"
            return True
    return False


def octave_shapes(shape, octaves, octave_scale):
    """(height, width) of each octave, full size first, while the smaller side is at least
    MIN_OCTAVE_SIDE (the first octave is always kept)."""
    H, W = shape
    shapes = [(H, W)]
    for k in range(1, octaves):
        h, w = int(round(H / octave_scale**k)), int(round(W / octave_scale**k))
        if min(h, w) < MIN_OCTAVE_SIDE:
            break
        shapes.append((h, w))
    return shapes


def octaves_that_fit(shape, octaves, octave_scale):
    return len(octave_shapes(shape, octaves, octave_scale))


def _dream_once(net, objective, base, octaves, octave_scale, iters, step, lo, hi, state, callback):
    xp = get_array_module(base)
    bases = [base] + [resize_array(base, hw) for hw in octave_shapes(base.shape[2:], octaves, octave_scale)[1:]]
    detail = xp.zeros_like(bases[-1])
    x = bases[-1]
    for o, b in enumerate(reversed(bases)):
        if o > 0:
            detail = resize_array(detail, b.shape[2:])
        x = b + detail
        for _ in range(iters):
            value, g, info = objective(x)
            if not np.isfinite(value) or not bool(xp.isfinite(g).all()):
                state["stopped"] = "diverged"
                state["message"] = f"diverged: non-finite objective at step {state['row']}; kept the last good image"
                return state.get("x", x)
            if _log(state, value, info, x, net, callback):
                return x
            # descent on -A: x - step * g / mean|g| with g = d(-A)/dx
            x = xp.clip(x - (step / (float(xp.abs(g).mean()) + 1e-12)) * g, lo, hi)
            state["row"] += 1
        detail = x - b
    value, g, info = objective(x)
    if np.isfinite(value):
        _log(state, value, info, x, net, callback)
    return x
