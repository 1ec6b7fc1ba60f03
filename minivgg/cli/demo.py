"""``minivgg demo``: a style transfer and a texture on built-in photos (docs/cli.md).

The photos come from scikit-image's data module (shipped with the package, no network):
the cat ``chelsea`` as content, the stained tissue ``immunohistochemistry`` as style,
and the ``hubble_deep_field`` as texture source. It writes the inputs, the results, the
loss logs and one side-by-side PNG into the output folder.

First the kernels both runs need are compiled (``minivgg.warmup``; on the first run on a
machine only, numba caches them), with a line saying so: compiling never counts against
the time budget. Then each run is time-boxed: its budget counts from its first logged
iterate (the objective at the start image), so it covers the optimization only, and so
does the progress bar's rate and ETA.
"""

import os
import sys
import time

from ..errors import MiniVGGError
from .args import iters_int, side_int

DEMO_DIR = "minivgg-demo"
CONTENT, STYLE, TEXTURE = "chelsea", "immunohistochemistry", "hubble_deep_field"
TIME_BUDGET_S = 60.0  # per result
# the line search makes every iteration count, whatever the weights (random ones included)
LBFGS_OPTIONS = {"line_search": "strong_wolfe"}


def run_demo(out_dir=DEMO_DIR, size=None, iters=None, device="cpu", quiet=False, budget=TIME_BUDGET_S):
    """Run the demo; return the exit status (0)."""
    from tqdm import tqdm

    from ..backend import check_device
    from .common import write_log
    from ..image import resize, resize_longest, sample_image, save_image, side_by_side
    from ..methods import style_transfer, synthesize_texture
    from ..vgg import load_vgg
    from ..warmup import warmup
    from ..weights import arch_for, default_weights_path, describe

    check_device(device)
    size = size or (256 if device == "gpu" else 128)
    iters = 60 if iters is None else iters
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise MiniVGGError(f"{out_dir}: exists and is not a folder")
    content = resize_longest(sample_image(CONTENT), size)
    style = resize(sample_image(STYLE), content.shape[:2])
    source = resize_longest(sample_image(TEXTURE), size)
    arch = arch_for(None)  # the cached weights' network: VGG-19, else VGG-16, else VGG-19 at random
    pretrained = default_weights_path(arch) is not None
    if not pretrained:
        sys.stderr.write(
            "minivgg demo: NOTE: no pretrained weights found, so this demo uses RANDOM weights and the pictures "
            "will not look like the papers'. Fetch real weights first: python -m weights_tools fetch vgg19-caffe\n")
    # the style layers end at relu5_1 and the texture layers at pool4: nothing deeper is kept
    net = load_vgg(arch, weights=None, pooling="avg", device=device, up_to="relu5_1")
    if not quiet:
        sys.stderr.write(f"minivgg demo: {describe(net.source, net.arch, net.weights_meta)}\n")
    # compile before any clock starts: the first run on a machine compiles, which the budget must not count
    warmup(device, poolings=("avg",), methods=("style", "texture"), max_side=size, quiet=quiet, prefix="minivgg demo")
    os.makedirs(out_dir, exist_ok=True)
    results = {}
    for name, run in (
        ("style", lambda cb: style_transfer(net, content, [style], init="content", iters=iters, callback=cb,
                                            optimizer="lbfgs", optim_options=LBFGS_OPTIONS)),
        ("texture", lambda cb: synthesize_texture(net, source, size=size, iters=iters, callback=cb,
                                                  optimizer="lbfgs", optim_options=LBFGS_OPTIONS)),
    ):
        clock = {}  # the budget, and the bar, start at row 0: the targets and row 0 do not count

        def cb(rec, clock=clock, name=name):
            if "t0" not in clock:
                clock["t0"] = time.perf_counter()
                clock["bar"] = tqdm(total=iters + 1, initial=1, desc=f"demo {name}", disable=quiet, leave=False,
                                    file=sys.stderr)
                return False  # the clock starts here: at least one update whatever the budget
            clock["bar"].update(1)
            clock["bar"].set_postfix_str(f"loss {rec['total']:.4g}", refresh=False)
            return time.perf_counter() - clock["t0"] > budget

        try:
            results[name] = run(cb)
        finally:
            if "bar" in clock:
                clock["bar"].close()
        r = results[name]
        save_image(os.path.join(out_dir, f"{name}.png"), r.image)
        write_log(os.path.join(out_dir, f"{name}_log.csv"), r.history)
        note = " (time budget reached)" if r.stopped == "callback" else ""
        if not quiet:
            sys.stderr.write(f"minivgg demo: {name}: {len(r.history) - 1} iterations{note}, "
                             f"final loss {r.final_loss:.4g}\n")
    save_image(os.path.join(out_dir, "content.png"), content)
    save_image(os.path.join(out_dir, "style_image.png"), style)
    save_image(os.path.join(out_dir, "texture_source.png"), source)
    sheet = side_by_side([content, style, results["style"].image, source, results["texture"].image], height=size)
    save_image(os.path.join(out_dir, "side_by_side.png"), sheet)
    weights_note = "pretrained weights" if pretrained else "RANDOM weights (fetch pretrained ones for real results)"
    print(f"minivgg demo ({weights_note}): wrote {os.path.join(out_dir, 'side_by_side.png')} "
          f"(content | style | style transfer | texture source | texture) and the inputs, results and logs in "
          f"{os.path.abspath(out_dir)}/")
    return 0


def add_parser(sub):
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
    p.set_defaults(_run=run)


def run(args):
    return run_demo(args.out, size=args.size, iters=args.iters, device=args.device, quiet=args.quiet)
