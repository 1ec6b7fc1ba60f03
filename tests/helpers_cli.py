"""What the command-line tests share: a small weights file and two images, and the
argv of a quick `style` run on them."""

from minivgg.image import resize, sample_image, save_image
from minivgg.vgg import random_weights
from minivgg.weights import CAFFE, write_weights


def cli_files(folder):
    """Random VGG-16 weights and a 32x40 content and style image in ``folder``:
    {"weights", "content", "style", "params"}."""
    params = random_weights("vgg16", seed=5)
    weights = str(folder / "vgg16-test.h5")
    write_weights(weights, params, {"arch": "vgg16", "source_format": "test", "convention": CAFFE})
    content, style = str(folder / "content.png"), str(folder / "style.png")
    save_image(content, resize(sample_image("chelsea"), (32, 40)))
    save_image(style, resize(sample_image("immunohistochemistry"), (32, 40)))
    return {"weights": weights, "content": content, "style": style, "params": params}


def style_args(files, out, *extra):
    """argv of `minivgg style` on ``cli_files`` at 40 px, writing ``out``."""
    return ["style", "--content", files["content"], "--style", files["style"], "--size", "40", "--arch", "vgg16",
            "--weights", files["weights"], "--out", str(out), "--quiet", *extra]
