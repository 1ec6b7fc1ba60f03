"""What the method commands share: the error format, the network and inputs they
load, the loss log and its plot, snapshots, the up-front output checks, SIGINT /
SIGTERM / SIGHUP handling, and :class:`MethodRunner`, which runs a method with the
progress bar and writes its outputs.

The command modules call these as ``common.NAME`` when they run (not imported by
name), so that one substitution here reaches every command: the server's worker
replaces ``MethodRunner`` with one that also reports progress (minivgg.serve.worker).
"""

import argparse
import csv
import io
import os
import signal
import sys
import tempfile

from ..errors import MiniVGGError
from ..image import load_input  # noqa: F401  (the commands load their inputs through common)
from ..weights import describe as describe_weights

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
PROG = "minivgg"


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the project's error format: one line, ``error: ...``, exit 2."""

    def error(self, message):
        from ..weights import clean_message

        sys.stderr.write(f"error: {clean_message(message, limit=1000)} (see {self.prog} --help)\n")
        sys.exit(EXIT_ERROR)


def load_net(args, keep_classifier=False, layers=None):
    """A Net from the shared network flags (device checked first), built only as deep as the
    deepest of ``layers`` when they are all layers of the architecture (no weights kept past
    it; an unknown name is left for the command's check_layers to report)."""
    from ..backend import check_device
    from ..vgg import layer_names, load_vgg

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
    from ..weights import arch_for

    if getattr(args, "arch", "") is None:
        args.arch = arch_for(getattr(args, "weights", None))
    return args.arch


def log_columns(history):
    from ..methods.common import LOG_COLUMNS

    cols = list(LOG_COLUMNS)
    for row in history:
        for k in row:
            if k not in cols:
                cols.append(k)
    return cols


def log_csv(history):
    """The loss log as CSV text: ``log_columns``, floats as repr (exact), a missing value 0."""
    cols = log_columns(history)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for row in history:
        w.writerow([_fmt(row.get(c, 0.0)) for c in cols])
    return buf.getvalue()


def write_log(path, history):
    """The loss log as CSV (atomic)."""
    from ..image import atomic_write

    text = log_csv(history)

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            f.write(text)

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
    from ..image import line_plot, save_image

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
    from ..weights import check_output_path

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
    from ..image import check_writable
    from ..weights import same_path

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
            from ..image import save_image

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
        from ..image import save_image

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


def init_arg(value):
    if value in ("noise", "uniform", "content", "style"):
        return value
    return load_input(value)
