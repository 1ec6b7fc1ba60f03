"""One job, in its own process: ``python -m minivgg.serve.worker JOB_DIR``.

Runs the job's command exactly as ``python -m minivgg <method> <argv>`` would
(``minivgg.cli.main``, in the job's folder), with one difference: the CLI's
``MethodRunner`` is replaced in this process by :class:`ProgressRunner`, whose
callback also reports every log row and, every ``preview_seconds``, writes the
image being optimized to ``current.png`` (atomically). ``atlas``, whose command runs
its runs without a per-iteration callback, is run here from its public steps
(``atlas.plan``, ``execute.run_cell``, ``atlas.write_outputs``) so that each run
reports its rows and image too, and the contact sheet is rewritten after each run.

Protocol with the server: JSON lines on the original stdout (``{"row": {...}}``,
``{"image": iter}``, ``{"runs": n}``); anything else the job prints goes to stderr,
which the server keeps in ``worker.log``. A line ``stop`` on stdin, or stdin closing
(the server is gone), asks the job to stop at its next iteration: the CLI then writes
the current image and the log and exits with 130.
"""

import json
import os
import sys
import threading
import time

STOP = threading.Event()
CURRENT = "current.png"


class Reporter:
    def __init__(self, stream, preview_seconds):
        self.stream = stream
        self.preview_seconds = float(preview_seconds)
        self.last = None
        self.lock = threading.Lock()

    def send(self, obj):
        with self.lock:
            self.stream.write(json.dumps(obj, allow_nan=True) + "\n")
            self.stream.flush()

    def row(self, rec, extra=None):
        row = {k: v for k, v in rec.items() if k not in ("x", "render")}
        row = {k: (float(v) if hasattr(v, "__float__") and not isinstance(v, (int, str)) else v)
               for k, v in row.items()}
        if extra:
            row.update(extra)
        self.send({"row": row})
        now = time.monotonic()
        if rec.get("render") is not None and (self.last is None or now - self.last >= self.preview_seconds):
            from ..image import save_image

            save_image(CURRENT, rec["render"](rec["x"]))
            self.last = time.monotonic()
            self.send({"image": row.get("step", row.get("iter"))})


def _watch_stdin():
    for line in sys.stdin:
        if line.strip() == "stop":
            break
    STOP.set()


def _runner_class(reporter):
    from ..cli import common

    class ProgressRunner(common.MethodRunner):
        """The CLI's runner, reporting each row and the live image to the server."""

        def callback(self, rec):
            self.optimizing = False  # our reporting is not a point to interrupt
            reporter.row(rec)
            if STOP.is_set():
                self.interrupted = True
            return super().callback(rec)

    return ProgressRunner


def run_command(method, argv, reporter):
    from .. import cli
    from ..cli import common

    if not isinstance(common.MethodRunner, type):  # pragma: no cover - the CLI changed shape
        raise RuntimeError("minivgg.cli.common.MethodRunner is not a class")
    common.MethodRunner = _runner_class(reporter)  # the commands look it up there when they run
    return cli.main([method] + list(argv))


def run_atlas(argv, reporter):
    """The atlas command's steps, run by run: rows and live images per run, the sheet
    rewritten after each one; 130 when stopped, 2 with ``error:`` on a bad input."""
    from .. import cli
    from ..experiments import atlas, execute, pictures
    from ..errors import MiniVGGError

    parser = cli.build_parser()
    args = parser.parse_args(["atlas"] + list(argv) + ["--workers", "1", "--quiet"])
    try:
        cells, meta = atlas.plan(args)
    except MiniVGGError as e:
        sys.stderr.write(f"error: {' '.join(str(e).split())}\n")
        return cli.EXIT_ERROR
    note = pictures.random_note(meta["source"], args.arch)
    if note:
        sys.stderr.write(f"note: {note}\n")
    reporter.send({"runs": len(cells), "rows": len(cells) * (args.iters + 1)})
    results, step = {}, [0]
    for k, cell in enumerate(cells, 1):  # the sheet's order: content row first
        if STOP.is_set():
            break

        def callback(rec, k=k, key=cell["key"]):
            reporter.row(rec, {"run": k, "key": key, "step": step[0]})
            step[0] += 1
            return STOP.is_set()

        res = execute.run_cell(cell, callback=callback)
        results[res["key"]] = res
        atlas.write_outputs(args, cells, meta, results, note)
        reporter.send({"image": step[0], "sheet": k})
    paths = atlas.write_outputs(args, cells, meta, results, note)
    failed = [r for r in results.values() if r["stopped"] == "failed"]
    sys.stderr.write(f"minivgg: wrote {', '.join(paths)} ({len(results)} of {len(cells)} runs)\n")
    if STOP.is_set():
        sys.stderr.write("minivgg: interrupted; the sheet shows the runs that finished\n")
        return cli.EXIT_INTERRUPTED
    if failed:
        first = failed[0]
        sys.stderr.write(f"error: {len(failed)} of {len(cells)} runs failed; {first['key']}: "
                         f"{' '.join(first['message'].split())}\n")
        return cli.EXIT_ERROR
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m minivgg.serve.worker JOB_DIR\n")
        return 2
    os.chdir(argv[0])
    with open("job.json") as f:
        job = json.load(f)
    # the protocol keeps the real stdout; whatever else writes to stdout lands in the log
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threading.Thread(target=_watch_stdin, daemon=True).start()
    reporter = Reporter(stream, job.get("preview_seconds", 0.5))
    if job["method"] == "atlas":
        return run_atlas(job["argv"], reporter)
    return run_command(job["method"], job["argv"], reporter)


if __name__ == "__main__":
    sys.exit(main())
