"""A tiled final stage for results larger than memory allows (issue 21).

1. The whole result is made at a coarser size (``coarse``, the longest side) by the
   ordinary ``style_transfer``, and upsampled to the final size.
2. The final size is cut into overlapping tiles (``tile`` px, ``overlap`` px shared with
   each neighbour). Each tile is optimized on its own from its crop of the upsampled
   result, with the content target of its crop of the content and the style targets of
   the style images taken at the *whole* result's scale (``style_scale`` multiplied by
   final / tile longest side) and normalized by their own positions (M / M_s,
   style.style_targets), so every tile pulls to the same global Gram targets and the
   strokes have the size they would have in one run.
3. The tiles are blended back with weights that ramp linearly over the overlap (a
   separable tent), so no tile's edge is a hard seam.

Peak memory is that of a ``tile``-sized run (plus the final image); the time is the
coarse run plus the tiles' (measured in docs/methods.md).
"""

import numpy as np

from ..errors import MiniVGGError
from ..image import resize, resize_longest
from .style import style_transfer


def tile_starts(length, tile, overlap):
    """Start offsets of tiles of ``tile`` px covering ``length`` with at least ``overlap`` shared."""
    if tile >= length:
        return [0]
    step = tile - overlap
    n = int(np.ceil((length - tile) / step)) + 1
    return [int(round(i * (length - tile) / (n - 1))) for i in range(n)]


def _ramp(n, overlap, first, last):
    w = np.ones(n, np.float64)
    k = min(overlap, n // 2)
    r = (np.arange(k) + 0.5) / k
    if not first:
        w[:k] = r
    if not last:
        w[n - k:] = r[::-1]
    return w


def tiled_style_transfer(net, content, styles, *, size, tile=256, overlap=32, coarse=None, iters=100,
                         tile_iters=None, style_scale=1.0, seed=0, callback=None, **kw):
    """Style transfer to ``size`` (longest side) in ``tile``-px tiles; see the module
    docstring. ``kw`` goes to every style_transfer call (weights, layers; masks and
    scales are not supported here). ``callback`` sees every run's rows (the tiles' with
    ``render`` None, so no snapshot shows a tile alone); when it stops a run, the tiles
    not yet made keep the upsampled coarse result. Returns (uint8 image, info dict: the
    tiles' boxes, the coarse image, the rows of all runs, stopped)."""
    if "masks" in kw or "scales" in kw:
        raise MiniVGGError("the tiled stage takes no masks or scales")
    if overlap * 2 >= tile:
        raise MiniVGGError(f"overlap {overlap} must be less than half the tile {tile}")
    coarse = coarse or tile
    final = resize_longest(content, size)
    H, W = final.shape[:2]
    first = style_transfer(net, content, styles, size=coarse, iters=iters, style_scale=style_scale, seed=seed,
                           callback=callback, **kw)
    history, stopped = list(first.history), first.stopped

    def tile_callback(rec):
        return callback(dict(rec, render=None)) if callback is not None else False

    start = resize(first.image, (H, W))
    acc = np.zeros((H, W, 3), np.float64)
    wsum = np.zeros((H, W, 1), np.float64)
    boxes = []
    ys, xs = tile_starts(H, tile, overlap), tile_starts(W, tile, overlap)
    for i, y in enumerate(ys):
        for j, x in enumerate(xs):
            h, w = min(tile, H - y), min(tile, W - x)
            c_tile = final[y:y + h, x:x + w]
            if stopped in ("callback", "interrupted", "diverged"):
                tile_img = start[y:y + h, x:x + w]
            else:
                r = style_transfer(net, c_tile, styles, init=start[y:y + h, x:x + w], iters=tile_iters or iters,
                                   style_scale=style_scale * max(H, W) / max(h, w), seed=seed, callback=tile_callback,
                                   **kw)
                tile_img, stopped = r.image, r.stopped
                history += [dict(row, tile=len(boxes)) for row in r.history]
            wt = np.outer(_ramp(h, overlap, i == 0, i == len(ys) - 1), _ramp(w, overlap, j == 0, j == len(xs) - 1))
            acc[y:y + h, x:x + w] += tile_img * wt[..., None]
            wsum[y:y + h, x:x + w] += wt[..., None]
            boxes.append((y, x, h, w))
    out = np.clip(np.rint(acc / np.maximum(wsum, 1e-12)), 0, 255).astype(np.uint8)
    return out, {"boxes": boxes, "coarse": first.image, "history": history, "stopped": stopped}


def seam_ratio(img, boxes):
    """Mean |horizontal + vertical neighbour difference| on the tiles' interior edges
    divided by the image's mean: 1 = seams look like the rest of the image."""
    a = np.asarray(img, np.float64)
    dx = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))  # per column boundary
    dy = np.abs(np.diff(a, axis=0)).mean(axis=(1, 2))
    cols = sorted({x + w - 1 for _, x, _, w in boxes if x + w < a.shape[1]} | {x - 1 for _, x, _, _ in boxes if x > 0})
    rows = sorted({y + h - 1 for y, _, h, _ in boxes if y + h < a.shape[0]} | {y - 1 for y, _, _, _ in boxes if y > 0})
    seam = [dx[c] for c in cols] + [dy[r] for r in rows]
    if not seam:
        return 1.0
    return float(np.mean(seam) / ((dx.mean() + dy.mean()) / 2))
