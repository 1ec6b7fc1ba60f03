"""``minivgg atlas``: what each VGG layer keeps of an image, on one labeled contact sheet.

Rows (Gatys, Ecker & Bethge 2016, Fig. 1; Gatys et al. 2015; Mahendran & Vedaldi
2015):

1. content: the image reconstructed from a faint noise from one layer alone
   (relu1_1, relu2_1, relu3_1, relu4_1, relu5_1: the articles' conv1_1 ... conv5_1,
   which are post-ReLU blobs since Caffe's ReLU runs in place; ``minivgg.methods.invert``
   with the plain content loss 1/2 sum (F - P)^2, or with Mahendran & Vedaldi's
   regularizers under ``--regularize``);
2. texture: the texture (Gram matrices) of ``--style``, or of the image itself,
   reconstructed from a faint noise with growing layer sets {relu1_1}, {relu1_1,
   relu2_1}, ... ({relu1_1 ... relu5_1}) (``synthesize_texture``);
3. style (with ``--style``): style transfers of the image in that style with each of
   those style-layer sets (``style_transfer``).

Each tile is labeled with its layer set, iterations and final loss; the originals
sit at the left. Beside ATLAS.png go ATLAS.csv (one row per run: settings, final
losses, seconds) and ATLAS-curves.png (the loss curves).
"""

import argparse
import os
import sys
import time

from ..errors import MiniVGGError
from . import execute, params, pictures, records
from ..weights import arch_for

CONTENT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
STYLE_LAYERS = CONTENT_LAYERS
ROWS = {"content": "content:\none layer", "texture": "texture:\nlayers up to",
        "style": "style transfer:\nstyle layers up to"}
CSV_COLUMNS = ("run", "row", "method", "layers", "arch", "pooling", "weights", "optimizer", "init", "iters", "size",
               "seed", "iterations", "stopped", "total", "content", "style", "tv", "seconds", "message")


def add_parser(subparsers):
    """Register ``atlas`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "atlas", help="contact sheet of what each layer keeps: content, texture, style per layer",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(_run=run)
    return p


def add_arguments(p):
    p.add_argument("--image", required=True,
                   help="the image to reconstruct (and the content of row 3); a path or sample:NAME (a built-in photo)")
    p.add_argument("--out", required=True, help="the contact sheet, a .png (a .csv and -curves.png go beside it)")
    p.add_argument("--style", help="a style image (path or sample:NAME): row 2 uses its texture, and row 3 "
                                   "(style transfer) appears")
    p.add_argument("--size", type=int, default=128, help="longest side of every run, in pixels (default 128)")
    p.add_argument("--iters", type=int, default=100, help="optimizer iterations per run (default 100)")
    p.add_argument("--arch", default=None, choices=params.ARCHS,
                   help="network (default: the weights file's; without one, that of the cached weights, else vgg19)")
    p.add_argument("--pooling", default="avg", choices=params.POOLINGS)
    p.add_argument("--weights", help="converted HDF5 weights (default: the fetched ones, else random weights)")
    p.add_argument("--optimizer", default="lbfgs", choices=params.OPTIMIZERS)
    p.add_argument("--line-search", default="strong_wolfe", choices=params.LINE_SEARCHES,
                   help="L-BFGS line search (default strong_wolfe: steadier from white noise)")
    p.add_argument("--lr", type=float, help="step size (default: the optimizer's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the white-noise start images")
    p.add_argument("--device", default="cpu", choices=("cpu", "gpu", "emulated"))
    p.add_argument("--content-layers", default=",".join(CONTENT_LAYERS),
                   help="row 1's layers, comma-separated (default %(default)s)")
    p.add_argument("--style-layers", default=",".join(STYLE_LAYERS),
                   help="row 2 and 3 use the growing sets of these, comma-separated (default %(default)s)")
    p.add_argument("--init", default="noise", choices=("noise", "content", "style"),
                   help="row 3's start image (default noise, as in the article)")
    p.add_argument("--content-weight", type=float, help="row 3's content weight (default 1)")
    p.add_argument("--style-weight", type=float, help="row 3's style weight (default 1e4)")
    p.add_argument("--regularize", action="store_true",
                   help="row 1 adds Mahendran & Vedaldi's alpha-norm and TV regularizers with their default weights "
                        "(default: the plain content loss, as in Gatys et al. 2016, Fig. 1)")
    p.add_argument("--tile", type=int, help="tile size on the sheet in pixels (default: the size, enlarged by a whole factor to about 128 when "
                        "smaller, at most 256)")
    p.add_argument("--workers", type=int, default=None,
                   help="runs at once in local processes (default min(2, cores); 1 = in this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the runs on this Dask distributed scheduler instead (docs/experiments.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def plan(args):
    """Check every input and output and return (cells, meta); no work is done yet."""
    from ..image import check_writable

    out = os.fspath(args.out)
    if os.path.splitext(out)[1].lower() != ".png":
        raise MiniVGGError(f"{out}: the atlas is a PNG; give a path ending in .png")
    check_writable(out)
    if args.size is None or args.size <= 0:
        raise MiniVGGError(f"--size must be a positive number of pixels; got {args.size}")
    if args.iters is None or args.iters <= 0:
        raise MiniVGGError(f"--iters must be at least 1; got {args.iters}")
    if args.tile is not None and args.tile < 16:
        raise MiniVGGError(f"--tile must be at least 16 pixels; got {args.tile}")
    if args.workers is not None and args.workers < 1:
        raise MiniVGGError(f"--workers must be at least 1; got {args.workers}")
    if args.weights is not None and not os.path.isfile(args.weights):
        raise MiniVGGError(f"{args.weights}: no such weights file")
    execute.check_device(args.device)
    args.arch = args.arch or arch_for(args.weights)
    image = execute.load_input(args.image)
    style = execute.load_input(args.style) if args.style else None
    content_layers = _layers(args.content_layers, args.arch, "--content-layers")
    style_layers = _layers(args.style_layers, args.arch, "--style-layers")
    for name, v in (("--content-weight", args.content_weight), ("--style-weight", args.style_weight),
                    ("--lr", args.lr)):
        if v is not None and not v >= 0:
            raise MiniVGGError(f"{name} must be >= 0; got {v}")
    if args.init == "style" and style is None:
        raise MiniVGGError("--init style needs --style")
    base = dict(arch=args.arch, pooling=args.pooling, size=args.size, iters=args.iters, seed=args.seed,
                optimizer=args.optimizer, lr=args.lr, line_search=args.line_search)
    cells = []

    def add(row, method, given, inputs, label):
        p = dict(params.method_defaults(method), **base)
        p.update(given)
        cell = {"key": f"{row} {_short(label)}", "method": method, "params": p, "inputs": inputs,
                "weights": args.weights, "device": args.device, "row": row, "layers": tuple(label)}
        params.check_cell(cell)
        cells.append(cell)

    for layer in content_layers:
        plain = {} if args.regularize else {"tv_weight": 0.0, "alpha_weight": 0.0}
        add("content", "invert", {"layer": (layer,), "init": "noise", **plain}, {"image": image}, (layer,))
    source = style if style is not None else image
    for k in range(1, len(style_layers) + 1):
        add("texture", "texture", {"layers": style_layers[:k], "init": "noise"}, {"source": source},
            style_layers[:k])
    if style is not None:
        for k in range(1, len(style_layers) + 1):
            extra = {"style_layers": style_layers[:k], "init": args.init}
            if args.content_weight is not None:
                extra["content_weight"] = args.content_weight
            if args.style_weight is not None:
                extra["style_weight"] = args.style_weight
            add("style", "style", extra, {"content": image, "style": [style]}, style_layers[:k])
    meta = {"image": image, "style": style, "source": execute.weights_source(args.arch, args.weights),
            "content_layers": content_layers, "style_layers": style_layers}
    return cells, meta


def _layers(text, arch, option):
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise MiniVGGError(f"{option}: no layers given")
    params.check_layer_names(names, arch, option)
    return tuple(names)


def run(args):
    """Make the atlas; returns the exit status (0, or 130 after Ctrl-C)."""
    cells, meta = plan(args)
    note = pictures.random_note(meta["source"], args.arch)
    if note:
        print(f"note: {note}", flush=True)
    workers = args.workers if args.workers is not None else (1 if args.device == "gpu" else execute.default_workers())
    results = {}
    bar = execute.progress_bar(len(cells), desc="atlas", quiet=args.quiet, unit="run")
    t0 = time.perf_counter()
    # deeper runs first, so that the last ones to finish are short (better use of the workers)
    order = sorted(cells, key=lambda c: -_cost(c))
    try:
        status = execute.execute(order, workers=workers, scheduler=args.scheduler,
                            on_result=lambda r: results.__setitem__(r["key"], r), progress=bar)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    paths = write_outputs(args, cells, meta, results, note)
    failed = [r for r in results.values() if r["stopped"] == "failed"]
    done = sum(1 for r in results.values() if execute.finished(r))
    print(f"wrote {paths[0]} ({done} of {len(cells)} runs, {pictures.fmt_seconds(time.perf_counter() - t0)}), "
          f"{paths[1]}, {paths[2]}")
    if status == "interrupted":
        print("interrupted: the sheet shows the runs that finished", file=sys.stderr)
        return 130
    if failed:
        first = failed[0]
        raise MiniVGGError(f"{len(failed)} of {len(cells)} runs failed; {first['key']}: {first['message']}")
    return 0


def _cost(cell):
    layers = [n for k in ("layer", "layers", "style_layers", "content_layers") for n in cell["params"].get(k) or ()]
    return max(params.pools_before(cell["params"]["arch"], n) for n in layers) if layers else 0


def write_outputs(args, cells, meta, results, note):
    """The sheet, the CSV and the loss curves; each file written atomically."""
    stem = os.path.splitext(os.fspath(args.out))[0]
    csv_path, curves_path = stem + ".csv", stem + "-curves.png"
    box = args.tile or pictures.default_box(args.size)
    weights = "random weights" if note else os.path.basename(meta["source"])
    title = [f"minivgg layer atlas: {args.arch}, {args.pooling} pooling, {weights}; {args.optimizer}, "
             f"{args.iters} iterations, size {args.size}, seed {args.seed}"]
    originals = {"content": (meta["image"], "image"),
                 "texture": (meta["style"] if meta["style"] is not None else meta["image"],
                             "style" if meta["style"] is not None else "image"),
                 "style": (meta["style"], "style")}
    rows, csv_rows, panels = [], [], []
    for row in ("content", "texture", "style"):
        row_cells = [c for c in cells if c["row"] == row]
        if not row_cells:
            continue
        img, what = originals[row]
        tiles = [pictures.Tile(img, [f"{what} ({img.shape[1]}x{img.shape[0]})", "original"], pictures.FAINT)]
        curves = []
        for c in row_cells:
            r = results.get(c["key"])
            label = _short(c["layers"]) if row != "content" else c["layers"][0]
            if r is None:
                tiles.append(pictures.Tile(None, [label, "not run"], pictures.FAINT))
                continue
            s = records.loss_summary(r["history"])
            if execute.finished(r):
                tiles.append(pictures.Tile(r["image"], [label, f"{s['iterations']} it, loss {pictures.fmt_loss(s['total'])}"]))
            else:
                tiles.append(pictures.Tile(None, [label, r["stopped"]], pictures.WARN))
            curves.append((label, [h["iter"] for h in r["history"]], [h["total"] for h in r["history"]]))
            p = c["params"]
            csv_rows.append(dict(run=len(csv_rows) + 1, row=row, method=c["method"], layers=c["layers"],
                                 arch=p["arch"], pooling=p["pooling"], weights=r.get("weights_source") or meta["source"],
                                 optimizer=p["optimizer"], init=p.get("init"), iters=p["iters"], size=p["size"],
                                 seed=p["seed"], stopped=r["stopped"], seconds=round(r["seconds"], 3),
                                 message=r["message"], **s))
        rows.append((ROWS[row], tiles))
        panels.append((ROWS[row].replace("\n", " "), curves))
    sheet, _layout = pictures.contact_sheet(rows, box=box, title=title, note=note)
    curves = pictures.loss_curves(panels, title=f"loss per iteration: {title[0][len('minivgg layer atlas: '):]}")
    records.save_png(args.out, sheet)
    records.write_csv(csv_path, CSV_COLUMNS, csv_rows)
    records.save_png(curves_path, curves)
    return os.fspath(args.out), csv_path, curves_path


def _short(layers):
    """A layer set for a tile: 'conv1_1' or 'conv1_1..conv3_1 (3)'."""
    if len(layers) <= 2:
        return "+".join(layers)
    return f"{layers[0]}..{layers[-1]} ({len(layers)})"


def main(argv=None):
    """``python -m minivgg.experiments.atlas``: the command on its own (same options)."""
    parser = argparse.ArgumentParser(prog="minivgg atlas", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return execute.guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
