"""``minivgg invert``: reconstruction of an image from one layer (docs/cli.md)."""

import argparse
from . import common
from .args import (
    add_net_options, add_optim_options, add_output_options, bounded_float, name_list, optim_options, side_int,
    weight_float,
)


INVERT_HELP = """\
Reconstruct an image from one layer's response (Mahendran & Vedaldi 2015): from white
noise, minimize
  total = content_weight * 1/2 sum (F(x) - F(x0))^2 + alpha_weight * sum |x|^alpha + tv_weight * TV_beta
Default alpha/TV weights follow the paper's normalization, scaled down so that shallow
layers are reconstructed sharply (docs/methods.md)."""


def add_parser(sub):
    from ..methods.invert import INVERT_LAYER

    p = sub.add_parser("invert", help="reconstruct an image from one layer (Mahendran & Vedaldi)",
                       description=INVERT_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("inversion")
    g.add_argument("--image", required=True, metavar="IMG", help="image to reconstruct (or sample:NAME)")
    g.add_argument("--layer", type=name_list, default=[INVERT_LAYER], metavar="LAYER",
                   help=f"layer(s) whose response is matched (default {INVERT_LAYER})")
    g.add_argument("--size", type=side_int, default=None, help="longest side to work at (default: the image's own)")
    g.add_argument("--content-weight", type=weight_float, default=1.0, help="weight of the feature loss (default 1)")
    g.add_argument("--alpha", type=bounded_float(0, 32, lo_open=True), default=6.0, help="alpha-norm exponent, (0, 32] (default 6)")
    g.add_argument("--alpha-weight", type=weight_float, default=None,
                   help="weight of the alpha-norm (default 0.01 ||F0||^2 / (2 H W B^alpha), B = 80 pixel levels)")
    g.add_argument("--beta", type=bounded_float(0, 16, lo_open=True), default=2.0, help="TV exponent beta, (0, 16] (default 2)")
    g.add_argument("--tv-weight", type=weight_float, default=None,
                   help="weight of TV^beta (default l ||F0||^2 / (2 H W V^beta), V = B/6.5, l = 0.001 for layers of "
                        "blocks 1-3, 0.01 deeper)")
    g.add_argument("--init", default="noise", metavar="noise|uniform|content|FILE",
                   help="start image: the mean pixel with a faint noise (default), white noise uniform over 0..255, "
                        "the image itself, or an image file")
    add_net_options(p)
    add_optim_options(p, iters=300)
    add_output_options(p, "invert.png")
    p.set_defaults(_run=run, _graceful=True)


def run(args):
    from ..methods import invert

    common.check_outputs(args)
    image = common.load_input(args.image)
    init = common.init_arg(args.init)
    net = common.load_net(args, layers=args.layer)
    net.check_layers(args.layer)
    runner = common.MethodRunner(args, total_rows=args.iters + 1, desc="invert")
    return runner.run(invert, net, image, args.layer, size=args.size, content_weight=args.content_weight,
                      alpha=args.alpha, alpha_weight=args.alpha_weight, beta=args.beta, tv_weight=args.tv_weight,
                      init=init, optimizer=args.optimizer, iters=args.iters, lr=args.lr, seed=args.seed,
                      optim_options=optim_options(args))
