"""``minivgg <command>`` / ``python -m minivgg <command>``: the command-line interface.

Commands: style, texture, invert, dream, visualize, classify, demo (docs/cli.md), and
the commands of the modules listed in ``EXTENSION_MODULES`` (e.g. ``atlas`` and
``sweep`` from ``minivgg.experiments``): each such module defines
``add_parser(subparsers)``, which adds its subcommand(s) to the argparse
sub-parsers, and ``run(args) -> int`` (or sets ``_run`` on its parsers with
``set_defaults``). They can reuse this module's helpers: ``add_net_options``,
``add_optim_options``, ``add_output_options``, ``load_net``, ``load_input``,
``optim_options``, ``MethodRunner``, ``write_log``, ``plot_log``.

Behaviour every method command shares:

- bad input (a missing or unreadable image, an unknown layer name, a size <= 0, an
  image too large for memory, ``--device gpu`` without a GPU) prints
  ``error: <one line>`` on stderr and exits with status 2, before any output is
  written;
- a tqdm progress bar on stderr shows the loss (``--quiet`` silences it);
- ``--log FILE.csv`` writes ``iter,total,content,style,tv,seconds`` (then
  method-specific columns): row 0 the objective at the initial image, row i after i
  updates; ``content``/``style``/``tv`` are the unweighted terms, ``total`` the
  weighted sum that is minimized; ``--plot`` draws the loss curves (PNG, Pillow);
- ``--save-every K`` writes a snapshot every K iterations;
- Ctrl-C (SIGINT) stops the optimization at the next safe point and still writes
  the current image and the log, then exits with status 130;
- every file is written under a temporary name and renamed when complete.
"""

import argparse
import csv
import importlib
import io
import os
import signal
import sys
import tempfile
import warnings

from .errors import MiniVGGError
from .weights import describe as describe_weights

EXTENSION_MODULES = ["minivgg.experiments", "minivgg.serve", "minivgg.info"]
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
PROG = "minivgg"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, ``error: ...``, exit 2."""

    def error(self, message):
        from .weights import clean_message

        sys.stderr.write(f"error: {clean_message(message, limit=1000)} (see {self.prog} --help)\n")
        sys.exit(EXIT_ERROR)


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


def load_input(spec):
    """An image path, or ``sample:NAME`` for a built-in photo (minivgg.image.SAMPLES)."""
    from .image import load_image, sample_image

    if spec.startswith("sample:"):
        return sample_image(spec[len("sample:"):])
    return load_image(spec)


def load_net(args, keep_classifier=False, layers=None):
    """A Net from the shared network flags (device checked first), built only as deep as the
    deepest of ``layers`` when they are all layers of the architecture (no weights kept past
    it; an unknown name is left for the command's check_layers to report)."""
    from .backend import check_device
    from .vgg import layer_names, load_vgg

    check_device(args.device)
    if args.weights is not None and not os.path.isfile(args.weights):
        raise MiniVGGError(f"{args.weights}: no such weights file")
    resolve_arch(args)
    up_to = None
    names = layer_names(args.arch)
    wanted = [layers] if isinstance(layers, str) else list(layers or [])
    if wanted and not keep_classifier and all(l in names for l in wanted):
        up_to = max(wanted, key=names.index)
    net = load_vgg(args.arch, weights=args.weights, pooling=args.pooling, device=args.device,
                   keep_classifier=keep_classifier, seed=0, up_to=up_to)
    if not getattr(args, "quiet", False):
        sys.stderr.write(f"{PROG}: {describe_weights(net.source, net.arch, net.weights_meta)}\n")
    return net


def resolve_arch(args):
    """Fill in ``args.arch`` when it was left out: the weights' own (weights.arch_for)."""
    from .weights import arch_for

    if getattr(args, "arch", "") is None:
        args.arch = arch_for(getattr(args, "weights", None))
    return args.arch


def log_columns(history):
    from .methods.common import LOG_COLUMNS

    cols = list(LOG_COLUMNS)
    for row in history:
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def write_log(path, history):
    """The loss log as CSV (atomic)."""
    from .image import atomic_write

    cols = log_columns(history)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in history:
        w.writerow([_fmt(row.get(c, 0.0)) for c in cols])

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(buf.getvalue())

    return atomic_write(path, write)


def _fmt(v):
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        return repr(v)
    return v


def plot_log(path, history, title=""):
    """Loss curves (total and the non-zero terms, log scale when all positive) as a PNG
    drawn with Pillow (atomic)."""
    from .image import line_plot, save_image

    series = {}
    for key in ("total", "content", "style", "tv", "alpha", "activation"):
        vals = [row.get(key, 0.0) for row in history]
        if key == "total" or any(v != 0 for v in vals):
            series[key] = vals
    xs = [row["iter"] for row in history]
    return save_image(path, line_plot(xs, series, title=title, xlabel="iteration"))


def plot_path(args):
    if args.log:
        path = os.path.splitext(args.log)[0] + ".png"
        if os.path.abspath(path) != os.path.abspath(args.out):
            return path
        return os.path.splitext(args.log)[0] + "_loss.png"
    return os.path.splitext(args.out)[0] + "_loss.png"


def snapshot_path(out, it):
    stem, ext = os.path.splitext(out)
    return f"{stem}_iter{it:05d}{ext}"


def input_paths(args):
    """The files a command reads (images, init image, weights), for the output checks."""
    paths = []
    for attr in ("content", "image", "init", "weights"):
        v = getattr(args, attr, None)
        if isinstance(v, str):
            paths.append(v)
    paths.extend(v for v in (getattr(args, "style", None) or []) if isinstance(v, str))
    return [p for p in paths if not p.startswith("sample:") and p not in ("noise", "content", "style")
            and os.path.exists(p)]


def _check_output_file(path, inputs, what):
    from .weights import check_output_path

    check_output_path(path, inputs, what, folder_must_exist=False)  # the probe below says why
    folder = os.path.dirname(os.path.abspath(path))
    try:  # a real probe: as root, os.access says yes to /proc and read-only mounts
        fd, probe = tempfile.mkstemp(prefix=".minivgg-probe-", dir=folder)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        raise MiniVGGError(f"{path}: cannot write in {folder} ({e.strerror or e})") from None


def check_outputs(args):
    """Fail up front on output paths that cannot be written or would destroy a file:
    an output equal to an input, ``--log`` equal to ``--out``, an existing output that
    is not a regular file (a device, a FIFO), or a folder where nothing can be created."""
    from .image import check_writable
    from .weights import same_path

    check_writable(args.out)
    inputs = input_paths(args)
    _check_output_file(args.out, inputs, "image")
    if args.log:
        folder = os.path.dirname(os.path.abspath(args.log))
        if not os.path.isdir(folder):
            raise MiniVGGError(f"{args.log}: folder {folder} does not exist")
        if os.path.isdir(args.log):
            raise MiniVGGError(f"{args.log}: is a directory")
        if same_path(args.log, args.out):
            raise MiniVGGError(f"{args.log}: --log is the same file as --out; the log would replace the image")
        _check_output_file(args.log, inputs, "log")
    if getattr(args, "plot", False):
        _check_output_file(plot_path(args), inputs + [args.out] + ([args.log] if args.log else []), "plot")


class _EarlyInterrupt:
    """SIGINT while a method command sets up (loads images, weights): the first one is
    remembered, so that the run stops at its first iteration and still writes the
    initial image and the log; a second one exits at once."""

    def __init__(self):
        self.interrupted = False

    def __call__(self, signum, frame):
        if self.interrupted:
            raise KeyboardInterrupt
        self.interrupted = True


_EARLY = _EarlyInterrupt()
# SIGTERM (a scheduler's or `kill`'s stop) and SIGHUP (a closed terminal) end a run as
# Ctrl-C does: at the next safe point, writing the current image and the log
STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class MethodRunner:
    """Runs a method function with the CLI's progress bar, snapshots, SIGINT handling,
    log and outputs.

    ``runner.callback`` is passed to the method; ``runner.run(fn, **kw)`` calls it and
    writes the result. SIGINT during the optimization raises KeyboardInterrupt at a
    safe point (the optimizers turn it into ``stopped == "interrupted"``); before the
    first iteration and while writing outputs it only sets a flag.
    """

    def __init__(self, args, total_rows, desc):
        self.args = args
        self.total_rows = total_rows
        self.desc = desc
        self.interrupted = _EARLY.interrupted
        self.optimizing = False
        self.bar = None
        self.rows = 0

    def _on_sigint(self, signum, frame):
        if self.interrupted and not self.optimizing:  # a second Ctrl-C before the optimization: leave now
            raise KeyboardInterrupt
        self.interrupted = True
        if self.optimizing:
            self.optimizing = False
            raise KeyboardInterrupt

    def callback(self, rec):
        if self.bar is None:  # created at the first row, so errors before it print alone
            from tqdm import tqdm

            self.bar = tqdm(total=self.total_rows, desc=self.desc, disable=self.args.quiet, leave=False,
                            file=sys.stderr, dynamic_ncols=True)
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {rec['total']:.4g}", refresh=False)
        self.rows += 1
        k = self.args.save_every if hasattr(self.args, "save_every") else 0
        if k and rec["iter"] > 0 and rec["iter"] % k == 0 and rec.get("render") is not None:
            from .image import save_image

            self.optimizing = False
            save_image(snapshot_path(self.args.out, rec["iter"]), rec["render"](rec["x"]))
        if self.interrupted:
            return True
        self.optimizing = True
        return False

    def run(self, fn, *a, **kw):
        previous = {s: signal.signal(s, self._on_sigint) for s in STOP_SIGNALS}
        try:
            try:
                result = fn(*a, callback=self.callback, **kw)
            except KeyboardInterrupt:
                self.optimizing = False
                raise
            finally:
                self.optimizing = False
                if self.bar is not None:
                    self.bar.close()
            try:
                self.write(result)
            except OSError as e:  # the checks up front passed, the disk filled or went away since
                raise MiniVGGError(f"cannot write the results: {e.strerror or e} ({e.filename or ''})") from None
        finally:
            for s, h in previous.items():
                signal.signal(s, h)
        if self.interrupted or result.stopped == "interrupted":
            sys.stderr.write(f"{PROG}: interrupted; wrote the current image to {self.args.out}\n")
            return EXIT_INTERRUPTED
        return 0

    def write(self, result):
        from .image import save_image

        args = self.args
        save_image(args.out, result.image)
        written = [args.out]
        if getattr(args, "frames", False) and result.frames:
            for i, frame in enumerate(result.frames):
                stem, ext = os.path.splitext(args.out)
                p = f"{stem}_frame{i:03d}{ext}"
                save_image(p, frame)
            written.append(f"{len(result.frames)} frames")
        if args.log:
            write_log(args.log, result.history)
            written.append(args.log)
        if args.plot:
            written.append(plot_log(plot_path(args), result.history, title=self.desc))
        if result.stopped == "diverged":
            sys.stderr.write(f"{PROG}: warning: {result.message}\n")
        if not args.quiet:
            final = f"final loss {result.final_loss:.6g}; " if result.history else ""
            sys.stderr.write(f"{PROG}: {result.message}; {final}wrote {', '.join(written)}\n")


# --- commands -----------------------------------------------------------------------
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


def add_style_parser(sub):
    from .methods.style import CONTENT_LAYERS, CONTENT_WEIGHT, LOSS_NORM, STYLE_LAYERS, STYLE_WEIGHT, TV_WEIGHT

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
    from .methods.control import add_control_arguments

    add_control_arguments(p)
    add_output_options(p, "style.png")
    p.set_defaults(_run=run_style, _graceful=True)


def _init_arg(value):
    if value in ("noise", "uniform", "content", "style"):
        return value
    return load_input(value)


def run_style(args):
    from .methods import style_transfer
    from .methods.control import control_kwargs

    check_outputs(args)
    content = load_input(args.content)
    styles = [load_input(s) for s in args.style]
    init = _init_arg(args.init)
    if args.style_blend is not None and len(args.style_blend) != len(styles):
        raise MiniVGGError(f"--style-blend has {len(args.style_blend)} weight(s) for {len(styles)} style image(s)")
    net = load_net(args, layers=list(args.content_layers) + list(args.style_layers))
    net.check_layers(args.content_layers)
    net.check_layers(args.style_layers)
    stages = args.scales or [args.size]
    runner = MethodRunner(args, total_rows=len(stages) * (args.iters + 1), desc="style")
    return runner.run(
        style_transfer, net, content, styles, style_blend=args.style_blend, content_layers=args.content_layers,
        style_layers=args.style_layers, style_layer_weights=args.style_layer_weights,
        content_weight=args.content_weight, style_weight=args.style_weight, tv_weight=args.tv_weight,
        style_scale=args.style_scale, init=init, original_colors=args.original_colors, size=args.size,
        scales=args.scales, optimizer=args.optimizer, iters=args.iters, lr=args.lr, seed=args.seed,
        optim_options=optim_options(args), loss_norm=args.loss_norm, stretch_style=args.stretch_style,
        **control_kwargs(args))


TEXTURE_HELP = """\
Texture synthesis (Gatys, Ecker & Bethge 2015): from a faint noise, minimize
  total = style_weight * sum_l w_l E_l + tv_weight * TV,  E_l = 1/(4 N_l^2 M_l^2) sum (G - A)^2
with A the source's Gram matrices and w_l = 1/(number of layers). The source is resized to
--size first (or --source-size), so that the texture keeps the source's scale; with
--source-size larger than --size its structures come out larger."""


def add_texture_parser(sub):
    from .methods.texture import TEXTURE_LAYERS

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
    p.set_defaults(_run=run_texture, _graceful=True)


def run_texture(args):
    from .methods import synthesize_texture

    check_outputs(args)
    source = load_input(args.image)
    init = _init_arg(args.init)
    net = load_net(args, layers=args.layers)
    net.check_layers(args.layers)
    runner = MethodRunner(args, total_rows=args.iters + 1, desc="texture")
    return runner.run(synthesize_texture, net, source, layers=args.layers, layer_weights=args.layer_weights,
                      size=args.size, source_size=args.source_size, style_weight=args.style_weight,
                      tv_weight=args.tv_weight, init=init, optimizer=args.optimizer, iters=args.iters, lr=args.lr,
                      seed=args.seed, optim_options=optim_options(args))


INVERT_HELP = """\
Reconstruct an image from one layer's response (Mahendran & Vedaldi 2015): from white
noise, minimize
  total = content_weight * 1/2 sum (F(x) - F(x0))^2 + alpha_weight * sum |x|^alpha + tv_weight * TV_beta
Default alpha/TV weights follow the paper's normalization, scaled down so that shallow
layers are reconstructed sharply (docs/methods.md)."""


def add_invert_parser(sub):
    from .methods.invert import INVERT_LAYER

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
    p.set_defaults(_run=run_invert, _graceful=True)


def run_invert(args):
    from .methods import invert

    check_outputs(args)
    image = load_input(args.image)
    init = _init_arg(args.init)
    net = load_net(args, layers=args.layer)
    net.check_layers(args.layer)
    runner = MethodRunner(args, total_rows=args.iters + 1, desc="invert")
    return runner.run(invert, net, image, args.layer, size=args.size, content_weight=args.content_weight,
                      alpha=args.alpha, alpha_weight=args.alpha_weight, beta=args.beta, tv_weight=args.tv_weight,
                      init=init, optimizer=args.optimizer, iters=args.iters, lr=args.lr, seed=args.seed,
                      optim_options=optim_options(args))


DREAM_HELP = """\
DeepDream (Mordvintsev et al. 2015): gradient ascent on 1/2 sum F^2 of a layer (or one
channel), each step x <- x + lr * g / mean|g| on a randomly jittered image, over several
octaves (each --octave-scale smaller), optionally zooming into the result and dreaming
again (--zoom-steps). The log's total is -1/2 sum F^2 (what is minimized)."""


def add_dream_parser(sub):
    from .methods.dream import DREAM_LAYER, DREAM_POOLING

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
    p.set_defaults(_run=run_dream, _graceful=True)


def run_dream(args):
    from .methods import dream

    check_outputs(args)
    image = load_input(args.image)
    net = load_net(args, layers=[args.layer])
    net.check_layers([args.layer])
    rows = (args.zoom_steps + 1) * (args.octaves * args.iters + 1)
    runner = MethodRunner(args, total_rows=rows, desc="dream")
    return runner.run(dream, net, image, args.layer, channel=args.channel, size=args.size, octaves=args.octaves,
                      octave_scale=args.octave_scale, iters=args.iters, lr=args.lr, jitter=args.jitter,
                      zoom_steps=args.zoom_steps, zoom_scale=args.zoom_scale, seed=args.seed)


VISUALIZE_HELP = """\
Activation maximization: the image that most excites one channel of a layer (its mean
response), or an ImageNet class score (--class, needs weights with the classifier, 224x224).
Minimizes -activation_weight * A + tv_weight * TV + l2_weight * sum x^2 with random jitter;
activation_weight normalizes the start gradient (docs/methods.md)."""


def add_visualize_parser(sub):
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
    p.set_defaults(_run=run_visualize, _graceful=True)


def class_index(value):
    """An ImageNet class index from an integer or a (unique part of a) class name."""
    with open(os.path.join(os.path.dirname(__file__), "data", "imagenet_classes.txt")) as f:
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


def run_visualize(args):
    from .methods import visualize

    check_outputs(args)
    if args.class_index is None and args.layer is None:
        raise MiniVGGError("give --layer (and optionally --channel) or --class")
    idx = class_index(args.class_index) if args.class_index is not None else None
    net = load_net(args, keep_classifier=idx is not None, layers=None if idx is not None else [args.layer])
    if idx is None:
        net.check_layers([args.layer])
    runner = MethodRunner(args, total_rows=args.iters + 1, desc="visualize")
    return runner.run(visualize, net, args.layer, channel=args.channel, class_index=idx, size=args.size,
                      iters=args.iters, optimizer=args.optimizer, lr=args.lr, jitter=args.jitter,
                      tv_weight=args.tv_weight, l2_weight=args.l2_weight, seed=args.seed,
                      optim_options=optim_options(args))


def add_classify_parser(sub):
    p = sub.add_parser("classify", help="top-k ImageNet classes of an image (needs weights with the classifier)",
                       description="Classify an image with the full VGG (fc6-fc8): the quick check that converted "
                                   "weights are right (a BGR/RGB mix-up shows at once). Needs weights converted with "
                                   "--keep-classifier.")
    p.add_argument("image", metavar="IMAGE", help="image file (or sample:NAME)")
    p.add_argument("--top", type=bounded_int(1, 1000), default=5, help="number of classes to print (default 5)")
    add_net_options(p, pooling="max")
    p.set_defaults(_run=run_classify)


def run_classify(args):
    image = load_input(args.image)
    try:
        from .classify import classify
    except ImportError:
        raise MiniVGGError("classification is not available in this installation (minivgg.classify missing)") from None
    from .weights import default_weights_path

    path = args.weights or default_weights_path(resolve_arch(args), classifier=True)
    if path is None:
        sys.stderr.write(f"{PROG}: note: no pretrained weights: the classes below come from random weights and "
                         f"mean nothing\n")
    net = load_net(args, keep_classifier=True)
    for index, name, prob in classify(net, image, args.top):
        print(f"{prob:8.4f}  {index:4d}  {name}")
    return 0


def add_demo_parser(sub):
    from .demo import DEMO_DIR

    p = sub.add_parser("demo", help="style transfer and a texture on built-in photos (about 1 minute on 2 cores; "
                                    "2-3 the first time)",
                       description="Runs a small style transfer and a texture synthesis on photos shipped with "
                                   "scikit-image (no network needed) and writes the inputs, the results and a "
                                   "side-by-side PNG. Uses fetched weights when present, else random weights. "
                                   "First it compiles the CPU kernels it needs (`minivgg warmup`: 1-3 minutes on "
                                   "2 cores on the first run on a machine, a few seconds once numba has cached "
                                   "them), then optimizes each picture for at most --iters iterations or 60 s, "
                                   "whichever comes first, compiling not counted: about a minute in all on a "
                                   "2-core CPU once compiled.")
    p.add_argument("--out", default=DEMO_DIR, metavar="DIR", help=f"output folder (default {DEMO_DIR})")
    p.add_argument("--size", type=side_int, default=None, help="longest side (default 128; 256 with a GPU)")
    p.add_argument("--iters", type=iters_int, default=None, help="iterations per result (default 60)")
    p.add_argument("--device", choices=("cpu", "gpu", "emulated"), default="cpu", help="device (default cpu)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(_run=run_demo_cmd)


def run_demo_cmd(args):
    from .demo import run_demo

    return run_demo(args.out, size=args.size, iters=args.iters, device=args.device, quiet=args.quiet)


def add_warmup_parser(sub):
    from .warmup import METHODS

    p = sub.add_parser("warmup", help="compile the kernels the other commands need (numba caches them)",
                       description="Compiles every kernel specialization the method commands need on this "
                                   "machine (numba, cached on disk: later runs load it in seconds), by running "
                                   "each code path once at small sizes on random weights, and prints what it "
                                   "compiled, how long it took and where the cache is. The first run on a "
                                   "machine compiles (about 1-3 minutes on 2 cores); `demo` runs it first.")
    p.add_argument("--device", choices=("cpu", "gpu", "emulated"), default="cpu", help="device (default cpu)")
    p.add_argument("--pooling", choices=("avg", "max", "both"), default="both",
                   help="the pooling(s) to compile for (default both)")
    p.add_argument("--methods", type=lambda s: _choices(s, METHODS, "method"), default=list(METHODS),
                   metavar="M,M", help=f"the methods whose objectives to compile (default all: {','.join(METHODS)})")
    p.add_argument("--list", action="store_true",
                   help="also list every kernel it ran: its specializations, and how many this warmup added")
    p.set_defaults(_run=run_warmup_cmd)


def _choices(s, allowed, what):
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}" if bad
                                         else f"no {what} given")
    return items


def run_warmup_cmd(args):
    from .warmup import warmup

    poolings = ("avg", "max") if args.pooling == "both" else (args.pooling,)
    report = warmup(args.device, poolings=poolings, methods=args.methods, out=sys.stdout, prefix=f"{PROG} warmup")
    if report.cache_dir:
        print(f"numba cache: {report.cache_dir} (target CPU {report.target})")
    if args.list:
        for name, n in sorted(report.used.items()):
            print(f"  {name}: {n} specialization{'s' if n > 1 else ''}, {report.compiled.get(name, 0)} new")
    return 0


BUILTIN = [add_style_parser, add_texture_parser, add_invert_parser, add_dream_parser, add_visualize_parser,
           add_classify_parser, add_demo_parser, add_warmup_parser]


def build_parser():
    """The argparse parser with every built-in and extension command."""
    parser = ArgumentParser(prog=PROG, description="VGG-16/19 from scratch and the image-optimization methods built "
                                                   "on it: style transfer, textures, inversion, DeepDream.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for add in BUILTIN:
        add(sub)
    for modname in EXTENSION_MODULES:
        try:
            mod = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                continue
            _extension_warning(modname, e)
            continue
        except Exception as e:  # a broken extension must not take the core commands down
            _extension_warning(modname, e)
            continue
        if not hasattr(mod, "add_parser"):
            continue
        before = set(sub.choices)
        mod.add_parser(sub)
        for name in set(sub.choices) - before:
            if sub.choices[name].get_default("_run") is None:
                sub.choices[name].set_defaults(_run=mod.run)
    return parser


def _extension_warning(modname, e):
    sys.stderr.write(f"{PROG}: warning: cannot load {modname} ({type(e).__name__}: {e}); its commands are unavailable\n")


def _version():
    try:
        from . import __version__

        return __version__
    except ImportError:
        return "?"


def main(argv=None):
    """Entry point of ``minivgg`` and ``python -m minivgg``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help(sys.stderr)
        return EXIT_ERROR
    previous = {}
    if getattr(args, "_graceful", False):
        _EARLY.interrupted = False
        previous = {s: signal.signal(s, _EARLY) for s in STOP_SIGNALS}
    try:
        with warnings.catch_warnings():
            _quiet_library_warnings()
            return args._run(args) or 0
    except MiniVGGError as e:
        sys.stderr.write(f"error: {_one_line(e)}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return EXIT_INTERRUPTED
    except MemoryError:
        sys.stderr.write("error: out of memory; use a smaller --size\n")
        return EXIT_ERROR
    except BrokenPipeError:
        return 1
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _quiet_library_warnings():
    """Library warnings would print lines around the one ``error:`` line: numpy's
    overflow warnings are ignored (non-finite losses are caught as divergence), Pillow's
    decompression-bomb warning becomes an error (load_image reports it in one line)."""
    warnings.simplefilter("ignore")
    try:
        from PIL import Image

        warnings.simplefilter("error", Image.DecompressionBombWarning)
    except ImportError:
        pass


def _one_line(e):
    """The message on one printable line (no raw newlines or terminal escapes)."""
    from .weights import clean_message

    return clean_message(" ".join(str(e).split()), limit=1000)


if __name__ == "__main__":
    sys.exit(main())
