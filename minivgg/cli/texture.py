"""``minivgg texture``: texture synthesis (docs/cli.md)."""

import argparse
from . import common
from .args import (
    MAX_WEIGHT, add_net_options, add_optim_options, add_output_options, bounded_float_list, name_list,
    optim_options, side_int, weight_float,
)


TEXTURE_HELP = """\
Texture synthesis (Gatys, Ecker & Bethge 2015): from a faint noise, minimize
  total = style_weight * sum_l w_l E_l + tv_weight * TV,  E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2
with A the source's Gram matrices and w_l = 1/(number of layers). The source is resized to
--size first (or --source-size), so that the texture keeps the source's scale; with
--source-size larger than --size its structures come out larger."""


def add_parser(sub):
    from ..methods.texture import TEXTURE_LAYERS

    p = sub.add_parser("texture", help="texture synthesis from Gram matrices (Gatys 2015)", description=TEXTURE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("texture")
    g.add_argument("--image", "--source", dest="image", required=True, metavar="IMG",
                   help="source texture image (or sample:NAME)")
    g.add_argument("--layers", type=name_list, default=list(TEXTURE_LAYERS), metavar="L1,L2,...",
                   help=f"layers whose Gram matrices are matched (default {','.join(TEXTURE_LAYERS)})")
    g.add_argument("--layer-weights", type=bounded_float_list(MAX_WEIGHT), metavar="W1,W2,...", help="w_l per layer (default 1/number)")
    g.add_argument("--size", type=side_int, default=None,
                   help="longest side of the output (default: the source's size)")
    g.add_argument("--source-size", type=side_int, default=None,
                   help="resize the source to this longest side before taking its statistics (default: --size, "
                        "so the texture keeps the source's scale; without --size, the source's own)")
    g.add_argument("--style-weight", type=weight_float, default=1.0, help="weight of the Gram term (default 1)")
    g.add_argument("--tv-weight", type=weight_float, default=0.0, help="weight of the total variation (default 0)")
    g.add_argument("--init", default="noise", metavar="noise|uniform|FILE",
                   help="start image: the mean pixel with a faint noise (default), white noise uniform over 0..255, "
                        "or an image file")
    add_net_options(p)
    add_optim_options(p, iters=500)
    add_output_options(p, "texture.png")
    p.set_defaults(_run=run, _graceful=True)


def run(args):
    from ..methods import synthesize_texture

    common.check_outputs(args)
    source = common.load_input(args.image)
    init = common.init_arg(args.init)
    net = common.load_net(args, layers=args.layers)
    net.check_layers(args.layers)
    runner = common.MethodRunner(args, total_rows=args.iters + 1, desc="texture")
    return runner.run(synthesize_texture, net, source, layers=args.layers, layer_weights=args.layer_weights,
                      size=args.size, source_size=args.source_size, style_weight=args.style_weight,
                      tv_weight=args.tv_weight, init=init, optimizer=args.optimizer, iters=args.iters, lr=args.lr,
                      seed=args.seed, optim_options=optim_options(args))
