"""``minivgg dream``: DeepDream (docs/cli.md)."""

import argparse
from . import common
from .args import (
    MAX_SEED, MAX_SIDE, add_net_options, add_output_options, bounded_float, bounded_int, iters_int, lr_float,
    seed_int, side_int,
)


DREAM_HELP = """\
DeepDream (Mordvintsev et al. 2015): gradient ascent on 1/2 sum F^2 of a layer (or one
channel), each step x <- x + lr * g / mean|g| on a randomly jittered image, over several
octaves (each --octave-scale smaller), optionally zooming into the result and dreaming
again (--zoom-steps). The log's total is -1/2 sum F^2 (what is minimized)."""


def add_parser(sub):
    from ..methods.dream import DREAM_LAYER, DREAM_POOLING

    p = sub.add_parser("dream", help="DeepDream on a layer or one channel", description=DREAM_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("dream")
    g.add_argument("--image", required=True, metavar="IMG", help="start image (or sample:NAME)")
    g.add_argument("--layer", default=DREAM_LAYER, help=f"layer to enhance (default {DREAM_LAYER})")
    g.add_argument("--channel", type=bounded_int(0, 4095), default=None, help="only this channel of the layer (default: all)")
    g.add_argument("--size", type=side_int, default=None, help="longest side to work at (default: the image's own)")
    g.add_argument("--octaves", type=bounded_int(1, 16), default=4, help="number of octaves, 1-16 (default 4)")
    g.add_argument("--octave-scale", type=bounded_float(0, 8, lo_open=True), default=1.4, help="scale between octaves (default 1.4)")
    g.add_argument("--iters", type=iters_int, default=10, help="steps per octave (default 10)")
    g.add_argument("--lr", "--step", dest="lr", type=lr_float, default=1.5,
                   help="step size in pixel levels, the gradient normalized by its mean |g| (default 1.5)")
    g.add_argument("--jitter", type=bounded_int(0, MAX_SIDE), default=32, help="largest random shift in pixels (default 32)")
    g.add_argument("--zoom-steps", type=bounded_int(0, 10000), default=0,
                   help="zoom into the result and dream again this many times (default 0)")
    g.add_argument("--zoom-scale", type=bounded_float(0, 8, lo_open=True), default=1.05, help="zoom factor per step (default 1.05)")
    g.add_argument("--frames", action="store_true", help="also write every zoom frame OUT_STEM_frameNNN.EXT")
    g.add_argument("--seed", type=seed_int, default=0, help=f"random seed of the jitter, 0-{MAX_SEED} (default 0)")
    add_net_options(p, pooling=DREAM_POOLING)
    add_output_options(p, "dream.png")
    p.set_defaults(_run=run, _graceful=True)


def run(args):
    from ..methods import dream

    common.check_outputs(args)
    image = common.load_input(args.image)
    net = common.load_net(args, layers=[args.layer])
    net.check_layers([args.layer])
    rows = (args.zoom_steps + 1) * (args.octaves * args.iters + 1)
    runner = common.MethodRunner(args, total_rows=rows, desc="dream")
    return runner.run(dream, net, image, args.layer, channel=args.channel, size=args.size, octaves=args.octaves,
                      octave_scale=args.octave_scale, iters=args.iters, lr=args.lr, jitter=args.jitter,
                      zoom_steps=args.zoom_steps, zoom_scale=args.zoom_scale, seed=args.seed)
