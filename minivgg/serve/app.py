"""The web server: a Starlette application on uvicorn (docs/serve.md has the API).

Routes (every error is a JSON body ``{"error": "..."}`` with a 4xx status):

    GET  /                         the page (static/index.html)
    GET  /api/info                 methods and their options (the CLI's), layers, weights, limits
    GET  /api/jobs                 every job's status, newest first
    POST /api/jobs                 create a job (multipart form) -> 201 {"id", "state", "position", ...}
    GET  /api/jobs/{id}            the job's status
    GET  /api/jobs/{id}/rows?since=N   its log rows from row N (the page's live curves)
    GET  /api/jobs/{id}/image      the current image (PNG): the result once finished
    GET  /api/jobs/{id}/log        the log (CSV)
    GET  /api/jobs/{id}/command    the equivalent command line (text)
    GET  /api/jobs/{id}/files/{name}   one of the files the status lists
    POST /api/jobs/{id}/cancel     stop it (a waiting job is cancelled, a running one keeps its image);
    DELETE /api/jobs/{id}          the same (the job and its files stay)
"""

import contextlib
import ipaddress
import math
import os
import socket
import sys
from importlib import resources

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from ..errors import MiniVGGError
from . import params as P
from .jobs import FINAL, Job, JobQueue, rows_csv

MAX_FILES = 16
MAX_FIELDS = 100
DRAIN_LIMIT = 10  # an oversized request is read and dropped up to this many limits


class Settings:
    """What the server was started with (the serve command's options)."""

    def __init__(self, out="minivgg-serve", weights=None, device="cpu", max_upload_mb=20.0, max_pixels=4096 * 4096,
                 max_size=1024, max_queue=100, preview_seconds=0.5):
        self.out, self.weights, self.device = out, weights, device
        self.max_upload = int(max_upload_mb * 1e6)
        self.max_pixels, self.max_size, self.max_queue = int(max_pixels), int(max_size), int(max_queue)
        self.preview_seconds = float(preview_seconds)


class _JSON(JSONResponse):
    """JSON with a diverged run's NaN / inf losses as null (JSON has no NaN)."""

    def render(self, content):
        return super().render(_finite(content))


def _finite(v):
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def _error(message, status=400):
    return JSONResponse({"error": " ".join(str(message).split())}, status_code=status)


def _static(name):
    return resources.files("minivgg.serve").joinpath("static", name)


def weights_in_use(arch, weights):
    """{"arch", "source": the file or "random"} for jobs of ``arch`` on this server;
    source None (and a "note") when the server's --weights hold the other network, so
    that jobs of ``arch`` cannot run here."""
    from ..experiments.execute import weights_source
    from ..weights import file_arch

    held = file_arch(weights) if weights else None
    if held is not None and held != arch:
        return {"arch": arch, "source": None, "note": f"the server's weights ({weights}) hold {held}, not {arch}"}
    return {"arch": arch, "source": weights_source(arch, weights)}


def archs_in_use(weights):
    """{arch: weights_in_use(arch, weights)} and the arch a job gets when it names none
    (minivgg.weights.arch_for: the server's weights file's, else the cached weights')."""
    from ..weights import arch_for

    return {a: weights_in_use(a, weights) for a in ("vgg16", "vgg19")}, arch_for(weights)


def create_app(settings):
    queue = JobQueue(settings.out, device=settings.device, preview_seconds=settings.preview_seconds,
                     max_queue=settings.max_queue)

    def job_or_404(request):
        job = queue.get(request.path_params["id"])
        if job is None:
            raise _NotFound(f"no job {request.path_params['id']!r}")
        return job

    async def page(request):
        return Response(_static("index.html").read_bytes(), media_type="text/html; charset=utf-8",
                        headers={"Cache-Control": "no-store"})

    async def static(request):
        name = request.path_params["name"]
        types = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
        if name not in types:  # a fixed list: no client path reaches the file system
            return _error(f"no static file {name!r}", 404)
        return Response(_static(name).read_bytes(), media_type=types[name], headers={"Cache-Control": "no-store"})

    async def info(request):
        from .. import __version__
        from ..vgg import layer_names

        archs, default_arch = archs_in_use(settings.weights)
        return _JSON({
            "version": __version__, "device": settings.device, "methods": list(P.METHODS),
            "options": {m: P.describe(m) for m in P.METHODS},
            "archs": {a: {"layers": layer_names(a), "weights": w["source"], "note": w.get("note")}
                      for a, w in archs.items()},
            "default_arch": default_arch,
            "samples": P.sample_names(),
            "limits": {"max_upload_bytes": settings.max_upload, "max_pixels": settings.max_pixels,
                       "max_size": settings.max_size, "max_queue": settings.max_queue},
        })

    async def list_jobs(request):
        return _JSON({"jobs": queue.list()})

    async def create(request):
        too_big = (f"request is over this server's limit of {settings.max_upload} bytes (minivgg serve "
                   f"--max-upload-mb)")
        length = request.headers.get("content-length")
        body, over = bytearray(), length is not None and length.isdigit() and int(length) > settings.max_upload
        seen = 0
        async for chunk in request.stream():
            seen += len(chunk)
            if not over:
                body += chunk
                over = len(body) > settings.max_upload
            if over:
                body = bytearray()
                if seen > DRAIN_LIMIT * settings.max_upload:
                    break  # past this, the client may see the connection closed before the reply
        if over:  # read (and dropped) first, so that the client, still sending, gets the reply
            return _error(too_big, 413)
        body = bytes(body)

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        replay = Request(request.scope, receive)
        ctype = request.headers.get("content-type", "")
        if ctype.startswith("application/json"):  # {"method": "texture", "image": "sample:chelsea", "size": 64}
            try:
                fields = _json_fields(body)
            except ValueError as e:
                return _error(f"cannot read the JSON body ({e})", 400)
            return await _submit(fields)
        if not (ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded")):
            return _error("send the job as a form: multipart/form-data (curl -F), url-encoded, or a JSON object "
                          "without images", 415)
        try:
            form = await replay.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
        except Exception as e:  # MultiPartException and friends: a malformed body
            return _error(f"cannot read the form ({e})", 400)
        fields = []
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields.append((key, value))
            else:
                data = await value.read()
                option = "--" + key.lstrip("-").replace("_", "-")
                fields.append((key, P.Upload(option, data, value.filename or "")))
        await form.close()
        return await _submit(fields)

    async def _submit(fields):
        try:
            status = await run_in_threadpool(_create_job, queue, settings, fields)
        except P.ParamError as e:
            return _error(e, e.status)
        except MiniVGGError as e:
            return _error(e, 400)
        return _JSON(status, status_code=201)

    async def job_status(request):
        return _JSON(queue.status(job_or_404(request)))

    async def job_rows(request):
        job = job_or_404(request)
        try:
            since = max(0, int(request.query_params.get("since", "0")))
        except ValueError:
            return _error("since: expected a row number", 400)
        with job.lock:
            rows = job.rows[since:]
            n = len(job.rows)
        return _JSON({"since": since, "rows": rows, "next": n, "state": job.state})

    async def job_image(request):
        job = job_or_404(request)
        for name in ((P.OUT_NAME, "current.png") if job.state in FINAL else ("current.png", P.OUT_NAME)):
            try:
                with open(job.path(name), "rb") as f:  # files are renamed into place whole
                    data = f.read()
            except OSError:
                continue
            return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})
        return _error(f"job {job.id} has no image yet (state {job.state})", 404)

    async def job_log(request):
        job = job_or_404(request)
        with job.lock:
            final, rows = job.state in FINAL, list(job.rows)
        if final and os.path.isfile(job.path(P.LOG_NAME)):
            return FileResponse(job.path(P.LOG_NAME), media_type="text/csv", filename=f"{job.id}-log.csv")
        if not rows:
            return _error(f"job {job.id} has no log rows yet (state {job.state})", 404)
        return Response(rows_csv(rows), media_type="text/csv",
                        headers={"Content-Disposition": f'attachment; filename="{job.id}-log.csv"'})

    async def job_command(request):
        job = job_or_404(request)
        return PlainTextResponse(job.command + "\n")

    async def job_file(request):
        job = job_or_404(request)
        wanted = request.path_params["name"]
        names = job.files()
        if wanted not in names:  # only a name the server listed; never the client's path
            return _error(f"job {job.id} has no file {wanted!r}; its files: {', '.join(names)}", 404)
        name = names[names.index(wanted)]
        return FileResponse(job.path(name), filename=f"{job.id}-{name}")

    async def cancel(request):
        job = job_or_404(request)
        await run_in_threadpool(queue.cancel, job)
        return _JSON(queue.status(job))

    async def not_found(request, exc):
        return _error(getattr(exc, "detail", None) or str(exc) or "not found", getattr(exc, "status_code", 404))

    async def server_error(request, exc):  # a bug in a handler: a JSON 500, the server goes on
        return _error(f"internal error ({type(exc).__name__}: {exc})", 500)

    routes = [
        Route("/", page),
        Route("/static/{name}", static),
        Route("/api/info", info),
        Route("/api/jobs", list_jobs, methods=["GET"]),
        Route("/api/jobs", create, methods=["POST"]),
        Route("/api/jobs/{id}", job_status, methods=["GET"]),
        Route("/api/jobs/{id}", cancel, methods=["DELETE"]),  # the same as POST .../cancel; the files stay
        Route("/api/jobs/{id}/rows", job_rows),
        Route("/api/jobs/{id}/image", job_image),
        Route("/api/jobs/{id}/log", job_log),
        Route("/api/jobs/{id}/command", job_command),
        Route("/api/jobs/{id}/files/{name}", job_file),
        Route("/api/jobs/{id}/cancel", cancel, methods=["POST"]),
    ]
    handlers = {_NotFound: not_found, 404: not_found, 405: not_found, Exception: server_error}
    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await run_in_threadpool(queue.close)

    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)
    app.state.queue = queue
    return app


class _NotFound(Exception):
    status_code = 404

    def __init__(self, detail):
        super().__init__(detail)
        self.detail = detail


def _json_fields(body):
    """A JSON object as form fields: a list is a repeated field, true/false a flag."""
    import json

    obj = json.loads(body.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("expected an object of parameters")
    fields = []
    for key, value in obj.items():
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, (dict, list)) or v is None:
                raise ValueError(f"{key}: expected a number, a string or true/false")
            fields.append((key, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return fields


def _create_job(queue, settings, fields):
    """Check the request, save its images in a new job folder and queue it (runs in a
    thread: decoding images is work)."""
    from ..image import save_image

    queue.check_room()
    spec = P.build_spec(fields, max_size=settings.max_size, weights=settings.weights)
    images = {name: P.check_image(up.option, up.data, settings.max_pixels) for name, up in spec.uploads.items()}
    longest = P.main_image_longest(spec, images)
    if longest is not None and longest > settings.max_size:
        raise P.ParamError(f"the image is {longest} px on its longest side, over this server's largest size "
                           f"{settings.max_size} (minivgg serve --max-size); give --size")
    in_use = weights_in_use(spec.args.arch, settings.weights)
    if in_use["source"] is None:  # the command would refuse it after the queue: say so now
        raise P.ParamError(f"--arch {spec.args.arch}: {in_use['note']}; leave --arch out or give --arch "
                           f"{'vgg16' if spec.args.arch == 'vgg19' else 'vgg19'}")
    server_argv = P.server_argv(spec.method, settings.weights, settings.device)
    job_id = queue.new_id()
    folder = os.path.join(queue.out, job_id)
    os.makedirs(folder)
    for name, img in images.items():
        save_image(os.path.join(folder, name), img)
    command = spec.command_line(server_argv)
    settings_json = {k: v for k, v in vars(spec.args).items() if not k.startswith("_")}
    settings_json.update(method=spec.method, weights_in_use=in_use)
    from .jobs import _write_json

    _write_json(os.path.join(folder, "settings.json"), settings_json)
    with open(os.path.join(folder, "command.txt"), "w") as f:
        f.write(f"# in {folder}\n{command}\n")
    job = Job(job_id, folder, spec.method, command, in_use["source"],
              settings.device, P.expected_rows(spec))
    queue.submit(job, {"method": spec.method, "argv": spec.argv + server_argv})
    return queue.status(job)


# ------------------------------------------------------------------ the command
def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args):
    """``minivgg serve``: bind, print the URL, serve until Ctrl-C."""
    import uvicorn

    from ..backend import check_device

    check_device(args.device)
    if args.weights is not None and not os.path.isfile(args.weights):
        raise MiniVGGError(f"{args.weights}: no such weights file")
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise MiniVGGError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e}); choose another --port "
                           f"(0: any free one)") from None
    sock.listen(128)
    port = sock.getsockname()[1]
    settings = Settings(out=args.out, weights=args.weights, device=args.device, max_upload_mb=args.max_upload_mb,
                        max_pixels=args.max_pixels, max_size=args.max_size, max_queue=args.max_queue,
                        preview_seconds=args.preview_seconds)
    try:
        app = create_app(settings)
    except OSError as e:
        sock.close()
        raise MiniVGGError(f"{args.out}: cannot use this folder for the jobs ({e})") from None
    if not _is_loopback(args.host):
        sys.stderr.write(f"minivgg serve: warning: listening on {args.host}, not only this machine: anyone who can "
                         f"reach it can run jobs and read every result (there is no login)\n")
    shown = f"[{args.host}]" if ":" in args.host else args.host
    archs, default_arch = archs_in_use(args.weights)
    w = ", ".join(f"{a} {archs[a]['source']}" for a in sorted(archs, key=lambda a: a != default_arch)
                  if archs[a]["source"] is not None)
    print(f"minivgg serve: http://{shown}:{port}/  (device {args.device}; weights: {w}; jobs in "
          f"{os.path.abspath(args.out)}; Ctrl-C to stop)", flush=True)
    # a page left open keeps polling: on Ctrl-C its connections get a few seconds, not forever
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn shut down cleanly, then re-raised the Ctrl-C: the normal way to stop
        pass
    sys.stderr.write("minivgg serve: stopped\n")
    return 0
