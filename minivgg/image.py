"""Images in and out: load, save (atomically), resize, colour preservation, samples.

Images are ``uint8`` arrays (H, W, 3) in RGB order everywhere outside the network;
``net.preprocess`` / ``net.deprocess`` move them into and out of the net's input space.
"""

import os

import numpy as np

from .errors import MiniVGGError

# built-in photos (scikit-image's data module; no network needed)
SAMPLES = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "colorwheel")


def load_image(path):
    """Read an image file as uint8 (H, W, 3) RGB (grey and RGBA are converted, the EXIF
    orientation applied).

    Raises MiniVGGError when the file is missing, not an image, or too large to decode.
    """
    from PIL import Image, ImageOps

    path = os.fspath(path)
    if not os.path.exists(path):
        raise MiniVGGError(f"{path}: no such image file")
    if os.path.isdir(path):
        raise MiniVGGError(f"{path}: is a directory, not an image file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if w <= 0 or h <= 0:
                raise MiniVGGError(f"{path}: image has no pixels ({w}x{h})")
            im = ImageOps.exif_transpose(im)  # phone photos: apply the EXIF rotation
            im = im.convert("RGB")
            arr = np.asarray(im, dtype=np.uint8)
    except MiniVGGError:
        raise
    except Image.DecompressionBombError as e:
        raise MiniVGGError(f"{path}: image too large to decode safely ({e})") from None
    except MemoryError:
        raise MiniVGGError(f"{path}: not enough memory to decode this image") from None
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise MiniVGGError(f"{path}: cannot read image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


def _format_for(path):
    from PIL import Image

    ext = os.path.splitext(path)[1].lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None:
        raise MiniVGGError(f"{path}: unknown image file extension {ext or '(none)'!r}; use .png or .jpg")
    return fmt


def check_writable(path):
    """Raise MiniVGGError unless an image can be written at ``path`` (known extension,
    existing folder); call before long work so bad output paths fail up front."""
    path = os.fspath(path)
    _format_for(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise MiniVGGError(f"{path}: folder {folder} does not exist")
    if os.path.isdir(path):
        raise MiniVGGError(f"{path}: is a directory")
    return path


def atomic_write(path, write):
    """Call ``write(tmp_path)`` and rename the temporary file to ``path`` only when it
    succeeded, so that ``path`` never holds a partial file."""
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    stem, ext = os.path.splitext(name)
    tmp = os.path.join(folder, f".{stem}.tmp-{os.getpid()}{ext}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def save_image(path, img):
    """Write a uint8 (H, W, 3) RGB image (format from the extension), atomically."""
    from PIL import Image

    fmt = _format_for(os.fspath(path))
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    im = Image.fromarray(np.ascontiguousarray(img))
    return atomic_write(path, lambda tmp: im.save(tmp, format=fmt))


def size_for_longest(shape, longest):
    """(height, width) with the longer side ``longest`` and the aspect ratio of ``shape``."""
    h, w = shape[:2]
    longest = int(longest)
    if longest <= 0:
        raise MiniVGGError(f"size must be a positive number of pixels; got {longest}")
    if h >= w:
        return longest, max(1, int(round(w * longest / h)))
    return max(1, int(round(h * longest / w))), longest


def resize(img, size):
    """Resize a uint8 RGB image to ``size`` = (height, width) with Lanczos filtering.
    An image that already has that size is returned unchanged (not resampled)."""
    from PIL import Image

    h, w = int(size[0]), int(size[1])
    if h <= 0 or w <= 0:
        raise MiniVGGError(f"image size must be positive; got {h}x{w}")
    img = np.asarray(img)
    if img.shape[:2] == (h, w):
        return img
    return np.asarray(Image.fromarray(img).resize((w, h), Image.LANCZOS), dtype=np.uint8)


def resize_longest(img, longest):
    """Resize so that the longer side is ``longest`` (unchanged when it already is)."""
    return resize(img, size_for_longest(np.shape(img), longest))


def resize_array(x, size):
    """Resize an input-space array (N, C, H, W) to (height, width) bilinearly (used to
    carry a result to the next, finer scale). Works on numpy and CuPy arrays."""
    from .backend import get_array_module, to_host
    from PIL import Image

    xp = get_array_module(x)
    h, w = size
    if tuple(x.shape[2:]) == (h, w):
        return x
    host = to_host(x).astype(np.float32)
    out = np.empty(host.shape[:2] + (h, w), np.float32)
    for n in range(host.shape[0]):
        for c in range(host.shape[1]):
            out[n, c] = np.asarray(Image.fromarray(host[n, c], mode="F").resize((w, h), Image.BILINEAR))
    return xp.asarray(out)


# --- colour preservation ----------------------------------------------------------
# YIQ (NTSC): Y is the luminance, I and Q carry the colour. "Preserving color in neural
# artistic style transfer" (Gatys et al. 2016) transfers the luminance channel only; we
# keep the generated image's Y and the content image's I and Q.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114], [0.595716, -0.274453, -0.321263], [0.211456, -0.522591, 0.311135]])
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)


def rgb_to_yiq(img):
    return np.asarray(img, np.float64) @ _RGB2YIQ.T


def yiq_to_rgb(yiq):
    return yiq @ _YIQ2RGB.T


def preserve_colors(content, generated):
    """Luminance transfer: the generated image's luminance with the content image's
    colour (its I and Q chrominance), as uint8 RGB. ``content`` is resized to the
    generated image's size first if needed."""
    content = resize(content, np.shape(generated)[:2])
    y = rgb_to_yiq(generated)[..., :1]
    iq = rgb_to_yiq(content)[..., 1:]
    rgb = yiq_to_rgb(np.concatenate([y, iq], axis=-1))
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


# --- sample images ------------------------------------------------------------------
def sample_image(name):
    """A built-in photo by name (from scikit-image's data module, no network needed):
    one of ``SAMPLES``."""
    if name not in SAMPLES:
        raise MiniVGGError(f"unknown sample image {name!r}; choose one of {', '.join(SAMPLES)}")
    try:
        from skimage import data
    except ImportError:
        raise MiniVGGError("sample images need scikit-image: pip install scikit-image") from None
    img = np.asarray(getattr(data, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=-1)
    if img.dtype != np.uint8:
        img = np.clip(img * (255.0 if img.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[..., :3])


def load_input(spec):
    """An image path, or ``sample:NAME`` for a built-in photo (SAMPLES)."""
    spec = os.fspath(spec)
    if spec.startswith("sample:"):
        return sample_image(spec[len("sample:"):])
    return load_image(spec)


def side_by_side(images, height=None, gap=4, background=255):
    """One uint8 RGB image with ``images`` placed left to right, each scaled to the
    same ``height`` (default: the first image's height)."""
    height = int(height or np.shape(images[0])[0])
    tiles = [resize(im, (height, max(1, int(round(np.shape(im)[1] * height / np.shape(im)[0]))))) for im in images]
    width = sum(t.shape[1] for t in tiles) + gap * (len(tiles) - 1)
    out = np.full((height, width, 3), background, np.uint8)
    col = 0
    for t in tiles:
        out[:, col:col + t.shape[1]] = t
        col += t.shape[1] + gap
    return out


# --- memory estimate ----------------------------------------------------------------
def available_memory(device="cpu"):
    """Bytes of memory available now (MemAvailable on Linux; free GPU memory for
    ``"gpu"``); None when unknown."""
    if device == "gpu":
        try:
            import cupy

            free, _total = cupy.cuda.runtime.memGetInfo()
            return int(free)
        except Exception:
            return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def estimate_memory(net, height, width, deepest, copies=1):
    """Rough bytes a forward + backward to layer ``deepest`` needs at (height, width):
    every layer's output kept for backward, the largest im2col buffer, a few gradient
    buffers and the weights; ``copies`` forwards kept at once (e.g. targets)."""
    from . import arch

    h, w, c = height, width, 3
    total = 0
    largest_cols = largest_act = 0
    for spec in arch.specs(net.arch, net.keep_classifier):
        if spec.name not in net.layer_names:
            break
        if spec.kind == "conv":
            largest_cols = max(largest_cols, spec.k * spec.k * c * h * w)
        elif spec.kind == "pool":
            h, w = h // spec.stride, w // spec.stride
        elif spec.kind == "fc":
            h = w = 1
        c = spec.c_out
        act = c * h * w
        largest_act = max(largest_act, act)
        total += act
        if spec.name == deepest:
            break
    weights = sum(9 * cin * cout + cout for _n, cin, cout in arch.conv_specs(net.arch))
    return 4 * (copies * total + largest_cols + 4 * largest_act + weights + 16 * height * width * 3)


def check_memory(net, height, width, deepest, what="image"):
    """Refuse up front (MiniVGGError with the estimate) when the run would not fit."""
    need = estimate_memory(net, height, width, deepest)
    avail = available_memory(net.device)
    if avail is not None and need > avail:
        raise MiniVGGError(
            f"{what} of {height}x{width} needs about {need / 2**30:.1f} GiB through {deepest}, "
            f"but only {avail / 2**30:.1f} GiB is available; use a smaller --size"
        )
    return need


# --- loss curves (drawn with Pillow; matplotlib is not a dependency) -----------------
_COLORS = [(0, 0, 0), (31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)]


def _nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 5, 10) if m * mag >= raw), default=raw)
    start = np.ceil(lo / step) * step
    return [start + i * step for i in range(int((hi - start) / step) + 1)]


def line_plot(xs, series, title="", xlabel="", width=640, height=400, log=None):
    """A line chart of ``series`` ({name: [y...]}, one colour each, with a legend) over
    ``xs`` as a uint8 RGB image. ``log``: log10 y axis (default: when no value is negative
    and some are positive; zeros, e.g. a term's row 0, are then left out rather than
    forcing a linear axis on which one early spike flattens everything else).
    Non-finite values are skipped."""
    from PIL import Image, ImageDraw

    ys_all = [float(v) for vals in series.values() for v in vals if np.isfinite(v)]
    if log is None:
        log = bool(ys_all) and min(ys_all) >= 0 and max(ys_all) > 0
    tr = (lambda v: np.log10(v) if v > 0 else np.nan) if log else float
    vals = {k: [tr(float(v)) if np.isfinite(v) else np.nan for v in vs] for k, vs in series.items()}
    finite = [v for vs in vals.values() for v in vs if np.isfinite(v)]
    ylo, yhi = (min(finite), max(finite)) if finite else (0.0, 1.0)
    if yhi - ylo < 1e-12:
        ylo, yhi = ylo - 0.5, yhi + 0.5
    pad = 0.05 * (yhi - ylo)
    ylo, yhi = ylo - pad, yhi + pad
    xlo, xhi = (min(xs), max(xs)) if len(xs) else (0, 1)
    if xhi == xlo:
        xhi = xlo + 1
    im = Image.new("RGB", (width, height), (255, 255, 255))
    d = ImageDraw.Draw(im)
    left, right, top, bottom = 70, width - 15, 30, height - 40

    def px(x, y):
        return (left + (x - xlo) / (xhi - xlo) * (right - left), bottom - (y - ylo) / (yhi - ylo) * (bottom - top))

    d.rectangle([left, top, right, bottom], outline=(0, 0, 0))
    for t in _nice_ticks(ylo, yhi):
        _x, y = px(xlo, t)
        d.line([left - 4, y, left, y], fill=(0, 0, 0))
        d.line([left + 1, y, right - 1, y], fill=(230, 230, 230))
        label = f"1e{t:g}" if log else f"{t:.3g}"
        d.text((4, y - 6), label, fill=(0, 0, 0))
    for t in _nice_ticks(xlo, xhi):
        x, _y = px(t, ylo)
        d.line([x, bottom, x, bottom + 4], fill=(0, 0, 0))
        d.text((x - 8, bottom + 6), f"{t:g}", fill=(0, 0, 0))
    if xlabel:
        d.text(((left + right) // 2 - 3 * len(xlabel), height - 16), xlabel, fill=(0, 0, 0))
    ylabel = "log10 loss" if log else "loss"
    d.text((4, 8), f"{title}  ({ylabel})" if title else ylabel, fill=(0, 0, 0))
    for i, (name, vs) in enumerate(vals.items()):
        color = _COLORS[i % len(_COLORS)]
        pts = [px(x, y) for x, y in zip(xs, vs) if np.isfinite(y)]
        if len(pts) > 1:
            d.line(pts, fill=color, width=2)
        elif pts:
            d.ellipse([pts[0][0] - 2, pts[0][1] - 2, pts[0][0] + 2, pts[0][1] + 2], fill=color)
        d.line([right - 110, top + 10 + 14 * i, right - 90, top + 10 + 14 * i], fill=color, width=2)
        d.text((right - 85, top + 4 + 14 * i), name, fill=color)
    return np.asarray(im)
