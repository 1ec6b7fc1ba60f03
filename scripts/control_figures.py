"""The figures of issue 21 (docs/methods.md, "Control"): masked style, colour transfer and
gradient normalization on real weights, with the numbers docs/methods.md quotes.

    python scripts/control_figures.py --weights /work/w/vgg16.h5 --figure mask --size 128 --iters 100
"""

import argparse
import json
import time

import numpy as np

from minivgg import load_vgg
from minivgg.image import resize_longest, sample_image, save_image, side_by_side
from minivgg.methods import style_transfer


def strokes(size=256, seed=0):
    """A synthetic 'painting': thick curved strokes of a few saturated colours on deep blue."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    im = Image.new("RGB", (size, size), (20, 40, 110))
    d = ImageDraw.Draw(im)
    palette = [(240, 200, 40), (250, 240, 160), (60, 110, 200), (30, 70, 160), (200, 220, 240), (255, 150, 30)]
    for _ in range(500):
        x, y = rng.uniform(0, size, 2)
        ang = rng.uniform(0, np.pi)
        pts = []
        for t in range(6):
            ang += rng.normal(0, 0.3)
            x, y = x + 6 * np.cos(ang), y + 6 * np.sin(ang)
            pts.append((x, y))
        d.line(pts, fill=palette[rng.integers(len(palette))], width=int(rng.integers(3, 7)))
    return np.asarray(im)


def halves_moved(a, b, split):
    """Mean |a - b| in pixel levels on the left and right of column ``split``, and on the
    outer quarters (away from the seam)."""
    d = np.abs(a.astype(np.float64) - b.astype(np.float64)).mean(axis=(0, 2))
    w = len(d)
    return {"left": float(d[:split].mean()), "right": float(d[split:].mean()),
            "left_outer": float(d[: w // 4].mean()), "right_outer": float(d[3 * w // 4:].mean())}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--figure", choices=("mask", "regions", "color", "normalize", "scale"), required=True)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--out", default="docs/img")
    a = p.parse_args()
    net = load_vgg("vgg16", weights=a.weights, pooling="avg", up_to="relu5_1")
    content = resize_longest(sample_image("chelsea"), a.size)
    style = strokes()
    h, w = content.shape[:2]
    kw = dict(iters=a.iters, size=a.size)
    out, t0 = {}, time.perf_counter()
    if a.figure == "mask":
        left = np.zeros((h, w), np.uint8)
        left[:, : w // 2] = 255
        c_only = style_transfer(net, content, [style], style_weight=0.0, **kw).image
        full = style_transfer(net, content, [style], **kw).image
        masked = style_transfer(net, content, [style], masks=[left], **kw).image
        c_only_seed1 = style_transfer(net, content, [style], style_weight=0.0, seed=1, **kw).image
        out["content_only_seed1_vs_seed0"] = halves_moved(c_only_seed1, c_only, w // 2)  # the noise floor
        out["masked_vs_content_only"] = halves_moved(masked, c_only, w // 2)
        out["full_vs_content_only"] = halves_moved(full, c_only, w // 2)
        save_image(f"{a.out}/control_mask.png", side_by_side([content, style, left.repeat(3).reshape(h, w, 3),
                                                             c_only, full, masked], height=h))
    elif a.figure == "regions":
        second = resize_longest(sample_image("immunohistochemistry"), 256)
        yy, xx = np.mgrid[:h, :w]
        disc = (((yy - h * 0.45) / (h * 0.38)) ** 2 + ((xx - w * 0.5) / (w * 0.3)) ** 2 < 1)
        m1 = (disc * 255).astype(np.uint8)  # the cat's head: strokes
        m2 = ((~disc) * 255).astype(np.uint8)  # around it: the stained tissue
        r = style_transfer(net, content, [style, second], masks=[m1, m2], **kw).image
        save_image(f"{a.out}/control_regions.png", side_by_side([content, style, second, m1.repeat(3).reshape(h, w, 3), r],
                                                                height=h))
    elif a.figure == "color":
        plain = style_transfer(net, content, [style], **kw).image
        hist = style_transfer(net, content, [style], color_transfer="histogram", **kw).image
        lum = style_transfer(net, content, [style], color_transfer="luminance", **kw).image
        from minivgg.color import match_color

        save_image(f"{a.out}/control_color.png", side_by_side([content, style, match_color(style, content), plain, hist,
                                                              lum], height=h))
        for name, img in (("content", content), ("plain", plain), ("histogram", hist), ("luminance", lum)):
            px = img.reshape(-1, 3).astype(np.float64)
            out[name] = {"mean": [round(v, 1) for v in px.mean(0)], "std": [round(v, 1) for v in px.std(0)]}
    elif a.figure == "scale":
        plain = style_transfer(net, content, [style], **kw).image
        small = style_transfer(net, content, [style], style_scale=0.5, **kw).image
        two = style_transfer(net, content, [style], style_layer_scales=[1, 1, 2, 2, 2], **kw).image
        save_image(f"{a.out}/control_scale.png", side_by_side([content, style, plain, small, two], height=h))
    else:
        plain = style_transfer(net, content, [style], **kw)
        norm = style_transfer(net, content, [style], normalize_gradients=True, style_weight=100.0, content_weight=5.0,
                              optimizer="adam",
                              **kw)
        out["plain"] = plain.history[-1]
        out["normalized"] = norm.history[-1]
        out["normalized_stopped"] = norm.stopped
        save_image(f"{a.out}/control_normalize.png", side_by_side([content, style, plain.image, norm.image], height=h))
    out["seconds"] = time.perf_counter() - t0
    print(json.dumps(out, default=float))


if __name__ == "__main__":
    main()
