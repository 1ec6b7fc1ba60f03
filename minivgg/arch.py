"""VGG-16 / VGG-19 (Simonyan & Zisserman 2014) written down once, as a list of layer specs.

Both nets are five blocks of 3x3 stride-1 pad-1 convolutions, each followed by a ReLU,
and a 2x2 stride-2 pooling after every block; VGG-16 has 2, 2, 3, 3, 3 convs per block
(13 in all), VGG-19 2, 2, 4, 4, 4 (16). The classifier (fc6 25088->4096, fc7
4096->4096, fc8 4096->1000, ReLU after the first two) is block 6.

The net (vgg.py), the weight converters (weights_tools/convert.py) and the memory
estimate (image.py) all read this list; ``kind(name)`` answers what a layer name is.
"""

from dataclasses import dataclass

from .errors import MiniVGGError

BLOCKS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
WIDTHS = (64, 128, 256, 512, 512)
FC = (("fc6", 512 * 7 * 7, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000))  # (name, in, out)
KINDS = ("conv", "relu", "pool", "fc")


@dataclass(frozen=True)
class LayerSpec:
    """One layer: its name, kind (conv, relu, pool, fc), block (1-5, 6 the classifier),
    and channels in and out (a pool or ReLU keeps its input's)."""

    name: str
    kind: str
    block: int
    c_in: int
    c_out: int
    k: int = 0  # window: 3 for a conv, 2 for a pool
    stride: int = 1
    pad: int = 0


def check_arch(arch):
    if arch not in BLOCKS:
        raise MiniVGGError(f"unknown architecture {arch!r}; choose vgg16 or vgg19")
    return arch


def specs(arch, keep_classifier=False):
    """The ordered layer specs of ``arch``: conv1_1, relu1_1, ..., pool5 (then fc6 ... fc8)."""
    check_arch(arch)
    out, c = [], 3
    for blk, (n, width) in enumerate(zip(BLOCKS[arch], WIDTHS), start=1):
        for i in range(1, n + 1):
            out.append(LayerSpec(f"conv{blk}_{i}", "conv", blk, c, width, 3, 1, 1))
            out.append(LayerSpec(f"relu{blk}_{i}", "relu", blk, width, width))
            c = width
        out.append(LayerSpec(f"pool{blk}", "pool", blk, c, c, 2, 2, 0))
    if keep_classifier:
        for name, fin, fout in FC:
            out.append(LayerSpec(name, "fc", 6, fin, fout))
            if name != "fc8":
                out.append(LayerSpec(f"relu{name[2:]}", "relu", 6, fout, fout))
    return out


def layer_names(arch, keep_classifier=False):
    return [s.name for s in specs(arch, keep_classifier)]


def conv_specs(arch):
    """[(name, c_in, c_out)] for the conv layers of ``arch``."""
    return [(s.name, s.c_in, s.c_out) for s in specs(arch) if s.kind == "conv"]


def fc_specs():
    """[(name, in, out)] for the classifier."""
    return [(s.name, s.c_in, s.c_out) for s in specs("vgg16", True) if s.kind == "fc"]


# every name either net can have: VGG-19's are a superset of VGG-16's
_ALL = {s.name: s for s in specs("vgg19", keep_classifier=True)}


def spec(name):
    """The spec of layer ``name`` (channels as in VGG-19, the same as VGG-16's where both have it)."""
    s = _ALL.get(name)
    if s is None:
        raise MiniVGGError(f"unknown layer {name!r}; valid layers: {', '.join(_ALL)}")
    return s


def kind(name):
    """conv, relu, pool or fc; None for a name neither VGG has."""
    s = _ALL.get(name)
    return None if s is None else s.kind


def block(name):
    """The block a layer belongs to: 1-5 for conv/relu/pool (relu4_2 -> 4), 6 for the classifier."""
    s = _ALL.get(name)
    return 6 if s is None else s.block


def channels(name):
    """N_l, the number of channels of layer ``name`` (conv4_2, relu4_2, pool4 -> 512)."""
    return spec(name).c_out


def conv_order(name):
    """A sort key putting conv names in network order (conv1_1 < conv1_2 < conv2_1 ...)."""
    s = _ALL.get(name)
    if s is None or s.kind != "conv":
        raise MiniVGGError(f"not a conv layer name: {name!r}")
    b, i = name[4:].split("_")
    return int(b), int(i)
