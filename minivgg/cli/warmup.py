"""``minivgg warmup``: compiling the kernels (docs/cli.md)."""

import argparse
import sys
from . import common


def add_parser(sub):
    from ..warmup import METHODS

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
    p.set_defaults(_run=run)


def _choices(s, allowed, what):
    items = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad or not items:
        raise argparse.ArgumentTypeError(f"unknown {what} {bad[0]!r}; choose from {', '.join(allowed)}" if bad
                                         else f"no {what} given")
    return items


def run(args):
    from ..warmup import warmup

    poolings = ("avg", "max") if args.pooling == "both" else (args.pooling,)
    report = warmup(args.device, poolings=poolings, methods=args.methods, out=sys.stdout, prefix=f"{common.PROG} warmup")
    if report.cache_dir:
        print(f"numba cache: {report.cache_dir} (target CPU {report.target})")
    if args.list:
        for name, n in sorted(report.used.items()):
            print(f"  {name}: {n} specialization{'s' if n > 1 else ''}, {report.compiled.get(name, 0)} new")
    return 0
