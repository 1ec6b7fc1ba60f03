"""``minivgg serve``: the lab in a browser (docs/serve.md).

A local web server (Starlette on uvicorn) with one page that runs every method
(style, texture, invert, dream, visualize, atlas) as a job and shows it work: the
image being optimized, updated every few iterations, beside its loss curves. Jobs
wait in a queue, one optimization at a time on the device; each runs in its own
worker process (``minivgg.serve.worker``) through the CLI's own command, so the
server outlives any job's error and a job's settings are exactly a command line.

This module only registers the subcommand (``add_parser``, listed in
``minivgg.cli.EXTENSION_MODULES``); the web stack is imported when ``serve`` runs,
never by ``import minivgg`` or the other commands.
"""

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_OUT = "minivgg-serve"


def add_parser(subparsers):
    """Add ``serve`` to the CLI's sub-parsers."""
    import argparse

    from ..cli.args import nonneg_float, nonneg_int, positive_float, positive_int

    p = subparsers.add_parser(
        "serve", help="a local web page to run every method and watch it work",
        description="Start a web server with one page that runs style, texture, invert, dream, visualize and atlas "
                    "as jobs (one at a time on the device, the others queued), shows the image being optimized and "
                    "its loss curves live, and keeps every result with its settings in --out. The page's HTTP API "
                    "is documented in docs/serve.md. Listens on 127.0.0.1 unless --host says otherwise.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_HOST,
                   help=f"address to listen on (default {DEFAULT_HOST}: this machine only; another address lets "
                        f"anyone who can reach it run jobs, with a warning)")
    p.add_argument("--port", type=nonneg_int, default=DEFAULT_PORT,
                   help=f"TCP port (default {DEFAULT_PORT}; 0: a free port, printed)")
    p.add_argument("--weights", metavar="FILE.h5",
                   help="converted weights every job uses; default: each job's arch finds its converted file in the "
                        "cache as the CLI does, else random weights (the page says which)")
    p.add_argument("--device", choices=("cpu", "gpu", "emulated"), default="cpu",
                   help="device the jobs run on, one at a time (default cpu)")
    p.add_argument("--out", default=DEFAULT_OUT, metavar="DIR",
                   help=f"folder of the jobs: one sub-folder per job with its inputs, result, log and settings "
                        f"(default {DEFAULT_OUT}; jobs already there are listed again)")
    p.add_argument("--max-upload-mb", type=positive_float, default=20.0,
                   help="largest request (all uploaded images together), in MB (default 20)")
    p.add_argument("--max-pixels", type=positive_int, default=4096 * 4096,
                   help="largest image accepted, in pixels (width x height; default 4096 x 4096); larger ones, "
                        "decompression bombs among them, are refused before they are decoded")
    p.add_argument("--max-size", type=positive_int, default=1024,
                   help="largest side a job may work at, in pixels (default 1024)")
    p.add_argument("--max-queue", type=positive_int, default=100,
                   help="most jobs waiting at once; more are refused with HTTP 429 (default 100)")
    p.add_argument("--preview-seconds", type=nonneg_float, default=0.5,
                   help="the live image is written at most this often (default 0.5 s; and at the first iteration)")
    p.set_defaults(_run=run)
    return p


def run(args):
    """Run the server until Ctrl-C; returns the exit status."""
    try:
        from .app import serve
    except ImportError as e:
        from ..errors import MiniVGGError

        raise MiniVGGError(f"minivgg serve needs starlette, uvicorn and python-multipart ({e}); "
                           f"pip install starlette uvicorn python-multipart") from None
    return serve(args)
