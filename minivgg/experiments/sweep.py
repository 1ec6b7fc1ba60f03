"""``minivgg sweep``: run a method over the Cartesian product of parameter values.

    minivgg sweep --method style --content photo.jpg --style starry.jpg --out runs/layers \\
        --grid 'style_layers=relu1_1,relu1_1+relu2_1,relu1_1+relu2_1+relu3_1' --grid 'iters=200,800'
    minivgg sweep experiment.toml

Values are separated by commas; a layer set joins its layers with '+'. Parameters not
on a grid are fixed with ``--set name=value`` (or --size, --iters, ...). DIR receives:

- cells/<cell>.png       every result image (<cell> = the cell's parameters);
- logs/<cell>.csv        every run's loss per iteration;
- results.csv            one row per cell: its parameters, final losses, seconds;
- grid.png               the results on a labeled grid: rows = the first parameter's
                         values (with 3 or more parameters, the combinations of all but
                         the last), columns = the last parameter's values;
- curves.png             every cell's loss curve;
- sweep.json             the fixed settings, so that a rerun can check it continues
                         the same experiment.

Resumable: a cell whose image and results.csv row are already in DIR is skipped, so
rerunning the same command after Ctrl-C (or a crash, or deleting a result) runs only
what is missing. Parallel: --workers local processes (default min(2, cores)), or
--scheduler ADDRESS to run the cells on an existing Dask distributed cluster
(``pip install minivgg[dask]``; every worker needs minivgg, and the weights file when
one is given; input images travel with the cells).

A TOML config holds the same things (relative paths are relative to the config)::

    method = "style"
    content = "photo.jpg"
    style = ["starry.jpg"]      # or one string
    out = "runs/layers"
    [set]
    size = 256
    [grid]
    style_layers = ["relu1_1", "relu1_1+relu2_1", ["relu1_1", "relu2_1", "relu3_1"]]
    iters = [200, 800]

Options on the command line override the config's.
"""

import argparse
import hashlib
import itertools
import json
import os
import re
import sys
import time

from ..errors import MiniVGGError
from ..weights import arch_for
from . import execute, params, pictures, records

CONFIG_KEYS = ("method", "content", "style", "image", "weights", "device", "out", "workers", "scheduler", "set",
               "grid")
RESULT_COLUMNS = ("status", "iterations", "total", "content", "style", "tv", "seconds", "weights", "message")
SHORTCUTS = ("size", "iters", "arch", "pooling", "optimizer", "seed")


def add_parser(subparsers):
    """Register ``sweep`` on an argparse subparsers object."""
    p = subparsers.add_parser("sweep", help="run a method over a grid of parameters (resumable, parallel, Dask)",
                              description=__doc__.split("\n\n", 1)[1],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(_run=run)
    return p


def add_arguments(p):
    p.add_argument("config", nargs="?", help="a TOML file describing the sweep (see above)")
    p.add_argument("--grid", action="append", default=[], metavar="PARAM=V1,V2,...",
                   help="a parameter and its values; repeat for more parameters (their Cartesian product runs)")
    p.add_argument("--set", action="append", default=[], metavar="PARAM=VALUE", dest="fixed",
                   help="fix a parameter for every cell; repeatable")
    p.add_argument("--out", help="the sweep's folder (created; an existing sweep there is resumed)")
    p.add_argument("--method", choices=params.METHODS, help="style (default), texture, invert or dream")
    p.add_argument("--content", help="content image (style); a path or sample:NAME (a built-in photo)")
    p.add_argument("--style", nargs="+", help="style image(s) (style); texture source (texture)")
    p.add_argument("--image", help="the image (invert, dream; texture source when no --style)")
    p.add_argument("--weights", help="converted HDF5 weights (default: the fetched ones, else random weights)")
    p.add_argument("--device", choices=("cpu", "gpu", "emulated"))
    for name in SHORTCUTS:
        p.add_argument(f"--{name}", help=f"same as --set {name}=VALUE")
    p.add_argument("--workers", type=int, help="local worker processes (default min(2, cores); 1 = this process)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="run the cells on this Dask distributed scheduler (e.g. tcp://10.0.0.5:8786)")
    p.add_argument("--tile", type=int, help="tile size on grid.png in pixels (default 128..256 from the size)")
    p.add_argument("--list-params", action="store_true", help="print the method's parameters and exit")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


# ------------------------------------------------------------------ the plan
def load_config(path):
    """The TOML config as a dict, relative paths made relative to its folder."""
    try:
        import tomllib
    except ImportError:  # Python < 3.11
        try:
            import tomli as tomllib
        except ImportError:
            raise MiniVGGError("TOML configs need Python >= 3.11 (or: pip install tomli); "
                               "use --grid/--set options instead") from None
    try:
        with open(path, "rb") as f:
            cfg = tomllib.load(f)
    except FileNotFoundError:
        raise MiniVGGError(f"{path}: no such config file") from None
    except IsADirectoryError:
        raise MiniVGGError(f"{path}: is a directory, not a config file") from None
    except tomllib.TOMLDecodeError as e:
        raise MiniVGGError(f"{path}: not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MiniVGGError(f"{path}: cannot read ({e})") from None
    bad = [k for k in cfg if k not in CONFIG_KEYS]
    if bad:
        raise MiniVGGError(f"{path}: unknown key {', '.join(map(repr, bad))}; valid keys: {', '.join(CONFIG_KEYS)}")
    for k in ("set", "grid"):
        if k in cfg and not isinstance(cfg[k], dict):
            raise MiniVGGError(f"{path}: [{k}] must be a table of parameter = value(s)")
    for k, v in cfg.get("grid", {}).items():
        if not isinstance(v, list) or not v:
            raise MiniVGGError(f"{path}: grid.{k} must be a non-empty list of values")
    folder = os.path.dirname(os.path.abspath(path))
    rel = lambda p: p if os.path.isabs(p) or p.startswith("sample:") else os.path.join(folder, p)
    for k in ("content", "image", "weights", "out"):
        if k in cfg:
            if not isinstance(cfg[k], str):
                raise MiniVGGError(f"{path}: {k} must be a path string")
            cfg[k] = rel(cfg[k])
    if "style" in cfg:
        styles = [cfg["style"]] if isinstance(cfg["style"], str) else cfg["style"]
        if not isinstance(styles, list) or not all(isinstance(s, str) for s in styles):
            raise MiniVGGError(f"{path}: style must be a path or a list of paths")
        cfg["style"] = [rel(s) for s in styles]
    return cfg


def _split_assignment(text, option):
    if "=" not in text:
        raise MiniVGGError(f"{option} {text!r}: expected PARAM=VALUES, e.g. iters=200,800")
    name, values = text.split("=", 1)
    return name.strip(), values


def plan(args):
    """Read the config and options, check everything, and return the sweep as a dict
    (method, grid, fixed, inputs, cells, out, ...). Nothing is written."""
    load_image = execute.load_input
    cfg = load_config(args.config) if args.config else {}
    method = args.method or cfg.get("method") or "style"
    if method not in params.METHODS:
        raise MiniVGGError(f"unknown method {method!r}; choose one of {', '.join(params.METHODS)}")
    out = args.out or cfg.get("out")
    if not out:
        raise MiniVGGError("no output folder: give --out DIR (or out = \"DIR\" in the config)")
    # the grid: config first, then --grid (which replaces a parameter of the same name)
    grid = {}
    for name, values in cfg.get("grid", {}).items():
        grid[params.canonical_param(method, name)] = list(values)
    for text in args.grid:
        name, values = _split_assignment(text, "--grid")
        values = [v.strip() for v in values.split(",")]
        if any(v == "" for v in values):
            raise MiniVGGError(f"--grid {text!r}: empty value; separate values with commas")
        grid[params.canonical_param(method, name)] = values
    if not grid:
        raise MiniVGGError("nothing to sweep: give --grid PARAM=V1,V2 (or a [grid] table in the config); "
                           f"parameters of {method}: {', '.join(params.PARAMS[method])}")
    fixed_raw = {}
    for name, value in cfg.get("set", {}).items():
        fixed_raw[params.canonical_param(method, name)] = value
    for text in args.fixed:
        name, value = _split_assignment(text, "--set")
        fixed_raw[params.canonical_param(method, name)] = value
    for name in SHORTCUTS:
        if getattr(args, name, None) is not None:
            if name not in params.PARAMS[method]:
                raise MiniVGGError(f"--{name} is not a parameter of {method}")
            fixed_raw[name] = getattr(args, name)
    both = [n for n in fixed_raw if n in grid]
    if both:
        raise MiniVGGError(f"parameter {', '.join(both)} is both fixed and on the grid; give it once")
    # parse every value (layer names are checked against each cell's arch below)
    fixed = {n: params.parse_value(method, n, v) for n, v in fixed_raw.items()}
    parsed = {}
    for n, values in grid.items():
        vals = [params.parse_value(method, n, v) for v in values]
        seen = set()
        for v in vals:
            if v in seen:
                raise MiniVGGError(f"--grid {n}: value {params.format_value(v)} appears twice")
            seen.add(v)
        parsed[n] = vals
    if "ratio" in parsed and ("style_weight" in parsed or "style_weight" in fixed) or \
            "style_weight" in parsed and "ratio" in fixed:
        raise MiniVGGError("give either ratio (content weight / style weight) or style_weight, not both")
    # inputs
    content = args.content or cfg.get("content")
    styles = args.style or cfg.get("style") or []
    image = args.image or cfg.get("image")
    weights = args.weights or cfg.get("weights")
    if weights is not None and not os.path.isfile(weights):
        raise MiniVGGError(f"{weights}: no such weights file")
    inputs = {}
    if method == "style":
        if not content:
            raise MiniVGGError("method style needs a content image (--content)")
        if not styles:
            raise MiniVGGError("method style needs a style image (--style)")
        inputs = {"content": load_image(content), "style": [load_image(s) for s in styles]}
    elif method == "texture":
        if not styles and not image:
            raise MiniVGGError("method texture needs a source image (--style or --image)")
        if len(styles) > 1:
            raise MiniVGGError("method texture takes one source image")
        inputs = {"source": load_image(styles[0] if styles else image)}
    else:
        if not image and not content:
            raise MiniVGGError(f"method {method} needs an image (--image)")
        inputs = {"image": load_image(image or content)}
    device = args.device or cfg.get("device") or "cpu"
    execute.check_device(device)
    workers = args.workers if args.workers is not None else cfg.get("workers")
    if workers is not None and (not isinstance(workers, int) or workers < 1):
        raise MiniVGGError(f"workers must be a positive integer; got {workers!r}")
    scheduler = args.scheduler or cfg.get("scheduler")
    if args.tile is not None and args.tile < 16:
        raise MiniVGGError(f"--tile must be at least 16 pixels; got {args.tile}")
    defaults = dict(params.method_defaults(method), arch=arch_for(weights))  # the weights' network, as elsewhere
    names = list(parsed)
    cells = []
    for combo in itertools.product(*(parsed[n] for n in names)):
        cell_params = dict(defaults, **fixed)
        cell_params.update(zip(names, combo))
        key = cell_key(names, combo)
        cell = {"key": key, "method": method, "params": cell_params, "inputs": inputs, "weights": weights,
                "device": device, "grid": dict(zip(names, combo)), "file": cell_file(key)}
        params.check_cell(cell)
        cells.append(cell)
    return {"method": method, "grid": parsed, "names": names, "fixed": {n: v for n, v in dict(defaults, **fixed).items()
                                                                         if n not in parsed},
            "inputs": inputs, "cells": cells, "out": out, "device": device, "workers": workers,
            "scheduler": scheduler, "weights": weights}


def cell_key(names, values):
    """The cell's name: 'style_layers=relu1_1+relu2_1__iters=200'."""
    return "__".join(f"{n}={params.format_value(v)}" for n, v in zip(names, values))


def cell_file(key):
    """A file name for a cell (its key, shortened with a hash when too long)."""
    safe = re.sub(r"[^A-Za-z0-9_.+=-]", "_", key)
    if len(safe) > 120:
        safe = safe[:100] + "-" + hashlib.sha1(key.encode()).hexdigest()[:12]
    return safe + ".png"


def manifest(sweep):
    """What identifies a sweep apart from its grid: method, fixed settings, inputs
    (a hash of their pixels), weights."""
    def digest(img):
        return f"{img.shape[1]}x{img.shape[0]}:{hashlib.sha1(img.tobytes()).hexdigest()[:16]}"

    inputs = {}
    for k, v in sweep["inputs"].items():
        inputs[k] = [digest(i) for i in v] if isinstance(v, list) else digest(v)
    archs = {c["params"]["arch"] for c in sweep["cells"]}
    return {"method": sweep["method"], "fixed": {n: params.format_value(v) for n, v in sweep["fixed"].items()},
            "inputs": inputs, "weights": {a: execute.weights_source(a, sweep["weights"]) for a in sorted(archs)},
            "device": sweep["device"]}


# ------------------------------------------------------------------ running
def run(args):
    """Run (or resume) the sweep; returns the exit status (0, or 130 after Ctrl-C)."""
    if args.list_params:
        method = args.method or (load_config(args.config).get("method") if args.config else None) or "style"
        if method not in params.METHODS:
            raise MiniVGGError(f"unknown method {method!r}; choose one of {', '.join(params.METHODS)}")
        defaults = dict(params.method_defaults(method), arch=arch_for(args.weights))
        for n in params.PARAMS[method]:
            kind = params.KINDS[n]
            kind = "|".join(kind) if isinstance(kind, tuple) else ("|".join(params.INITS[method]) if kind == "init"
                                                                  else kind)
            d = params.format_value(defaults.get(n)) or "(method default)"
            print(f"{n:15s} {kind:18s} default {d}")
        return 0
    sweep = plan(args)
    out = sweep["out"]
    if os.path.exists(out) and not os.path.isdir(out):
        raise MiniVGGError(f"{out}: exists and is not a folder")
    man = manifest(sweep)
    man_path = os.path.join(out, "sweep.json")
    if os.path.isfile(man_path):
        try:
            with open(man_path) as f:
                old = json.load(f)
        except (OSError, ValueError):
            old = None
        if old is not None and old != man:
            diff = [k for k in man if old.get(k) != man[k]]
            detail = []
            for k in diff:
                if k == "fixed":
                    o, n = old.get(k) or {}, man[k]
                    detail += [f"{p}: {o.get(p, '(unset)')} there, {n.get(p, '(unset)')} here"
                               for p in sorted(set(o) | set(n)) if o.get(p) != n.get(p)]
                else:
                    detail.append(f"{k} differs")
            raise MiniVGGError(f"{out} holds a sweep with other settings ({'; '.join(detail)}); "
                               f"use another --out, or remove {out} to start over")
    try:
        os.makedirs(os.path.join(out, "cells"), exist_ok=True)
        os.makedirs(os.path.join(out, "logs"), exist_ok=True)
    except OSError as e:
        raise MiniVGGError(f"{out}: cannot create the folder ({e.strerror})") from None
    records.atomic_write(man_path, lambda tmp: _write_json(tmp, man))

    csv_path = os.path.join(out, "results.csv")
    rows = {r["cell"]: r for r in records.read_csv(csv_path) if r.get("cell")}
    cells = sweep["cells"]
    done = [c for c in cells if _is_done(out, c, rows)]
    todo = [c for c in cells if c not in done]
    note = None
    for arch, source in man["weights"].items():
        note = note or pictures.random_note(source, arch)
    if note:
        print(f"note: {note}", flush=True)
    if done:
        print(f"resuming: {len(done)} of {len(cells)} cells already done in {out}", flush=True)
    workers = sweep["workers"] or (1 if sweep["device"] == "gpu" else execute.default_workers())
    workers = max(1, min(workers, len(todo)))
    by_key = {c["key"]: c for c in cells}
    columns = _columns(sweep)
    failed = []

    def on_result(res):
        cell = by_key.get(res["key"])
        if cell is None:
            return
        row = {"cell": cell["key"], "file": "cells/" + cell["file"], "status": res["stopped"],
               "seconds": round(res["seconds"], 3), "weights": res.get("weights_source") or "",
               "message": res["message"], **records.loss_summary(res["history"])}
        row.update({n: params.format_value(v) for n, v in cell["params"].items()})
        if execute.finished(res):
            from ..image import save_image

            save_image(os.path.join(out, "cells", cell["file"]), res["image"])
            _write_log(os.path.join(out, "logs", cell["file"][:-4] + ".csv"), res["history"])
        else:
            failed.append(res)
        rows[cell["key"]] = row
        _write_results(csv_path, columns, cells, rows)

    bar = execute.progress_bar(len(cells), initial=len(done), desc="sweep", quiet=args.quiet, unit="cell")
    t0 = time.perf_counter()
    try:
        status = execute.execute(_longest_first(todo), workers=workers, scheduler=sweep["scheduler"], on_result=on_result,
                            progress=bar)
    except KeyboardInterrupt:
        status = "interrupted"
    finally:
        bar.close()
    _write_results(csv_path, columns, cells, rows)
    paths = write_pictures(sweep, rows, note, args.tile)
    n_done = sum(1 for c in cells if _is_done(out, c, rows))
    print(f"wrote {paths[0]}, {paths[1]}, {csv_path} ({n_done} of {len(cells)} cells done, "
          f"{pictures.fmt_seconds(time.perf_counter() - t0)})")
    if status == "interrupted":
        print(f"interrupted: {n_done} of {len(cells)} cells done; run the same command again to resume",
              file=sys.stderr)
        return 130
    if failed:
        first = failed[0]
        raise MiniVGGError(f"{len(failed)} of {len(cells)} cells failed (see {csv_path}); "
                           f"{first['key']}: {first['message']}")
    return 0


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")


def _is_done(out, cell, rows):
    row = rows.get(cell["key"])
    return (row is not None and row.get("status") in ("iterations", "tolerance", "diverged")
            and os.path.isfile(os.path.join(out, "cells", cell["file"])))


def _columns(sweep):
    names = sweep["names"]
    rest = [n for n in params.PARAMS[sweep["method"]] if n not in names]
    return ["cell", "file", *names, *RESULT_COLUMNS, *rest]


def _write_results(path, columns, cells, rows):
    order = [c["key"] for c in cells]
    extra = [k for k in rows if k not in set(order)]  # rows of earlier grids in the same folder
    records.write_csv(path, columns, [rows[k] for k in order + extra if k in rows])


def _write_log(path, history):
    cols = list(dict.fromkeys(k for h in history for k in h))
    records.write_csv(path, cols, history)


def _longest_first(cells):
    def cost(c):
        p = c["params"]
        layers = [n for k in ("layer", "layers", "style_layers", "content_layers") for n in (p.get(k) or ())]
        depth = max((params.pools_before(p["arch"], n) for n in layers), default=0)
        return -(p["iters"] * (p.get("size") or 128) ** 2 * (depth + 1))

    return sorted(cells, key=cost)


def write_pictures(sweep, rows, note, tile=None):
    """grid.png (results on the parameters' axes) and curves.png, from the files in DIR."""
    from ..image import load_image

    out, names, grid = sweep["out"], sweep["names"], sweep["grid"]
    col_name, row_names = names[-1], names[:-1]
    cols = grid[col_name]
    row_combos = list(itertools.product(*(grid[n] for n in row_names))) or [()]
    sizes = [c["params"].get("size") or 128 for c in sweep["cells"]]
    box = tile or pictures.default_box(max(sizes))
    by_grid = {tuple(c["grid"][n] for n in names): c for c in sweep["cells"]}
    sheet_rows, curves = [], []
    for combo in row_combos:
        label = ", ".join(f"{n}={params.format_value(v)}" for n, v in zip(row_names, combo))
        tiles = []
        for v in cols:
            cell = by_grid[tuple(combo) + (v,)]
            row = rows.get(cell["key"])
            path = os.path.join(out, "cells", cell["file"])
            if row is None:
                tiles.append(pictures.Tile(None, ["not run", ""], pictures.FAINT))
                continue
            if _is_done(out, cell, rows):
                try:
                    img = load_image(path)
                except MiniVGGError:
                    img = None
                tiles.append(pictures.Tile(img, [f"loss {pictures.fmt_loss(_float(row.get('total')))}",
                                           pictures.fmt_seconds(_float(row.get("seconds")))]))
                log = records.read_csv(os.path.join(out, "logs", cell["file"][:-4] + ".csv"))
                curves.append((cell["key"].replace("__", ", "), [_float(r.get("iter")) for r in log],
                               [_float(r.get("total")) for r in log]))
            else:
                tiles.append(pictures.Tile(None, [row.get("status", "failed"), (row.get("message") or "")[:40]], pictures.WARN))
        sheet_rows.append((label, tiles))
    fixed = ", ".join(f"{n}={params.format_value(v)}" for n, v in sweep["fixed"].items() if v is not None)
    weights = "random weights" if note else "pretrained weights"
    title = [f"minivgg sweep: {sweep['method']}, {weights}", *_wrap_plain(f"fixed: {fixed}", 150)]
    headers = [f"{col_name}={params.format_value(v)}" for v in cols]
    corner = " x ".join(row_names) if row_names else ""
    sheet, _layout = pictures.contact_sheet(sheet_rows, box=box, title=title, col_headers=headers, corner=corner, note=note)
    grid_path = records.save_png(os.path.join(out, "grid.png"), sheet)
    img = pictures.loss_curves([("total loss per iteration", curves)], panel_size=(520, 300),
                         title=f"minivgg sweep: {sweep['method']}, {weights}")
    curves_path = records.save_png(os.path.join(out, "curves.png"), img)
    return grid_path, curves_path


def _wrap_plain(text, width):
    lines, cur = [], ""
    for part in text.split(", "):
        if cur and len(cur) + len(part) + 2 > width:
            lines.append(cur + ",")
            cur = part
        else:
            cur = f"{cur}, {part}" if cur else part
    return lines + [cur]


def _float(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def main(argv=None):
    """``python -m minivgg.experiments.sweep``: the command on its own (same options)."""
    parser = argparse.ArgumentParser(prog="minivgg sweep", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    args = parser.parse_args(argv)
    return execute.guarded(run, args)


if __name__ == "__main__":
    sys.exit(main())
