"""The command line's argument types (ranges checked at parse time, with the range in
the message) and the option groups the method commands share."""

import argparse

# --- argument types ------------------------------------------------------------------
def positive_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {v}")
    return v


def nonneg_int(s):
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {s!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {v}")
    return v


def positive_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {s!r}") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {s}")
    return v


def nonneg_float(s):
    try:
        v = float(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {s!r}") from None
    if not v >= 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {s}")
    return v


def name_list(s):
    names = [p.strip() for p in s.split(",") if p.strip()]
    if not names:
        raise argparse.ArgumentTypeError("expected comma-separated layer names")
    return names


def float_list(s):
    try:
        vals = [float(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or any(not v >= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers >= 0, got {s!r}")
    return vals


def size_list(s):
    try:
        vals = [int(p) for p in s.split(",") if p.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sizes, got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"sizes must be positive integers, got {s!r}")
    return vals


# Ranges of the built-in commands' values, checked at parse time so that an absurd
# value is refused with its range before anything runs (1e308 as a weight overflows the
# loss, an alpha of 1e308 overflows |x|^alpha, a negative seed is refused by numpy late).
MAX_ITERS = 1_000_000
MAX_SIDE = 1 << 20  # sides this large are then refused by the memory estimate, with the GiB needed
MAX_WEIGHT = 1e15
MAX_SEED = 2**32 - 1


def bounded_int(lo, hi):
    """An argparse type: an integer from ``lo`` to ``hi`` (the range is in the message)."""
    span = f"a positive integer up to {hi}" if lo == 1 else f"an integer from {lo} to {hi}"

    def parse(s):
        try:
            v = int(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {span}, got {s!r}") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"must be {span}, got {v}")
        return v

    parse.__name__ = f"integer {lo}..{hi}"
    return parse


def bounded_float(lo, hi, lo_open=False, hi_open=False):
    """An argparse type: a finite number in [lo, hi] (``lo_open``: > lo; ``hi_open``: < hi)."""
    left, right = "(" if lo_open else "[", ")" if hi_open else "]"
    span = f"{left}{lo:g}, {hi:g}{right}"

    def parse(s):
        try:
            v = float(s)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number in {span}, got {s!r}") from None
        ok = v == v and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        if not ok:
            raise argparse.ArgumentTypeError(f"must be a number in {span}, got {s}")
        return v

    parse.__name__ = f"number in {span}"
    return parse


def layer_weight_list(s):
    """Comma-separated numbers in [0, MAX_WEIGHT], or ``equal``."""
    if s.strip() == "equal":
        return "equal"
    return bounded_float_list(MAX_WEIGHT)(s)


def bounded_float_list(hi):
    def parse(s):
        vals = float_list(s)
        if any(v > hi or v != v for v in vals):
            raise argparse.ArgumentTypeError(f"expected comma-separated numbers in [0, {hi:g}], got {s!r}")
        return vals

    return parse


def bounded_size_list(hi):
    def parse(s):
        vals = size_list(s)
        if any(v > hi for v in vals):
            raise argparse.ArgumentTypeError(f"sizes must be integers from 1 to {hi}, got {s!r}")
        return vals

    return parse


seed_int = bounded_int(0, MAX_SEED)
iters_int = bounded_int(0, MAX_ITERS)
side_int = bounded_int(1, MAX_SIDE)
weight_float = bounded_float(0, MAX_WEIGHT)
lr_float = bounded_float(0, 1e6, lo_open=True)


# --- shared options ------------------------------------------------------------------
def add_net_options(p, pooling="avg"):
    """--weights --arch --pooling --device."""
    g = p.add_argument_group("network")
    g.add_argument("--weights", metavar="FILE.h5",
                   help="converted weights (python -m weights_tools); default: $MINIVGG_WEIGHTS or a converted "
                        "file in the cache ($MINIVGG_HOME, ~/.cache/minivgg), else random weights (with a warning)")
    g.add_argument("--arch", choices=("vgg16", "vgg19"), default=None,
                   help="network (default: the weights file's; without one, vgg19 if converted vgg19 weights are "
                        "cached, else vgg16 if those are, else vgg19 with random weights)")
    g.add_argument("--pooling", choices=("avg", "max"), default=pooling,
                   help=f"pooling layers (default {pooling}; Gatys et al. use avg for better gradient flow)")
    g.add_argument("--device", choices=("cpu", "gpu", "emulated"), default="cpu",
                   help="cpu (numpy + numba), gpu (CuPy + CUDA kernels) or emulated (the GPU kernels run on the CPU; "
                        "slow, for testing) (default cpu)")
    return g


def add_optim_options(p, iters, optimizer="lbfgs"):
    """--iters --optimizer --lr --history-size --line-search --momentum --tol --seed."""
    g = p.add_argument_group("optimization")
    g.add_argument("--iters", type=iters_int, default=iters, help=f"number of updates, 0-{MAX_ITERS} (default {iters})")
    g.add_argument("--optimizer", choices=("lbfgs", "adam", "sgd"), default=optimizer,
                   help=f"lbfgs, adam or sgd with momentum (default {optimizer}); docs/optim.md")
    g.add_argument("--lr", type=lr_float, default=None,
                   help="step size (0, 1e6]: L-BFGS default 1 (the first step is min(1, 1/|g|_1)); Adam default 10 pixel levels "
                        "in the net's input units; SGD default: set at the first update so that it moves the pixels by one level on "
                        "average, then fixed")
    g.add_argument("--history-size", type=bounded_int(1, 10000), default=100, help="L-BFGS history size (default 100)")
    g.add_argument("--line-search", choices=("none", "strong_wolfe"), default="strong_wolfe",
                   help="L-BFGS line search (default strong_wolfe; none: fixed step lr, as torch.optim.LBFGS's "
                        "default, which overshoots from noise on pretrained weights)")
    g.add_argument("--momentum", type=bounded_float(0, 1, hi_open=True), default=0.9, help="SGD momentum (default 0.9)")
    g.add_argument("--tol", type=bounded_float(0, 1e6), default=0.0,
                   help="stop when the relative change of the loss between two iterations is at most this (default 0: "
                        "run all iterations)")
    g.add_argument("--seed", type=seed_int, default=0, help=f"random seed of the initial noise and jitter, 0-{MAX_SEED} (default 0)")
    return g


def add_output_options(p, out_default):
    """--out --save-every --log --plot --quiet."""
    g = p.add_argument_group("output")
    g.add_argument("--out", default=out_default, metavar="FILE.png", help=f"result image (default {out_default})")
    g.add_argument("--save-every", type=iters_int, default=0, metavar="K",
                   help="also write a snapshot OUT_STEM_iterNNNNN.EXT every K iterations (default 0: none)")
    g.add_argument("--log", metavar="FILE.csv",
                   help="write the loss log: iter,total,content,style,tv,seconds (row 0 = the initial image; content/"
                        "style/tv unweighted, total = the weighted objective)")
    g.add_argument("--plot", action="store_true", help="also draw the loss curves as a PNG beside the log "
                                                      "(FILE.png; without --log: OUT_STEM_loss.png)")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    return g


def optim_options(args):
    """The optimizer options the shared flags select, for the method functions."""
    if args.optimizer == "lbfgs":
        opts = {"history_size": args.history_size, "line_search": None if args.line_search == "none" else args.line_search}
    elif args.optimizer == "sgd":
        opts = {"momentum": args.momentum}
    else:
        opts = {}
    opts["tol"] = args.tol
    return opts
