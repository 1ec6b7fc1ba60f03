"""``minivgg visualize``: activation maximization (docs/cli.md)."""

import argparse
import os

from ..errors import MiniVGGError
from . import common
from .args import (
    MAX_SIDE, add_net_options, add_optim_options, add_output_options, bounded_int, optim_options, side_int,
    weight_float,
)


VISUALIZE_HELP = """\
Activation maximization: the image that most excites one channel of a layer (its mean
response), or an ImageNet class score (--class, needs weights with the classifier, 224x224).
Minimizes -activation_weight * A + tv_weight * TV + l2_weight * sum x^2 with random jitter;
activation_weight normalizes the start gradient (docs/methods.md)."""


def add_parser(sub):
    p = sub.add_parser("visualize", help="activation maximization of a channel or a class", description=VISUALIZE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("visualization")
    g.add_argument("--layer", default=None, help="layer to maximize (e.g. relu4_1)")
    g.add_argument("--channel", type=bounded_int(0, 4095), default=None, help="channel of the layer (default: the whole layer)")
    g.add_argument("--class", dest="class_index", default=None, metavar="INDEX|NAME",
                   help="ImageNet class index (0-999) or name, instead of --layer")
    g.add_argument("--size", type=side_int, default=224, help="image side (default 224; --class needs 224)")
    g.add_argument("--jitter", type=bounded_int(0, MAX_SIDE), default=8, help="largest random shift in pixels (default 8)")
    g.add_argument("--tv-weight", type=weight_float, default=None, help="TV weight (default 5e-3 per pixel level)")
    g.add_argument("--l2-weight", type=weight_float, default=None, help="L2 weight (default 1e-4 per pixel level)")
    add_net_options(p)
    add_optim_options(p, iters=200, optimizer="adam")
    add_output_options(p, "visualize.png")
    p.set_defaults(_run=run, _graceful=True)


def class_index(value):
    """An ImageNet class index from an integer or a (unique part of a) class name."""
    with open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "data", "imagenet_classes.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    try:
        idx = int(value)
    except ValueError:
        v = value.lower()
        hits = [i for i, n in enumerate(names) if n.lower() == v] or [i for i, n in enumerate(names) if v in n.lower()]
        if len(hits) != 1:
            what = "no" if not hits else f"{len(hits)}"
            raise MiniVGGError(f"{what} ImageNet class names match {value!r}; give an index 0-999") from None
        return hits[0]
    if not 0 <= idx < len(names):
        raise MiniVGGError(f"class index {idx} out of range 0..{len(names) - 1}")
    return idx


def run(args):
    from ..methods import visualize

    common.check_outputs(args)
    if args.class_index is None and args.layer is None:
        raise MiniVGGError("give --layer (and optionally --channel) or --class")
    idx = class_index(args.class_index) if args.class_index is not None else None
    net = common.load_net(args, keep_classifier=idx is not None, layers=None if idx is not None else [args.layer])
    if idx is None:
        net.check_layers([args.layer])
    runner = common.MethodRunner(args, total_rows=args.iters + 1, desc="visualize")
    return runner.run(visualize, net, args.layer, channel=args.channel, class_index=idx, size=args.size,
                      iters=args.iters, optimizer=args.optimizer, lr=args.lr, jitter=args.jitter,
                      tv_weight=args.tv_weight, l2_weight=args.l2_weight, seed=args.seed,
                      optim_options=optim_options(args))
