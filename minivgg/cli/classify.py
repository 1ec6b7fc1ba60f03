"""``minivgg classify``: top-k ImageNet classes (docs/cli.md)."""

import sys

from ..errors import MiniVGGError
from . import common
from .args import add_net_options, bounded_int


def add_parser(sub):
    p = sub.add_parser("classify", help="top-k ImageNet classes of an image (needs weights with the classifier)",
                       description="Classify an image with the full VGG (fc6-fc8): the quick check that converted "
                                   "weights are right (a BGR/RGB mix-up shows at once). Needs weights converted with "
                                   "--keep-classifier.")
    p.add_argument("image", metavar="IMAGE", help="image file (or sample:NAME)")
    p.add_argument("--top", type=bounded_int(1, 1000), default=5, help="number of classes to print (default 5)")
    add_net_options(p, pooling="max")
    p.set_defaults(_run=run)


def run(args):
    image = common.load_input(args.image)
    try:
        from ..classify import classify
    except ImportError:
        raise MiniVGGError("classification is not available in this installation (minivgg.classify missing)") from None
    from ..weights import default_weights_path

    path = args.weights or default_weights_path(common.resolve_arch(args), classifier=True)
    if path is None:
        sys.stderr.write(f"{common.PROG}: note: no pretrained weights: the classes below come from random weights and "
                         f"mean nothing\n")
    net = common.load_net(args, keep_classifier=True)
    for index, name, prob in classify(net, image, args.top):
        print(f"{prob:8.4f}  {index:4d}  {name}")
    return 0
