"""ImageNet classification with the kept classifier: the quick check that converted
weights are right (a BGR/RGB mix-up or a wrong mean shows at once in the top classes).

The image is resized so its shorter side is 224 and center-cropped to 224x224 (the
classifier needs pool5 of 7x7), preprocessed with the net's own input convention, run
to ``fc8``, and the logits ``z`` turned into probabilities by the softmax
``p_k = exp(z_k - max z) / sum_j exp(z_j - max z)`` (the max subtracted for stability).
Class names: ``minivgg/data/imagenet_classes.txt``, one per line in the ILSVRC-2012
class index order (the first English name of each WordNet synset).
"""

import os

import numpy as np

from .backend import to_host
from .errors import MiniVGGError

INPUT_SIZE = 224
_NAMES = None


def class_names():
    """The 1000 ImageNet class names, index order."""
    global _NAMES
    if _NAMES is None:
        path = os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")
        with open(path, encoding="utf-8") as f:
            names = [line.rstrip("\n") for line in f if line.strip()]
        if len(names) != 1000:
            raise MiniVGGError(f"{path}: expected 1000 class names, found {len(names)}")
        _NAMES = names
    return _NAMES


def center_crop(img, size=INPUT_SIZE):
    """Resize (shorter side ``size``, bicubic) and center-crop to ``size`` x ``size``."""
    from PIL import Image

    img = np.asarray(img)
    if img.ndim != 3 or img.shape[2] != 3:
        raise MiniVGGError(f"classify needs an RGB image of shape (H, W, 3); got {img.shape}")
    h, w = img.shape[:2]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    if (nh, nw) != (h, w):
        img = np.asarray(Image.fromarray(img.astype(np.uint8)).resize((nw, nh), Image.BICUBIC))
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top : top + size, left : left + size]


def softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def classify(net, img_uint8_rgb, top=5):
    """Top-``top`` ImageNet classes of an RGB uint8 image: ``[(index, name, probability)]``,
    most probable first. ``net`` must keep its classifier (``load_vgg(keep_classifier=True)``)."""
    if "fc8" not in net.layer_names:
        raise MiniVGGError("classify needs the classifier (fc6-fc8): load the net with keep_classifier=True "
                           "from weights converted with --keep-classifier")
    top = int(top)
    if top < 1:
        raise MiniVGGError(f"--top must be at least 1; got {top}")
    x = net.preprocess(center_crop(img_uint8_rgb))
    z = to_host(net.forward(x, ["fc8"])["fc8"]).reshape(-1)
    p = softmax(z)
    names = class_names()
    if p.size != len(names):
        raise MiniVGGError(f"fc8 has {p.size} outputs; the ImageNet class list has {len(names)}")
    order = np.argsort(-p, kind="stable")[: min(top, p.size)]
    return [(int(k), names[k], float(p[k])) for k in order]


def main_args(image_path, top=5, arch="vgg19", weights=None, device="cpu"):
    """Load the image and the net, classify, return the lines to print."""
    from PIL import Image

    from .vgg import load_vgg

    try:
        with Image.open(image_path) as im:
            img = np.asarray(im.convert("RGB"))
    except FileNotFoundError:
        raise MiniVGGError(f"{image_path}: no such image") from None
    except Exception as e:
        raise MiniVGGError(f"{image_path}: not a readable image ({e})") from None
    net = load_vgg(arch, weights=weights, pooling="max", device=device, keep_classifier=True)
    return [f"{p:7.2%}  {name} ({k})" for k, name, p in classify(net, img, top=top)]
