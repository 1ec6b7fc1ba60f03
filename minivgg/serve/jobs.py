"""Jobs and their queue: one optimization at a time on the device, the others
waiting in order; each job runs in its own worker process (``minivgg.serve.worker``)
and lives in its own folder under the server's ``--out``:

    OUT/<id>/job.json       what the worker runs (method, argv) and when it was made
    OUT/<id>/settings.json  every parameter of the command, defaults included
    OUT/<id>/command.txt    the equivalent command line (run it in that folder)
    OUT/<id>/content.png, style-1.png, image.png, init.png   the uploaded images
    OUT/<id>/current.png    the image being optimized (while it runs)
    OUT/<id>/result.png, log.csv, log.png   the result, its log and loss curves
    OUT/<id>/status.json    the job's final state and message
    OUT/<id>/worker.log     what the job printed (progress, warnings, its error)

A job's states: queued -> running -> done | cancelled | failed (or queued ->
cancelled). Nothing a job does can stop the server: its errors end that job as
failed with its one-line message; a job that was not finished when the server
stopped is listed as failed when the server starts again on the same folder.
"""

import collections
import csv
import json
import os
import re
import secrets
import subprocess
import sys
import threading
import time

from .params import LOG_NAME, OUT_NAME, ParamError

FINAL = ("done", "cancelled", "failed")
STOP_GRACE_SECONDS = 60.0  # after "stop", the current iteration may still have to finish
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")
ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


def _write_json(path, obj):
    from ..image import atomic_write

    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1, default=str)

    atomic_write(path, write)


def rows_csv(rows):
    """Log rows as the CLI's CSV (minivgg.cli.common.write_log's columns and number format)."""
    from ..cli.common import log_csv

    return log_csv(rows)


def _read_rows(path):
    rows = []
    try:
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                row = {}
                for k, v in r.items():
                    try:
                        row[k] = int(v) if k in ("iter", "run", "step") else float(v)
                    except (TypeError, ValueError):
                        row[k] = v
                rows.append(row)
    except OSError:
        pass
    return rows


class Job:
    """One job: its folder, state, log rows and live-image counter (``lock`` guards them)."""

    def __init__(self, id, folder, method, command, weights, device, expected_rows=None, created=None):
        self.id, self.dir, self.method = id, folder, method
        self.command, self.weights, self.device = command, weights, device
        self.expected_rows = expected_rows
        self.state = "queued"
        self.message = ""
        self.rows = []
        self.image_iter = None
        self.image_version = 0
        self.runs = None
        self.created = created if created is not None else time.time()
        self.started = self.finished = None
        self.stop_requested = False
        self.proc = None
        self.lock = threading.Lock()
        self.save_lock = threading.Lock()  # one writer of status.json at a time (one temporary name per process)
        self.done_event = threading.Event()

    def path(self, name):
        return os.path.join(self.dir, name)

    def files(self):
        """The job's files (names), for the API: only plain files with plain names."""
        try:
            names = sorted(os.listdir(self.dir))
        except OSError:
            return []
        return [n for n in names if SAFE_NAME.match(n) and os.path.isfile(os.path.join(self.dir, n))]

    def status(self, position=None):
        with self.lock:
            last = dict(self.rows[-1]) if self.rows else None
            iteration = last.get("step", last.get("iter")) if last else None
            return {"id": self.id, "method": self.method, "state": self.state, "position": position,
                    "iteration": iteration, "rows": len(self.rows), "expected_rows": self.expected_rows,
                    "losses": last, "message": self.message, "image_iter": self.image_iter,
                    "image_version": self.image_version, "runs": self.runs, "command": self.command,
                    "weights": self.weights, "device": self.device, "created": self.created,
                    "started": self.started, "finished": self.finished, "files": self.files()}

    def save_status(self):
        st = self.status()
        st.pop("files", None)
        with self.save_lock:
            _write_json(self.path("status.json"), st)


class JobQueue:
    """The jobs of one server: ``submit``, ``cancel``, ``position``, and one runner
    thread per device that starts the waiting jobs in order, one at a time."""

    def __init__(self, out, device="cpu", preview_seconds=0.5, max_queue=100):
        self.out = os.path.abspath(out)
        os.makedirs(self.out, exist_ok=True)
        self.device = device
        self.preview_seconds = float(preview_seconds)
        self.max_queue = int(max_queue)
        self.jobs = {}
        self.waiting = collections.deque()
        self.cond = threading.Condition()
        self.closed = False
        self._restore()
        self.thread = threading.Thread(target=self._loop, name=f"minivgg-serve-{device}", daemon=True)
        self.thread.start()

    # ---------------------------------------------------------------- jobs
    def new_id(self):
        return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"

    def get(self, job_id):
        if not isinstance(job_id, str) or not ID_RE.match(job_id):
            return None
        return self.jobs.get(job_id)

    def position(self, job):
        """1 for the next job to start, 2 after it, ...; 0 while running; None when finished."""
        with self.cond:
            if job.state == "running":
                return 0
            try:
                return self.waiting.index(job) + 1
            except ValueError:
                return None

    def status(self, job):
        return job.status(self.position(job))

    def list(self):
        with self.cond:
            jobs = sorted(self.jobs.values(), key=lambda j: j.created, reverse=True)
        return [self.status(j) for j in jobs]

    def check_room(self):
        with self.cond:
            if self.closed:
                raise ParamError("the server is stopping", 503)
            if len(self.waiting) >= self.max_queue:
                raise ParamError(f"{len(self.waiting)} jobs are waiting already, this server's most "
                                 f"(minivgg serve --max-queue); try again later", 429)

    def submit(self, job, worker_job):
        """Queue ``job``; ``worker_job`` is what job.json holds for the worker."""
        _write_json(job.path("job.json"), dict(worker_job, preview_seconds=self.preview_seconds,
                                               id=job.id, created=job.created, command=job.command,
                                               weights=job.weights, device=job.device,
                                               expected_rows=job.expected_rows))
        with self.cond:
            self.check_room()
            self.jobs[job.id] = job
            self.waiting.append(job)
            job.save_status()
            self.cond.notify_all()
        return job

    def cancel(self, job):
        """Stop a job: a waiting one is cancelled at once; a running one stops at its next
        iteration and keeps its current image and log."""
        with self.cond:
            if job in self.waiting:
                self.waiting.remove(job)
                self._finish(job, "cancelled", "cancelled before it started")
                return
        with job.lock:
            if job.state != "running" or job.stop_requested:
                return
            job.stop_requested = True
            proc = job.proc
        if proc is not None:
            self._send_stop(proc)
            timer = threading.Timer(STOP_GRACE_SECONDS, self._kill_if_alive, args=(proc,))
            timer.daemon = True  # the server may exit before it fires
            timer.start()

    @staticmethod
    def _send_stop(proc):
        try:
            proc.stdin.write("stop\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            pass

    @staticmethod
    def _kill_if_alive(proc):
        if proc.poll() is None:
            proc.kill()

    def close(self, wait=10.0):
        """Stop the server's jobs: the waiting ones are cancelled, the running one is
        asked to stop (and killed after ``wait`` seconds)."""
        with self.cond:
            self.closed = True
            waiting = list(self.waiting)
            self.waiting.clear()
            running = [j for j in self.jobs.values() if j.state == "running"]
            self.cond.notify_all()
        for job in waiting:
            self._finish(job, "cancelled", "the server stopped before it started")
        for job in running:
            with job.lock:
                job.stop_requested = True
                proc = job.proc
            if proc is not None:
                self._send_stop(proc)
                try:
                    proc.wait(wait)
                except subprocess.TimeoutExpired:
                    proc.kill()
            job.done_event.wait(wait)

    # ---------------------------------------------------------------- running
    def _loop(self):
        while True:
            with self.cond:
                while not self.waiting and not self.closed:
                    self.cond.wait()
                if self.closed:
                    return
                job = self.waiting.popleft()
                with job.lock:
                    job.state = "running"
                    job.started = time.time()
            try:
                self._run(job)
            except Exception as e:  # the server outlives anything a job does
                self._finish(job, "failed", f"the server could not run this job ({type(e).__name__}: {e})")

    def _worker_env(self):
        import minivgg

        env = dict(os.environ)
        # the worker imports the same minivgg as this server, wherever it is run from
        root = os.path.dirname(os.path.dirname(os.path.abspath(minivgg.__file__)))
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env

    def _run(self, job):
        job.save_status()
        with open(job.path("worker.log"), "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "minivgg.serve.worker", job.dir], cwd=job.dir,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
                                    bufsize=1, env=self._worker_env(), start_new_session=True)
        with job.lock:
            job.proc = proc
            stop = job.stop_requested
        if stop:
            self._send_stop(proc)
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            with job.lock:
                if "row" in msg:
                    job.rows.append(msg["row"])
                if "image" in msg:
                    job.image_iter = msg["image"]
                    job.image_version += 1
                if "runs" in msg:
                    job.runs = msg["runs"]
                    job.expected_rows = msg.get("rows")
        rc = proc.wait()
        try:
            proc.stdin.close()
        except OSError:
            pass
        state, message = self._outcome(job, rc)
        if job.method == "atlas" and job.rows:
            self._write_rows_log(job)
        self._finish(job, state, message)

    def _write_rows_log(self, job):
        from ..image import atomic_write

        text = rows_csv(job.rows)

        def write(tmp):
            with open(tmp, "w", newline="") as f:
                f.write(text)

        atomic_write(job.path(LOG_NAME), write)

    def _outcome(self, job, rc):
        lines = []
        try:
            with open(job.path("worker.log"), errors="replace") as f:
                lines = [l.strip() for l in f.read().replace("\r", "\n").split("\n") if l.strip()]
        except OSError:
            pass
        errors = [l[len("error: "):] for l in lines if l.startswith("error: ")]
        notes = [l for l in lines if l.startswith("minivgg: ") and "warning" not in l]
        if rc == 0:
            return "done", notes[-1][len("minivgg: "):] if notes else "done"
        if rc == 130 or (job.stop_requested and rc in (-9, -15)):
            kept = " (current image and log kept)" if os.path.exists(job.path(OUT_NAME)) else ""
            return "cancelled", f"stopped{kept}"
        if errors:
            return "failed", errors[-1]
        if rc < 0:
            return "failed", f"the job's process was killed (signal {-rc}; out of memory?)"
        return "failed", (lines[-1] if lines else f"the job's process exited with status {rc}")

    def _finish(self, job, state, message):
        with job.lock:
            job.state, job.message = state, " ".join(str(message).split())
            job.finished = time.time()
            job.proc = None
        try:
            job.save_status()
        except OSError:
            pass
        job.done_event.set()

    # ---------------------------------------------------------------- restart
    def _restore(self):
        """List the jobs already in the folder (a job left unfinished: failed)."""
        for name in sorted(os.listdir(self.out)):
            folder = os.path.join(self.out, name)
            if not ID_RE.match(name) or not os.path.isfile(os.path.join(folder, "job.json")):
                continue
            try:
                with open(os.path.join(folder, "job.json")) as f:
                    spec = json.load(f)
                st = {}
                if os.path.isfile(os.path.join(folder, "status.json")):
                    with open(os.path.join(folder, "status.json")) as f:
                        st = json.load(f)
            except (OSError, ValueError):
                continue
            job = Job(name, folder, spec.get("method", "?"), spec.get("command", ""), spec.get("weights"),
                      spec.get("device", "cpu"), spec.get("expected_rows"), spec.get("created"))
            job.rows = _read_rows(os.path.join(folder, LOG_NAME))
            job.started, job.finished = st.get("started"), st.get("finished")
            if st.get("state") in FINAL:
                job.state, job.message = st["state"], st.get("message", "")
            else:
                job.state, job.message = "failed", "the server stopped before this job finished"
                job.finished = job.finished or time.time()
                job.save_status()
            if os.path.exists(job.path(OUT_NAME)) or os.path.exists(job.path("current.png")):
                job.image_version = 1
            job.done_event.set()
            self.jobs[name] = job
