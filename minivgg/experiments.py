"""What the layer atlas (``minivgg atlas``) and the sweeps (``minivgg sweep``) share:
the parameters a run takes and their checks, running one run ("cell") in this
process, in local worker processes or on a Dask cluster, and the pictures and tables
that come out (a labeled contact sheet, loss curves, CSV files), each written
atomically.

A cell is a plain dict (picklable, so it can travel to a worker process or a Dask
worker)::

    {"key": "style_layers=relu1_1__iters=200",   # unique name inside the experiment
     "method": "style" | "texture" | "invert" | "dream",
     "params": {...},            # every parameter of PARAMS[method], None = method default
     "inputs": {"content": img, "style": [img, ...], "image": img},  # uint8 RGB arrays
     "weights": None | path, "device": "cpu" | "gpu"}

:func:`run_cell` runs one and returns ``{"key", "image", "history", "stopped",
"message", "seconds", "weights_source"}``. The inputs travel as arrays (not paths) so
that a remote worker needs no access to the user's files; a weights path must exist
where the cell runs (``None``: the worker's own cache, else random weights).

docs/experiments.md describes the experiments and how to reproduce each one.
"""

import contextlib
import csv
import io
import math
import os
import sys
import threading
import time

import numpy as np

from . import options
from .errors import MiniVGGError

# ------------------------------------------------------------------ the commands
def add_parser(subparsers):
    """Add ``atlas`` and ``sweep`` to the CLI's sub-parsers (minivgg/cli.py lists this
    module in EXTENSION_MODULES)."""
    from . import atlas, sweep

    atlas.add_parser(subparsers)
    sweep.add_parser(subparsers)


def run(args):
    """Run the command that ``args`` came from (atlas or sweep)."""
    return args._run(args)


# ------------------------------------------------------------------ parameters
ARCHS = ("vgg16", "vgg19")
POOLINGS = ("avg", "max")
OPTIMIZERS = ("lbfgs", "adam", "sgd")
METHODS = ("style", "texture", "invert", "dream")
LINE_SEARCHES = ("strong_wolfe", "none")
INITS = {"style": ("noise", "content", "style"), "texture": ("noise", "style"), "invert": ("noise", "content")}

# What each parameter is: a kind that says how to parse and check its values.
KINDS = {
    "style_layers": "layers", "content_layers": "layers", "layers": "layers", "layer": "layer",
    "iters": "int>=1", "size": "int>=1", "seed": "int>=0", "channel": "int>=0", "octaves": "int>=1",
    "jitter": "int>=0", "zoom_steps": "int>=0",
    "ratio": "float>0", "lr": "float>0", "style_scale": "float>0", "octave_scale": "float>1",
    "content_weight": "float>=0", "style_weight": "float>=0", "tv_weight": "float>=0", "alpha_weight": "float>=0",
    "pooling": POOLINGS, "optimizer": OPTIMIZERS, "arch": ARCHS, "init": "init",
    "line_search": LINE_SEARCHES,
}
# The parameters of each method, in the order the CSV lists them.
PARAMS = {
    "style": ("style_layers", "content_layers", "iters", "ratio", "content_weight", "style_weight", "tv_weight",
              "style_scale", "init", "optimizer", "line_search", "lr", "pooling", "arch", "size", "seed"),
    "texture": ("layers", "iters", "tv_weight", "init", "optimizer", "line_search", "lr", "pooling", "arch", "size", "seed"),
    "invert": ("layer", "iters", "tv_weight", "alpha_weight", "init", "optimizer", "line_search", "lr", "pooling", "arch", "size",
               "seed"),
    "dream": ("layer", "channel", "iters", "octaves", "octave_scale", "lr", "jitter", "zoom_steps", "pooling", "arch",
              "size", "seed"),
}
# Other names people use for the same thing.
ALIASES = {
    "style": {"layers": "style_layers"},
    "texture": {"style_layers": "layers"},
    "invert": {"layers": "layer", "content_layers": "layer"},
    "dream": {"layers": "layer"},
}
# Defaults of a sweep (the methods' own defaults otherwise); small enough for a CPU.
# L-BFGS takes a strong-Wolfe line search here: from white noise through random or
# shallow layer sets, its plain steps can overshoot by orders of magnitude.
DEFAULTS = {"size": 128, "iters": 100, "arch": "vgg19", "pooling": "avg", "seed": 0, "optimizer": "lbfgs",
            "init": "noise", "line_search": "strong_wolfe"}
DREAM_DEFAULTS = {"iters": 10, "pooling": "max"}  # dream on the pooling VGG was trained with
# Which inputs each method needs (names of the --content/--style/--image options).
NEEDS = {"style": ("content", "style"), "texture": ("source",), "invert": ("image",), "dream": ("image",)}


def method_defaults(method):
    """The effective default of every parameter of ``method`` (None = the method's own)."""
    import importlib

    # the package re-exports functions named like some modules (invert, dream)
    mod = lambda name: importlib.import_module(f"{__package__}.methods.{name}")
    style, texture, invert, dream = mod("style"), mod("texture"), mod("invert"), mod("dream")
    d = {p: DEFAULTS.get(p) for p in PARAMS[method]}
    if method == "style":
        d.update(style_layers=tuple(style.STYLE_LAYERS), content_layers=tuple(style.CONTENT_LAYERS))
    elif method == "texture":
        d.update(layers=tuple(texture.TEXTURE_LAYERS))
    elif method == "invert":
        d.update(layer=(invert.INVERT_LAYER,))
    else:
        d.update(layer=(dream.DREAM_LAYER,), **DREAM_DEFAULTS)
        d.pop("init", None)
    return {k: v for k, v in d.items() if k in PARAMS[method]}


def canonical_param(method, name):
    """The parameter's canonical name for ``method``; MiniVGGError lists the valid ones."""
    if method not in PARAMS:
        raise MiniVGGError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    name = str(name).strip().replace("-", "_")
    name = ALIASES[method].get(name, name)
    if name not in PARAMS[method]:
        raise MiniVGGError(f"unknown parameter {name!r} for method {method}; valid parameters: "
                           f"{', '.join(PARAMS[method])}")
    return name


def parse_value(method, name, value, arch=None):
    """Parse and check one value of parameter ``name`` (a string from the command line
    or a TOML value). Layer sets are tuples of names (``relu1_1+relu2_1`` or a list).
    ``arch`` checks layer names against that network (else against VGG-19's and
    VGG-16's names together; the cell check redoes it with the cell's arch)."""
    kind = KINDS[name]
    what = f"parameter {name}"
    if kind in ("layers", "layer"):
        if isinstance(value, str):
            names = [v.strip() for v in value.split("+") if v.strip()]
        elif isinstance(value, (list, tuple)):
            names = [str(v).strip() for v in value]
        else:
            raise MiniVGGError(f"{what}: expected layer names like relu1_1+relu2_1, got {value!r}")
        if not names:
            raise MiniVGGError(f"{what}: empty layer set")
        valid = _valid_layers(arch)
        bad = [n for n in names if n not in valid]
        if bad:
            raise MiniVGGError(f"{what}: unknown layer {', '.join(map(repr, bad))}"
                               f"{' for ' + arch if arch else ''}; valid layers: {', '.join(valid)}")
        if kind == "layer" and method == "dream" and len(names) != 1:
            raise MiniVGGError(f"{what}: dream takes one layer, got {'+'.join(names)}")
        return tuple(names)
    if isinstance(kind, tuple):
        v = str(value).strip()
        if v not in kind:
            raise MiniVGGError(f"{what}: unknown value {v!r}; valid values: {', '.join(kind)}")
        return v
    if kind == "init":
        v = str(value).strip()
        if v not in INITS[method]:
            raise MiniVGGError(f"{what}: unknown value {v!r} for method {method}; valid values: "
                               f"{', '.join(INITS[method])}")
        return v
    if kind.startswith("int"):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            v = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except ValueError:
            raise MiniVGGError(f"{what}: expected an integer, got {value!r}") from None
        low = int(kind[kind.index("=") + 1:])
        if v < low:
            raise MiniVGGError(f"{what}: must be >= {low}, got {v}")
        return v
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value)
    except (TypeError, ValueError):
        raise MiniVGGError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise MiniVGGError(f"{what}: must be finite, got {value!r}")
    op, bound = kind[5:7].rstrip("0123456789"), float(kind[5:].lstrip("<>="))
    ok = v > bound if op == ">" else v >= bound
    if not ok:
        raise MiniVGGError(f"{what}: must be {op} {bound:g}, got {v:g}")
    return v


def _valid_layers(arch):
    from .vgg import layer_names

    if arch:
        return layer_names(arch)
    return list(dict.fromkeys(layer_names("vgg19") + layer_names("vgg16")))


def format_value(v):
    """A parameter value as text: layer sets joined with '+', numbers compactly."""
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def pools_before(arch, layer):
    """How many 2x2 poolings come before ``layer``'s output (inclusive for poolN)."""
    from .vgg import layer_names

    names = layer_names(arch)
    return sum(1 for n in names[: names.index(layer) + 1] if n.startswith("pool"))


def check_cell(cell):
    """Check a cell before any work: layer names against its arch, every needed input
    present, the ratio not given together with a style weight, and an image size large
    enough for the deepest layer (each 2x2 pooling halves it). MiniVGGError otherwise."""
    from .image import size_for_longest

    method, p = cell["method"], cell["params"]
    arch = p["arch"]
    layers = []
    for name in PARAMS[method]:
        if KINDS[name] in ("layers", "layer") and p.get(name) is not None:
            layers += list(parse_value(method, name, p[name], arch))
    if method == "style" and p.get("ratio") is not None and p.get("style_weight") is not None:
        raise MiniVGGError("give either ratio (content weight / style weight) or style_weight, not both")
    inputs = cell["inputs"]
    for need in NEEDS[method]:
        if inputs.get(need) is None or (need == "style" and not len(inputs[need])):
            raise MiniVGGError(f"method {method} needs {_INPUT_HELP[need]}")
    shape = size_for_longest(_main_input(cell).shape, p["size"]) if p.get("size") else _main_input(cell).shape[:2]
    if layers:
        deepest = max(layers, key=lambda n: pools_before(arch, n))
        need = 2 ** pools_before(arch, deepest)
        if min(shape) < need:
            raise MiniVGGError(f"size {p.get('size')} gives a {shape[0]}x{shape[1]} image, too small for {deepest} "
                               f"(needs at least {need} pixels on each side after {pools_before(arch, deepest)} "
                               f"poolings); use a larger size")
    return cell


_INPUT_HELP = {"content": "a content image (--content)", "style": "a style image (--style)",
               "source": "a texture source image (--style or --image)", "image": "an image (--image)"}


def _main_input(cell):
    inputs = cell["inputs"]
    return {"style": lambda: inputs["content"], "texture": lambda: inputs["source"],
            "invert": lambda: inputs["image"], "dream": lambda: inputs["image"]}[cell["method"]]()


# ------------------------------------------------------------------ running cells
_LOCAL = threading.local()  # one Net per thread: a Net caches activations between forward and backward


def _net(arch, pooling, weights, device):
    from . import load_vgg

    cache = getattr(_LOCAL, "nets", None)
    if cache is None:
        cache = _LOCAL.nets = {}
    key = (arch, pooling, None if weights is None else os.fspath(weights), device)
    if key not in cache:
        # the caller reports random weights once; keep every worker from repeating it
        with contextlib.redirect_stderr(io.StringIO()):
            cache[key] = load_vgg(arch, weights=weights, pooling=pooling, device=device)
    return cache[key]


def load_input(spec):
    """An image path, or ``sample:NAME`` for a built-in photo (minivgg.image.SAMPLES)."""
    from .image import load_image, sample_image

    spec = os.fspath(spec)
    if spec.startswith("sample:"):
        return sample_image(spec[len("sample:"):])
    return load_image(spec)


def check_device(device):
    """MiniVGGError up front when ``device`` cannot be used (e.g. no GPU)."""
    try:
        from .backend import check_device as check
    except ImportError:  # pragma: no cover
        return
    check(device)


def weights_source(arch, weights):
    """Where the weights of ``arch`` come from: the path, or ``"random"`` when none is
    given and none is found (see minivgg.weights.default_weights_path)."""
    if weights is not None:
        return os.fspath(weights)
    from .weights import default_weights_path

    path = default_weights_path(arch)
    return "random" if path is None else path


def run_cell(cell, callback=None):
    """Run one cell (see the module docstring) and return its result dict. Method
    errors are returned as ``stopped == "failed"`` with the message, so that one bad
    cell does not stop a sweep. KeyboardInterrupt gives ``stopped == "interrupted"``."""
    from .methods import dream, invert, style_transfer, synthesize_texture

    t0 = time.perf_counter()
    method, p, inputs = cell["method"], dict(cell["params"]), cell["inputs"]
    out = {"key": cell["key"], "image": None, "history": [], "stopped": "failed", "message": "", "seconds": 0.0,
           "weights_source": None}
    try:
        net = _net(p["arch"], p["pooling"], cell.get("weights"), cell.get("device", "cpu"))
        out["weights_source"] = net.source
        common = dict(size=p.get("size"), iters=p["iters"], seed=p["seed"], callback=callback)
        opt = dict(optimizer=p.get("optimizer", "lbfgs"), lr=p.get("lr"))
        if opt["optimizer"] == "lbfgs" and p.get("line_search"):
            opt["optim_options"] = {"line_search": p["line_search"]}
        if method == "style":
            kw = {}
            cw = p.get("content_weight")
            if p.get("ratio") is not None:
                cw = 1.0 if cw is None else cw
                kw["style_weight"] = cw / p["ratio"]
            elif p.get("style_weight") is not None:
                kw["style_weight"] = p["style_weight"]
            if cw is not None:
                kw["content_weight"] = cw
            for name in ("tv_weight", "style_scale"):
                if p.get(name) is not None:
                    kw[name] = p[name]
            r = style_transfer(net, inputs["content"], list(inputs["style"]), style_layers=p["style_layers"],
                               content_layers=p["content_layers"], init=p["init"], **kw, **opt, **common)
        elif method == "texture":
            kw = {"tv_weight": p["tv_weight"]} if p.get("tv_weight") is not None else {}
            # the source is seen at the output's scale, so a tile shows textures at the source's scale
            r = synthesize_texture(net, inputs["source"], layers=p["layers"], source_size=p.get("size"),
                                   init=p["init"], **kw, **opt, **common)
        elif method == "invert":
            kw = {n: p[n] for n in ("tv_weight", "alpha_weight") if p.get(n) is not None}
            r = invert(net, inputs["image"], list(p["layer"]), init=p["init"], **kw, **opt, **common)
        else:
            kw = {n: p[n] for n in ("channel", "octaves", "octave_scale", "lr", "jitter", "zoom_steps")
                  if p.get(n) is not None}
            r = dream(net, inputs["image"], p["layer"][0], **kw, **common)
        out.update(image=r.image, history=[_plain_row(h) for h in r.history], stopped=r.stopped, message=r.message)
    except MiniVGGError as e:
        out["message"] = str(e)
    except KeyboardInterrupt:
        out.update(stopped="interrupted", message="interrupted")
    except MemoryError:
        out["message"] = "out of memory; use a smaller size"
    except Exception as e:  # a cell's failure is reported in its row, not as a traceback
        out["message"] = f"{type(e).__name__}: {e}"
    out["seconds"] = time.perf_counter() - t0
    return out


def _plain_row(row):
    return {k: float(v) if isinstance(v, (float, np.floating)) else v for k, v in row.items()}


def finished(result):
    """A result that counts as done (its image is the run's answer)."""
    return result["stopped"] in ("iterations", "tolerance", "diverged") and result["image"] is not None


def _limit_threads(n):
    """Keep ``n`` threads (numba, BLAS, minivgg's own pool) in this process, so that
    worker processes do not fight over the cores; returns a function that undoes it."""
    undo = []
    undo.append(options.push(num_threads=n))
    try:
        import numba

        before = numba.get_num_threads()
        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
        undo.append(lambda: numba.set_num_threads(before))
    except Exception:
        pass
    try:
        from threadpoolctl import threadpool_limits

        undo.append(threadpool_limits(n).restore_original_limits)
    except Exception:
        pass

    def restore():
        for f in reversed(undo):
            f()

    return restore


def _init_worker(threads):
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    _limit_threads(threads)


def default_workers():
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


def execute(cells, *, workers=1, scheduler=None, on_result=None, progress=None):
    """Run ``cells``; call ``on_result(result)`` in this process as each one finishes
    (in completion order) and ``progress(result)`` after it. workers == 1 runs them
    here, one after another; workers > 1 in that many local processes
    (concurrent.futures, "spawn"); ``scheduler`` an address: on that Dask cluster.
    Returns "done", or "interrupted" after Ctrl-C (finished cells were delivered)."""
    cells = list(cells)
    if not cells:
        return "done"

    def deliver(res):
        if on_result is not None:
            on_result(res)
        if progress is not None:
            progress(res)

    if scheduler:
        return _execute_dask(cells, scheduler, deliver)
    if workers <= 1:
        for cell in cells:
            res = run_cell(cell)
            if res["stopped"] in ("interrupted", "callback"):
                return "interrupted"
            deliver(res)
        return "done"
    return _execute_pool(cells, workers, deliver)


def _execute_pool(cells, workers, deliver):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cpus = os.cpu_count() or 1
    threads = max(1, cpus // workers)
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(threads,))
    try:
        futures = {pool.submit(run_cell, cell): cell for cell in cells}
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                res = _future_result(fut)
                res["key"] = res["key"] or futures[fut]["key"]
                deliver(res)
    except KeyboardInterrupt:
        for proc in list(getattr(pool, "_processes", {}).values()):
            with contextlib.suppress(Exception):
                proc.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        return "interrupted"
    pool.shutdown(wait=True)
    return "done"


def _future_result(fut):
    try:
        return fut.result()
    except Exception as e:  # a worker process died (e.g. killed for memory)
        return {"key": None, "image": None, "history": [], "stopped": "failed",
                "message": f"worker failed: {type(e).__name__}: {e}", "seconds": 0.0, "weights_source": None}


def _execute_dask(cells, address, deliver):
    try:
        from dask.distributed import Client, as_completed
    except ImportError:
        raise MiniVGGError("--scheduler needs Dask: pip install 'minivgg[dask]' (dask[distributed])") from None
    _check_reachable(address)
    try:
        client = Client(address, timeout="15s")
    except Exception as e:
        raise MiniVGGError(f"cannot reach the Dask scheduler at {address}: {type(e).__name__}: {e}") from None
    futures = []
    try:
        futures = [client.submit(run_cell, cell, pure=False, key=f"minivgg-{i}-{os.getpid()}-{time.time_ns()}")
                   for i, cell in enumerate(cells)]
        index = {f.key: cell for f, cell in zip(futures, cells)}
        for fut in as_completed(futures):
            try:
                res = fut.result()
            except Exception as e:
                res = {"key": index[fut.key]["key"], "image": None, "history": [], "stopped": "failed",
                       "message": f"Dask task failed: {type(e).__name__}: {e}", "seconds": 0.0,
                       "weights_source": None}
            deliver(res)
    except KeyboardInterrupt:
        with contextlib.suppress(Exception):
            client.cancel(futures)
        return "interrupted"
    finally:
        with contextlib.suppress(Exception):
            client.close()
    return "done"


def _check_reachable(address):
    """Fail fast (instead of after the client's timeout) when nothing listens at a
    tcp:// address."""
    import socket
    from urllib.parse import urlsplit

    if "://" not in address:
        address = "tcp://" + address
    parts = urlsplit(address)
    if parts.scheme != "tcp" or not parts.hostname or not parts.port:
        return
    try:
        socket.create_connection((parts.hostname, parts.port), timeout=10).close()
    except OSError as e:
        raise MiniVGGError(f"cannot reach the Dask scheduler at {address}: {e.strerror or e}") from None


def progress_bar(total, initial=0, desc="runs", quiet=False, unit="run"):
    """A tqdm bar on stderr (disabled by ``quiet``); ``update(result)`` advances it and
    shows the last run's final loss."""
    from tqdm import tqdm

    bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, disable=quiet, file=sys.stderr, leave=True,
               dynamic_ncols=True)

    def update(res):
        loss = res["history"][-1]["total"] if res.get("history") else float("nan")
        bar.set_postfix_str(f"{res.get('key') or ''} loss={loss:.3g}"[:60], refresh=False)
        bar.update(1)

    update.close = bar.close
    return update


# ------------------------------------------------------------------ files
def atomic_write(path, write):
    """``write(tmp)`` then rename to ``path`` (minivgg.image.atomic_write)."""
    from .image import atomic_write as aw

    return aw(path, write)


def write_csv(path, columns, rows):
    """Write ``rows`` (dicts) with a header of ``columns``, atomically."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(row.get(k)) for k in columns})

    return atomic_write(path, write)


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (tuple, list)):
        return "+".join(map(str, v))
    return v


def read_csv(path):
    """Rows of a CSV as dicts ([] when the file is missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def save_png(path, pil_image):
    """Save a PIL image as PNG, atomically."""
    return atomic_write(path, lambda tmp: pil_image.save(tmp, format="PNG", optimize=True))


def loss_summary(history):
    """The final row's loss terms (NaN when there is none) and the number of updates."""
    last = history[-1] if history else {}
    return {"iterations": int(last.get("iter", 0)) if history else 0,
            "total": float(last.get("total", float("nan"))), "content": float(last.get("content", float("nan"))),
            "style": float(last.get("style", float("nan"))), "tv": float(last.get("tv", float("nan")))}


# ------------------------------------------------------------------ drawing
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAINT = (120, 120, 120)
EMPTY = (225, 225, 225)
WARN = (170, 30, 30)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def font():
    from PIL import ImageFont

    return ImageFont.load_default()


def text_width(fnt, text):
    if not text:
        return 0
    box = fnt.getbbox(text)
    return box[2] - min(box[0], 0)


def line_height(fnt):
    return fnt.getbbox("Ag_|")[3] + 3


def wrap(fnt, text, width, seps=("+", " ", ",")):
    """Split ``text`` into lines no wider than ``width`` pixels, breaking after one of
    ``seps`` where possible (layer sets break after '+')."""
    lines = []
    for para in str(text).split("\n"):
        cur = ""
        tokens, tok = [], ""
        for ch in para:
            tok += ch
            if ch in seps:
                tokens.append(tok)
                tok = ""
        if tok:
            tokens.append(tok)
        for t in tokens:
            if cur and text_width(fnt, cur + t.rstrip()) > width:
                lines.append(cur.rstrip())
                cur = t.lstrip()
            else:
                cur += t
        lines.append(cur.rstrip())
    return lines


def fit(img, box):
    """A PIL image of ``img`` (uint8 H x W x 3) for a ``box``-pixel tile: shrunk with
    Lanczos so its longer side is ``box``, or enlarged by a whole factor with nearest
    neighbour (so the pixels of a small run stay visible, all the same size) to at
    most ``box``."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(np.asarray(img, np.uint8)))
    w, h = im.size
    if max(w, h) > box:
        s = box / max(w, h)
        return im.resize((max(1, int(round(w * s))), max(1, int(round(h * s)))), Image.LANCZOS)
    k = box // max(w, h)
    return im if k <= 1 else im.resize((w * k, h * k), Image.NEAREST)


def default_box(size):
    """The tile size for runs of ``size`` pixels: the size itself between 128 and 256,
    256 above, and small sizes enlarged by a whole factor to reach 128 or just under."""
    size = int(size)
    if size >= 256:
        return 256
    return size if size >= 128 else size * max(1, 128 // size)


class Tile:
    """One cell of a contact sheet: an image (or None for an empty slot) and caption
    lines; ``marks`` a colour for the caption (e.g. a warning)."""

    def __init__(self, image, caption=(), colour=INK):
        self.image, self.caption, self.colour = image, list(caption), colour


def contact_sheet(rows, *, box=128, title=(), col_headers=None, corner="", note=None, pad=6):
    """A labeled grid as a PIL image.

    rows: list of (row_label, [Tile | None, ...]). Every image is scaled so its longer
    side is ``box`` and centred in a slot as large as the largest scaled image (so a
    sheet of landscape images has landscape slots); captions go below each slot, row
    labels at the left (wrapped), optional column headers on top, title lines above
    everything and an optional ``note`` line (red) under the title. Returns (image,
    layout), layout = {"cell": (w, h), "origin": (x0, y0), "slot": (sw, sh)}: the slot
    of tile (r, c) starts at (x0 + c * w, y0 + r * h)."""
    from PIL import Image, ImageDraw

    fnt = font()
    lh = line_height(fnt)
    tiles_all = [t for _l, ts in rows for t in ts if t is not None]
    scaled = {id(t): fit(t.image, box) for t in tiles_all if t.image is not None}
    slot_w = max([im.size[0] for im in scaled.values()] + [box if not scaled else 16])
    slot_h = max([im.size[1] for im in scaled.values()] + [box if not scaled else 16])
    ncols = max((len(t) for _l, t in rows), default=0)
    cap_lines = max([len(t.caption) for t in tiles_all] + [0])
    cap_width = max([text_width(fnt, line) for t in tiles_all for line in t.caption] + [0])
    cell_w = max(slot_w, cap_width) + 2 * pad
    cell_h = slot_h + cap_lines * lh + 2 * pad + 2
    label_lines = [wrap(fnt, label, 150) for label, _t in rows]
    label_w = max([text_width(fnt, line) for ls in label_lines for line in ls] + [0]) + 2 * pad
    header_lines = [wrap(fnt, h, cell_w - 2 * pad) for h in (col_headers or [])]
    header_h = (max(len(h) for h in header_lines) * lh + pad) if header_lines else 0
    title = list(title)
    title_h = (len(title) + (1 if note else 0)) * lh + (pad if title or note else 0)
    width = max(label_w + ncols * cell_w + pad,
                max([text_width(fnt, t) for t in title + [note or ""]] + [0]) + 2 * pad)
    x0, y0 = label_w, pad + title_h + header_h
    height = y0 + len(rows) * cell_h + pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = pad
    for line in title:
        draw.text((pad, y), line, fill=INK, font=fnt)
        y += lh
    if note:
        draw.text((pad, y), note, fill=WARN, font=fnt)
    if corner:
        for i, line in enumerate(wrap(fnt, corner, label_w - 2 * pad)[-max(1, header_h // lh):]):
            draw.text((pad, y0 - header_h + i * lh), line, fill=FAINT, font=fnt)
    for c, lines in enumerate(header_lines):
        for i, line in enumerate(lines):
            tx = x0 + c * cell_w + (cell_w - text_width(fnt, line)) // 2
            draw.text((tx, y0 - header_h + i * lh), line, fill=INK, font=fnt)
    for r, ((_label, tiles), lines) in enumerate(zip(rows, label_lines)):
        ry = y0 + r * cell_h
        ty = ry + pad + (slot_h - len(lines) * lh) // 2
        for i, line in enumerate(lines):
            draw.text((pad, ty + i * lh), line, fill=INK, font=fnt)
        for c, tile in enumerate(tiles):
            if tile is None:
                continue
            cx = x0 + c * cell_w
            bx, by = cx + (cell_w - slot_w) // 2, ry + pad
            if tile.image is None:
                draw.rectangle([bx, by, bx + slot_w - 1, by + slot_h - 1], fill=EMPTY)
            else:
                im = scaled[id(tile)]
                sheet.paste(im, (bx + (slot_w - im.size[0]) // 2, by + (slot_h - im.size[1]) // 2))
            for i, line in enumerate(tile.caption):
                tx = cx + (cell_w - text_width(fnt, line)) // 2
                draw.text((tx, by + slot_h + 2 + i * lh), line, fill=tile.colour, font=fnt)
    return sheet, {"cell": (cell_w, cell_h), "origin": (x0 + (cell_w - slot_w) // 2, y0 + pad),
                   "slot": (slot_w, slot_h)}


def loss_curves(panels, *, panel_size=(360, 240), title=""):
    """Loss curves as a PIL image: one panel per (panel_title, [(label, iters, values)]);
    log scale on the loss axis when every value is positive, linear otherwise."""
    from PIL import Image, ImageDraw

    fnt = font()
    lh = line_height(fnt)
    pw, ph = panel_size
    left, right, top, bottom = 62, 12, lh + 8, 2 * lh + 10
    legend_lines = max([len(curves) for _t, curves in panels] + [0])
    legend_h = min(legend_lines, 24) * lh + 6
    title_h = lh + 6 if title else 0
    width = max(1, len(panels)) * (pw + left + right)
    height = title_h + top + ph + bottom + legend_h
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill=INK, font=fnt)
    for k, (ptitle, curves) in enumerate(panels):
        ox, oy = k * (pw + left + right) + left, title_h + top
        draw.text((ox, oy - lh - 2), ptitle, fill=INK, font=fnt)
        draw.rectangle([ox, oy, ox + pw, oy + ph], outline=FAINT)
        pts = [(float(i), float(v)) for _l, xs, ys in curves for i, v in zip(xs, ys) if math.isfinite(float(v))]
        if not pts:
            draw.text((ox + 8, oy + 8), "no data", fill=FAINT, font=fnt)
            continue
        log = all(v > 0 for _i, v in pts)
        tr = (lambda v: math.log10(v)) if log else (lambda v: v)
        xmax = max(max(i for i, _v in pts), 1.0)
        lo, hi = min(tr(v) for _i, v in pts), max(tr(v) for _i, v in pts)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        sx = lambda i: ox + i / xmax * pw
        sy = lambda v: oy + ph - (tr(v) - lo) / (hi - lo) * ph
        # axis ticks: the ends of each axis, and the powers of ten between on a log axis
        ticks = [10 ** e for e in range(math.ceil(lo), math.floor(hi) + 1)] if log else []
        if len(ticks) > 6:
            ticks = ticks[:: math.ceil(len(ticks) / 6)]
        if len(ticks) < 2:
            ticks = [10 ** lo, 10 ** hi] if log else [lo, hi]
        for t in ticks:
            y = sy(t)
            draw.line([ox - 3, y, ox, y], fill=FAINT)
            lab = f"{t:.2g}"
            draw.text((ox - 5 - text_width(fnt, lab), y - lh // 2), lab, fill=FAINT, font=fnt)
        for t in (0, int(xmax)):
            x = sx(t)
            draw.line([x, oy + ph, x, oy + ph + 3], fill=FAINT)
            draw.text((x - text_width(fnt, str(t)) // 2, oy + ph + 4), str(t), fill=FAINT, font=fnt)
        axis = "iteration" + ("   (loss on a log scale)" if log else "")
        draw.text((ox + (pw - text_width(fnt, axis)) // 2, oy + ph + 4 + lh), axis, fill=FAINT, font=fnt)
        for j, (label, xs, ys) in enumerate(curves):
            colour = PALETTE[j % len(PALETTE)]
            line = [(sx(float(i)), sy(float(v))) for i, v in zip(xs, ys) if math.isfinite(float(v))
                    and (not log or v > 0)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            elif line:
                draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=colour)
            if j < 24:
                ly = oy + ph + bottom + j * lh
                draw.line([ox, ly + lh // 2, ox + 16, ly + lh // 2], fill=colour, width=3)
                draw.text((ox + 22, ly), label if j < 23 or len(curves) == 24 else f"... {len(curves) - 23} more",
                          fill=INK, font=fnt)
    return img


def fmt_loss(v):
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3g}"


def fmt_seconds(s):
    return f"{s:.1f} s" if s < 100 else f"{s / 60:.1f} min"


def random_note(source, arch):
    """The line that says results come from random weights (None when they do not)."""
    if source == "random" or str(source).startswith("random"):
        return (f"RANDOM WEIGHTS: no pretrained {arch} found; these show what an untrained VGG keeps. "
                f"Fetch weights: python -m weights_tools fetch {arch}-caffe")
    return None
