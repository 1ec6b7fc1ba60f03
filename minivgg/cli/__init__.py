"""``minivgg <command>`` / ``python -m minivgg <command>``: the command-line interface.

One module per command (docs/cli.md): ``style``, ``texture``, ``invert``, ``dream``,
``visualize``, ``classify``, ``demo``, ``warmup``, listed in ``COMMANDS``; and the
commands of the modules named in ``EXTENSION_MODULES`` (``atlas`` and ``sweep`` from
``minivgg.experiments``, ``serve`` from ``minivgg.serve``), imported when the parser
is built, a broken one skipped with a warning. Every command module defines
``add_parser(subparsers)``, which adds its subcommand(s) to the argparse
sub-parsers, and ``run(args) -> int`` (or sets ``_run`` on its parsers with
``set_defaults``). Adding a command is one module and one line here. The shared
pieces: ``minivgg.cli.args`` (argument types, the network / optimization / output
option groups) and ``minivgg.cli.common`` (``load_net``, ``load_input``,
``MethodRunner``, ``write_log``, ``plot_log``, the output checks, signals).

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

import importlib
import signal
import sys
import warnings

from ..errors import MiniVGGError
from . import classify, demo, dream, invert, style, texture, visualize, warmup
from .common import _EARLY, EXIT_ERROR, EXIT_INTERRUPTED, PROG, STOP_SIGNALS, ArgumentParser

# the built-in commands, in the order of `minivgg --help`
COMMANDS = [style, texture, invert, dream, visualize, classify, demo, warmup]
# modules imported by name when the parser is built (optional dependencies, heavier imports)
EXTENSION_MODULES = ["minivgg.experiments", "minivgg.serve", "minivgg.info"]


def build_parser():
    """The argparse parser with every built-in and extension command."""
    parser = ArgumentParser(prog=PROG, description="VGG-16/19 from scratch and the image-optimization methods built "
                                                   "on it: style transfer, textures, inversion, DeepDream.")
    parser.add_argument("--version", action="version", version=f"{PROG} {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)
    for mod in COMMANDS:
        _register(sub, mod)
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
        if hasattr(mod, "add_parser"):
            _register(sub, mod)
    return parser


def _register(sub, mod):
    """``mod.add_parser(sub)``; its commands without a ``_run`` default run ``mod.run``."""
    before = set(sub.choices)
    mod.add_parser(sub)
    for name in set(sub.choices) - before:
        if sub.choices[name].get_default("_run") is None:
            sub.choices[name].set_defaults(_run=mod.run)


def _extension_warning(modname, e):
    sys.stderr.write(f"{PROG}: warning: cannot load {modname} ({type(e).__name__}: {e}); its commands are unavailable\n")


def _version():
    try:
        from .. import __version__

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
    from ..weights import clean_message

    return clean_message(" ".join(str(e).split()), limit=1000)


if __name__ == "__main__":
    sys.exit(main())
