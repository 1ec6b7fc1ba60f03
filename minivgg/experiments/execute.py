"""Running cells: one in this process (:func:`run_cell`), many in local worker
processes or on a Dask cluster (:func:`execute`), with a progress bar.

A cell is a plain dict (picklable, so it can travel to a worker process or a Dask
worker)::

    {"key": "style_layers=relu1_1__iters=200",   # unique name inside the experiment
     "method": "style" | "texture" | "invert" | "dream",
     "params": {...},            # every parameter of params.PARAMS[method], None = method default
     "inputs": {"content": img, "style": [img, ...], "image": img},  # uint8 RGB arrays
     "weights": None | path, "device": "cpu" | "gpu"}

:func:`run_cell` runs one and returns ``{"key", "image", "history", "stopped",
"message", "seconds", "weights_source"}``. The inputs travel as arrays (not paths) so
that a remote worker needs no access to the user's files; a weights path must exist
where the cell runs (``None``: the worker's own cache, else random weights).
"""

import contextlib
import io
import os
import sys
import threading
import time

import numpy as np

from .. import options
from ..errors import MiniVGGError
from ..image import load_input  # noqa: F401  (atlas, sweep and the figures load through execute)

_LOCAL = threading.local()  # one Net per thread: a Net caches activations between forward and backward


def _net(arch, pooling, weights, device):
    from .. import load_vgg

    cache = getattr(_LOCAL, "nets", None)
    if cache is None:
        cache = _LOCAL.nets = {}
    key = (arch, pooling, None if weights is None else os.fspath(weights), device)
    if key not in cache:
        # the caller reports random weights once; keep every worker from repeating it
        with contextlib.redirect_stderr(io.StringIO()):
            cache[key] = load_vgg(arch, weights=weights, pooling=pooling, device=device)
    return cache[key]


def check_device(device):
    """MiniVGGError up front when ``device`` cannot be used (e.g. no GPU)."""
    try:
        from ..backend import check_device as check
    except ImportError:  # pragma: no cover
        return
    check(device)


def weights_source(arch, weights):
    """Where the weights of ``arch`` come from: the path, or ``"random"`` when none is
    given and none is found (see minivgg.weights.default_weights_path)."""
    if weights is not None:
        return os.fspath(weights)
    from ..weights import default_weights_path

    path = default_weights_path(arch)
    return "random" if path is None else path


def run_cell(cell, callback=None):
    """Run one cell (see the module docstring) and return its result dict. Method
    errors are returned as ``stopped == "failed"`` with the message, so that one bad
    cell does not stop a sweep. KeyboardInterrupt gives ``stopped == "interrupted"``."""
    from ..methods import dream, invert, style_transfer, synthesize_texture

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
            from ..methods.control import sweep_kwargs

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
            kw.update(sweep_kwargs(p))
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
    undo = [options.push(num_threads=n)]
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


def guarded(fn, args):
    """``fn(args)`` with the commands' error boundary: a MiniVGGError is one line and exit 2,
    Ctrl-C exit 130 (for ``python -m minivgg.experiments.atlas`` / ``.sweep``)."""
    try:
        return fn(args)
    except MiniVGGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
