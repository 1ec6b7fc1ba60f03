"""``minivgg style``: neural style transfer (docs/cli.md)."""

import argparse

from ..errors import MiniVGGError
from . import common
from .args import (
    MAX_SIDE, MAX_WEIGHT, add_net_options, add_optim_options, add_output_options, bounded_float, bounded_int,
    bounded_float_list, bounded_size_list, layer_weight_list, name_list, optim_options, side_int, weight_float,
)


STYLE_HELP = """\
Neural style transfer (Gatys, Ecker & Bethge 2016). With x the image in the network's
input space, it minimizes
  total = content_weight * Lc + style_weight * Ls + tv_weight * TV
  Lc = sum over content layers of 1/(2 N M) sum (F - P)^2   (N channels x M positions)
  Ls = sum over style layers of w_l E_l,  E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2
  G = F F^T (Gram matrix), w_l proportional to 1/N_l^2 and summing to 1 unless
  --style-layer-weights (equal: 1/number of layers, the paper's);
  A = the blend-weighted sum of the style images' Gram matrices (blend normalized to sum 1);
  TV = the mean over pixels of (x[i,j+1] - x[i,j])^2 + (x[i+1,j] - x[i,j])^2 in pixel
       levels (total variation, beta = 2), times kappa = mean(P^2) / mean(content^2),
       which puts it in the content term's units (normalized weights included).
With --loss-norm paper, Lc = sum 1/2 (F - P)^2 (the paper's eq. 1) and TV is the plain
sum in input units, as written in the papers; those grow with the image's area, the
default form does not, so the default weights suit every size (docs/methods.md).
The log's content/style/tv columns are Lc, Ls, TV (unweighted); total is the sum above.
Each style image keeps its aspect ratio, its longest side the content's times
--style-scale (--stretch-style: the content's height and width). The defaults (content
1, style 3e-3, TV 2e-2, L-BFGS with a line search from a faint noise) were chosen on the
pretrained VGG-16 and VGG-19 at 128-512 px, plain and Gatys-normalized weights."""


def add_parser(sub):
    from ..methods.style import CONTENT_LAYERS, CONTENT_WEIGHT, LOSS_NORM, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT

    p = sub.add_parser("style", help="neural style transfer (Gatys 2016)", description=STYLE_HELP,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("style transfer")
    g.add_argument("--content", required=True, metavar="IMG", help="content image (or sample:NAME, a built-in photo)")
    g.add_argument("--style", required=True, nargs="+", metavar="IMG", help="one or more style images")
    g.add_argument("--style-blend", type=bounded_float_list(MAX_WEIGHT), metavar="W1,W2,...",
                   help="blend weights of the style images (normalized to sum 1; default equal)")
    g.add_argument("--style-scale", type=bounded_float(0, 16, lo_open=True), default=1.0,
                   help="style images are resized to the content size times this (default 1)")
    g.add_argument("--content-layers", type=name_list, default=list(CONTENT_LAYERS), metavar="L1,L2",
                   help=f"content layers (default {','.join(CONTENT_LAYERS)})")
    g.add_argument("--style-layers", type=name_list, default=list(STYLE_LAYERS), metavar="L1,L2,...",
                   help=f"style layers (default {','.join(STYLE_LAYERS)})")
    g.add_argument("--style-layer-weights", type=layer_weight_list, metavar="W1,W2,...|equal",
                   help="w_l per style layer (default proportional to 1/N_l^2, summing to 1; equal: 1/number of "
                        "style layers)")
    g.add_argument("--content-weight", type=weight_float, default=CONTENT_WEIGHT,
                   help=f"weight of Lc (default {CONTENT_WEIGHT:g})")
    g.add_argument("--style-weight", type=weight_float, default=STYLE_WEIGHT, help=f"weight of Ls (default {STYLE_WEIGHT:g})")
    g.add_argument("--tv-weight", type=weight_float, default=TV_WEIGHT,
                   help=f"weight of the total variation (beta 2) (default {TV_WEIGHT:g})")
    g.add_argument("--init", default="noise", metavar="noise|uniform|content|style|FILE",
                   help="start image: the mean pixel with a faint noise (default), white noise uniform over 0..255, "
                        "exactly the preprocessed content, the (first) style image (the 'amalgamation' experiment), "
                        "or an image file")
    g.add_argument("--loss-norm", choices=("mean", "paper"), default=LOSS_NORM,
                   help="mean (default): Lc and TV divided by their number of entries, so the weights suit every "
                        "size; paper: eq. 1 and the TV sum as written")
    g.add_argument("--stretch-style", action="store_true",
                   help="resize the style images to the content's height and width (default: keep their aspect)")
    g.add_argument("--original-colors", action="store_true",
                   help="keep the content's colours (luminance transfer: the result's Y with the content's I and Q)")
    g.add_argument("--size", type=side_int, default=None,
                   help="longest side of the result; the content is resized to it (default: the content's own size; "
                        "an image already of that size is not resampled)")
    g.add_argument("--scales", type=bounded_size_list(MAX_SIDE), metavar="S1,S2,...",
                   help="coarse to fine, e.g. 256,512: --iters at each size, each stage starting from the previous "
                        "result upsampled (overrides --size)")
    add_net_options(p)
    add_optim_options(p, iters=500)
    add_control_arguments(p)
    add_output_options(p, "style.png")
    p.set_defaults(_run=run, _graceful=True)


def run(args):
    from ..methods import style_transfer

    common.check_outputs(args)
    content = common.load_input(args.content)
    styles = [common.load_input(s) for s in args.style]
    init = common.init_arg(args.init)
    if args.style_blend is not None and len(args.style_blend) != len(styles):
        raise MiniVGGError(f"--style-blend has {len(args.style_blend)} weight(s) for {len(styles)} style image(s)")
    net = common.load_net(args, layers=list(args.content_layers) + list(args.style_layers))
    net.check_layers(args.content_layers)
    net.check_layers(args.style_layers)
    stages = args.scales or [args.size]
    runner = common.MethodRunner(args, total_rows=len(stages) * (args.iters + 1), desc="style")
    return runner.run(
        style_transfer, net, content, styles, style_blend=args.style_blend, content_layers=args.content_layers,
        style_layers=args.style_layers, style_layer_weights=args.style_layer_weights,
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        style_scale=args.style_scale, init=init, original_colors=args.original_colors, size=args.size,
        scales=args.scales, optimizer=args.optimizer, iters=args.iters, lr=args.lr, seed=args.seed,
        optim_options=optim_options(args), loss_norm=args.loss_norm, stretch_style=args.stretch_style,
        **control_kwargs(args))


# ---- control (Gatys et al. 2017) ------------------------------------------------------
def add_control_arguments(p):
    """The style command's control options (Gatys et al. 2017: masks, colour, scale; tiles;
    gradient normalization); docs/methods.md, "Control"."""
    from ..methods.control import COLOR_TRANSFERS

    g = p.add_argument_group("control (Gatys et al. 2017)")
    g.add_argument("--style-mask", nargs="+", metavar="IMG",
                   help="one mask per --style image (grey or binary image, white = where that style goes, resized to "
                        "the result); guided Gram matrices per region, each normalized by its mask's mass; where no "
                        "mask covers, only the content (and TV) act, so the content is kept")
    g.add_argument("--content-mask", metavar="IMG",
                   help="weight the content loss per position by this mask (white = keep the content; default: "
                        "everywhere)")
    g.add_argument("--color-transfer", choices=COLOR_TRANSFERS, default="none",
                   help="histogram: match each style image's colour mean and covariance to the content's before the "
                        "optimization (symmetric eigen / PCA square roots, independent of the channel order); "
                        "cholesky: the same with Cholesky factors; luminance: optimize on luminance only (styles' "
                        "luminance matched to the content's mean and std) and put the content's colours back "
                        "(default none)")
    g.add_argument("--style-layer-scales", type=_factor_list, metavar="F1,F2,...",
                   help="one factor per style layer multiplying --style-scale for that layer's target: the two-scale "
                        "combination, e.g. 1,1,2,2,2 takes the coarse layers from a copy of the style twice as large "
                        "(larger structures, the same fine texture); default all 1")
    g.add_argument("--tile", type=bounded_int(32, MAX_SIDE), default=None, metavar="PX",
                   help="make a result larger than PX in overlapping tiles of PX (a coarse PX run first, every tile "
                        "pulled to the same style targets, seams blended): the memory of a PX run (default: one run)")
    g.add_argument("--tile-overlap", type=bounded_int(0, MAX_SIDE), default=32, metavar="PX",
                   help="pixels each tile shares with its neighbours (default 32)")
    g.add_argument("--normalize-gradients", action="store_true",
                   help="divide each content and style term's gradient by its L1 norm before weighting it "
                        "(neural-style's -normalize_gradients); use with --optimizer adam: the values no longer match "
                        "the gradient, and L-BFGS stalls (line search) or diverges (without)")


def _factor_list(s):
    try:
        v = [float(t) for t in s.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {s!r}") from None
    if not v or not all(0 < f <= 16 for f in v):
        raise argparse.ArgumentTypeError(f"factors must be in (0, 16]: {s!r}")
    return v


def control_kwargs(args):
    """style_transfer keyword arguments from the options of add_control_arguments."""
    kw = {}
    masks = getattr(args, "style_mask", None)
    if masks:
        if len(masks) != len(args.style):
            raise MiniVGGError(f"--style-mask has {len(masks)} mask(s) for {len(args.style)} style image(s)")
        kw["masks"] = [common.load_input(m) for m in masks]
    if getattr(args, "content_mask", None):
        kw["content_mask"] = common.load_input(args.content_mask)
    if getattr(args, "color_transfer", "none") != "none":
        kw["color_transfer"] = args.color_transfer
    if getattr(args, "style_layer_scales", None):
        if len(args.style_layer_scales) != len(args.style_layers):
            raise MiniVGGError(f"--style-layer-scales has {len(args.style_layer_scales)} factor(s) for "
                               f"{len(args.style_layers)} style layer(s)")
        kw["style_layer_scales"] = args.style_layer_scales
    if getattr(args, "tile", None):
        if args.tile < 32 or not 0 <= args.tile_overlap < args.tile // 2:
            raise MiniVGGError(f"--tile must be >= 32 and --tile-overlap in 0..{max(0, args.tile // 2 - 1)}")
        kw["tile"], kw["tile_overlap"] = args.tile, args.tile_overlap
    if getattr(args, "normalize_gradients", False):
        kw["normalize_gradients"] = True
    return kw
