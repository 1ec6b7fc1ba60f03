"""Gatys normalization: rescale VGG so every filter's mean activation is 1.

Gatys, Ecker & Bethge (2015, 2016) normalize the network "by scaling the weights such
that the mean activation of each convolutional filter over images and positions is
equal to one". Because ReLU and both poolings commute with a positive per-channel
scale, this changes every layer's output only by that scale:

Let ``F_l = relu(W_l * x_{l-1} + b_l)`` (pooling in between where VGG has it) and
``m_l[o]`` the mean of ``F_l[o]`` over the images and all positions. Define

    W'_l[o, i] = W_l[o, i] * m_{l-1}[i] / m_l[o],      b'_l[o] = b_l[o] / m_l[o],

with ``m_0 = 1`` (the image is unchanged). If the normalized input is
``x'_{l-1}[i] = x_{l-1}[i] / m_{l-1}[i]`` then ``W'_l * x'_{l-1} + b'_l = (W_l * x_{l-1} + b_l)
/ m_l`` and, as ``m_l > 0``, ``F'_l = F_l / m_l``; by induction from conv1_1 upward every
normalized layer is the original divided per channel by its means, whose means are 1.

In exact arithmetic one forward pass of the original network would give every ``m_l``.
In float32 a filter that fires rarely (mean 1e-4 of its layer's typical value) turns
the rounding of its large pre-activations into a visible error once divided by that
mean, so, as the recipe says, we work from conv1_1 upward: ``m_l`` is measured on the
network whose layers below ``l`` are already normalized -- on exactly the inputs the
normalized layer ``l`` will see. A dead filter (mean at most 1e-7 of its layer's
largest mean on these images) is left unscaled (``m = 1``), so nothing divides by zero.
If the classifier is kept, ``fc6`` absorbs the last conv layer's means (its columns for
channel ``c`` are multiplied by ``m[c]``), so fc6-fc8 compute exactly what they did.
"""

import os

import numpy as np

from minivgg import arch as varch
from minivgg import weights as mw
from minivgg.errors import MiniVGGError

DEAD = 1e-8  # absolute floor for "dead"
DEAD_REL = 1e-7  # relative to the layer's largest mean
# Images are checked from their headers before any is decoded: the decoded image, and
# the image once resized (a 1 x 5000 strip resized to a shorter side of 224 would be
# 224 x 1,120,000), must stay within these many pixels.
MAX_DECODED_PIXELS = 1 << 26
MAX_PIXELS = 1 << 22  # 2048 x 2048 per image after resizing
MAX_TOTAL_PIXELS = 1 << 24  # all images together (each layer's activations of all are kept)
MAX_SIZE = 4096


def builtin_images():
    """scikit-image's bundled sample photos (RGB uint8), the default image set."""
    from skimage import data

    imgs = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry"):
        fn = getattr(data, name, None)
        if fn is None:
            continue
        try:
            img = fn()
        except Exception:  # a sample that needs a download (pooch) is skipped
            continue
        if img.ndim == 3 and img.shape[2] >= 3:
            imgs.append(np.ascontiguousarray(img[..., :3]).astype(np.uint8))
    if not imgs:
        raise MiniVGGError("no built-in images are available; give --images")
    return imgs


def image_files(paths):
    """The image files named by ``paths`` (directories: their images, sorted)."""
    files = []
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(p, f) for f in os.listdir(p)
                           if f.lower().endswith((".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")))
            if not found:
                raise MiniVGGError(f"{p}: no images in this directory")
            files.extend(found)
        else:
            files.append(p)
    return files


def resized_shape(h, w, size):
    """The (h, w) :func:`resize_shorter` gives, computed without an image."""
    if not size:
        return h, w
    s = size / min(h, w)
    return max(1, round(h * s)), max(1, round(w * s))


def check_image_sizes(paths, size):
    """Read only the headers of the images and refuse, before any is decoded, one that
    is too large to decode or would be too large once resized, or a set too large."""
    import warnings

    from PIL import Image

    total = 0
    for p in paths:
        mw.check_regular_file(p, "image file", missing="image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    w, h = im.size
        except MiniVGGError:
            raise
        except Image.DecompressionBombWarning:
            raise MiniVGGError(f"{p}: image too large to decode safely") from None
        except Exception as e:
            raise MiniVGGError(f"{p}: not a readable image ({type(e).__name__}: {mw.quote(str(e), 120)})") from None
        if w <= 0 or h <= 0 or w * h > MAX_DECODED_PIXELS:
            raise MiniVGGError(f"{p}: a {w}x{h} image; at most {MAX_DECODED_PIXELS} pixels are decoded")
        rh, rw = resized_shape(h, w, size)
        if rh * rw > MAX_PIXELS:
            raise MiniVGGError(f"{p}: a {w}x{h} image would be {rw}x{rh} at --size {size}; at most {MAX_PIXELS} "
                               f"pixels per image (crop it or use a smaller --size)")
        total += rh * rw
        if total > MAX_TOTAL_PIXELS:
            raise MiniVGGError(f"the images have more than {MAX_TOTAL_PIXELS} pixels in all at --size {size}; "
                               f"give fewer or use a smaller --size")
    return paths


def load_images(paths):
    import warnings

    from PIL import Image

    imgs = []
    for p in image_files(paths):
        mw.check_regular_file(p, "image file", missing="image")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(p) as im:
                    imgs.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
        except Image.DecompressionBombWarning:
            raise MiniVGGError(f"{p}: image too large to decode safely") from None
        except MemoryError:
            raise MiniVGGError(f"{p}: not enough memory to decode this image") from None
        except Exception as e:
            raise MiniVGGError(f"{p}: not a readable image ({type(e).__name__}: {mw.quote(str(e), 120)})") from None
    return imgs


def resize_shorter(img, size):
    """Resize so the shorter side is ``size`` (aspect kept); ``size`` None keeps it."""
    if not size:
        return img
    from PIL import Image

    h, w = img.shape[:2]
    s = size / min(h, w)
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    if (nh, nw) == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((nw, nh), Image.BICUBIC))


def conv_names(params):
    from .convert import _conv_order

    return sorted((n for n in params if varch.kind(n) == "conv"), key=_conv_order)


def channel_means(net, images, names):
    """Mean of each ``relu`` output channel of ``net`` over all ``images`` and positions."""
    from minivgg.backend import to_host

    relus = ["relu" + n[4:] for n in names]
    sums = {r: 0.0 for r in relus}
    count = {r: 0 for r in relus}
    for img in images:
        feats = net.forward(net.preprocess(img), relus)
        for r in relus:
            F = to_host(feats[r]).astype(np.float64)
            sums[r] = sums[r] + F.sum(axis=(0, 2, 3))
            count[r] += F.shape[0] * F.shape[2] * F.shape[3]
    return {n: sums[r] / count[r] for n, r in zip(names, relus)}


def dead_mask(m):
    """Filters that (almost) never fire: mean at most ``max(DEAD, DEAD_REL * max(m))``."""
    m = np.asarray(m, dtype=np.float64)
    return m <= max(DEAD, DEAD_REL * float(m.max(initial=0.0)))


def layer_scales(m):
    """The divisor for each filter: its mean, or 1 for a dead filter."""
    m = np.asarray(m, dtype=np.float64)
    return np.where(dead_mask(m), 1.0, m)


def rescale_layer(params, name, prev, scale):
    """``W' = W * prev[i] / scale[o]``, ``b' = b / scale[o]`` for one conv layer."""
    W, b = params[name]
    W2 = W.astype(np.float64) * prev[None, :, None, None] / scale[:, None, None, None]
    return W2.astype(np.float32), (b.astype(np.float64) / scale).astype(np.float32)


def normalized_params(params, means):
    """Apply the rescaling to all layers at once, from given means: ``(new params, scales)``."""
    names = conv_names(params)
    out = dict(params)
    prev = np.ones(3)
    scales = {}
    for n in names:
        scale = layer_scales(means[n])
        out[n] = rescale_layer(params, n, prev, scale)
        scales[n] = scale
        prev = scale
    if "fc6" in params:
        out["fc6"] = _absorb_into_fc6(params["fc6"], prev)
    return out, scales


def _absorb_into_fc6(fc6, prev):
    W, b = fc6
    per = W.shape[1] // prev.size
    return (W.astype(np.float64) * np.repeat(prev, per)[None, :]).astype(np.float32), b


def normalize_upward(arch, params, convention, images, pooling="max", device="cpu"):
    """Measure and rescale layer by layer from conv1_1 upward: ``(new params, means)``.

    Each image's activation at the current depth is kept, so every layer is computed
    twice in all (once to measure with the input compensation ``W * m_{l-1}``, once
    with its final weights to give the next layer its input) instead of re-running the
    network from the image for every layer. ``means[l]`` is measured on the network
    whose layers below ``l`` are normalized; it equals the original network's mean of
    layer ``l`` up to rounding, see above.
    """
    import minivgg
    from minivgg.backend import to_host

    names = conv_names(params)
    convs = {n: params[n] for n in names}
    net = minivgg.load_vgg(arch, weights=convs, pooling=pooling, device=device, convention=convention)
    ops, xp = net.ops, net.xp
    hs = [net.preprocess(img) for img in images]
    current = dict(convs)
    prev = np.ones(3)
    means = {}

    def conv_relu(h, W, b):
        y, _ = ops.conv2d_forward(h, xp.asarray(W), xp.asarray(b), 1, 1, {})
        return ops.relu_forward(y)

    for lname in net.layer_names:
        if varch.kind(lname) == "conv":
            W0 = rescale_layer(convs, lname, prev, np.ones(convs[lname][0].shape[0]))
            total, count = 0.0, 0
            for h in hs:
                F = to_host(conv_relu(h, *W0)).astype(np.float64)
                total = total + F.sum(axis=(0, 2, 3))
                count += F.shape[0] * F.shape[2] * F.shape[3]
            means[lname] = total / count
            scale = layer_scales(means[lname])
            current[lname] = rescale_layer(convs, lname, prev, scale)
            hs = [conv_relu(h, *current[lname]) for h in hs]
            prev = scale
        elif varch.kind(lname) == "pool":
            if pooling == "max":
                hs = [ops.max_pool2d_forward(h, 2, 2)[0] for h in hs]
            else:
                hs = [ops.avg_pool2d_forward(h, 2, 2) for h in hs]
    out = dict(params)
    out.update(current)
    if "fc6" in params:
        out["fc6"] = _absorb_into_fc6(params["fc6"], prev)
    return out, means


def normalize(in_path, out_path, image_paths=None, size=224, pooling="max", device="cpu", log=None):
    """Normalize the weights in ``in_path`` on the given images (default: the built-in
    set) and write them to ``out_path``. Returns the per-layer means measured."""
    log = log or (lambda msg: None)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 <= size <= MAX_SIZE:
        raise MiniVGGError(f"--size must be an integer from 0 to {MAX_SIZE} (0: keep the images' size), got {mw.quote(size)}")
    mw.check_output_path(out_path, inputs=[in_path, *image_files(image_paths or [])])
    params, meta = mw.read_weights(in_path)
    arch = meta.get("arch")
    if arch not in ("vgg16", "vgg19"):
        raise MiniVGGError(f"{in_path}: unknown arch {mw.quote(arch)} in the weights file")
    if image_paths:
        images = load_images(check_image_sizes(image_files(image_paths), size))
    else:
        images = builtin_images()
    images = [resize_shorter(im, size) for im in images]
    small = [im.shape[:2] for im in images if min(im.shape[:2]) < 32]
    if small:
        raise MiniVGGError(f"image of {small[0][0]}x{small[0][1]} pixels is too small: VGG needs at least 32 a side (use --size)")
    with np.errstate(all="ignore"):  # an overflow shows as non-finite weights, refused below
        new, means = normalize_upward(arch, params, meta["convention"], images, pooling=pooling, device=device)
    for name, (W, b) in new.items():
        if not (np.isfinite(W).all() and np.isfinite(b).all()):
            raise MiniVGGError(f"{in_path}: normalizing {name} gives NaN or infinite weights (its activations overflow "
                               f"float32 on these images); nothing written")
    dead = sum(int(dead_mask(m).sum()) for m in means.values())
    out_meta = {k: v for k, v in meta.items() if k != "convention"}
    out_meta["convention"] = meta["convention"]
    out_meta["normalized"] = True
    out_meta["normalize_pooling"] = pooling
    out_meta["normalize_images"] = len(images)
    out_meta["normalize_size"] = int(size or 0)
    mw.check_output_path(out_path, inputs=[in_path])
    try:
        mw.write_weights(out_path, new, out_meta)
    except OSError as e:
        raise MiniVGGError(f"{out_path}: cannot write ({e.strerror or e})") from None
    # reported once the file is written, so that a failure prints its error line alone
    log(f"measured mean activations of {arch} on {len(images)} image(s), conv1_1 upward")
    if dead:
        log(f"{dead} filter(s) never fire on these images; left unscaled")
    return means
