"""``minivgg serve``: the real server on a free loopback port, driven through its HTTP
API as a script would (create, poll, cancel, bad input, concurrent clients).

Jobs are tiny (32-64 px, a few iterations); each one runs in a worker process.
"""

import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
import zlib

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FINAL = ("done", "cancelled", "failed")


# ------------------------------------------------------------------ a server and a client
class ServerProcess:
    """``python -m minivgg serve --port 0`` in a subprocess; ``url`` from its first line."""

    def __init__(self, out, *extra):
        self.out = str(out)
        env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "minivgg", "serve", "--host", "127.0.0.1", "--port", "0",
                                      "--out", self.out, "--preview-seconds", "0.1", *extra],
                                     cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        line = self._first_line(60)
        assert line.startswith("minivgg serve: http://127.0.0.1:"), line
        self.first_line = line
        self.url = line.split()[2].rstrip("/")

    def _first_line(self, timeout):
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        if not box or not box[0]:
            self.proc.kill()
            raise AssertionError(f"the server printed no URL: {self.proc.stderr.read()[-2000:]}")
        return box[0].strip()

    def stop(self):
        """Ctrl-C: the server stops its jobs and exits."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def request(url, data=None, headers=None, method=None, timeout=30):
    """(status, content type, body bytes) for one HTTP request; 4xx/5xx do not raise."""
    req = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def multipart(fields):
    """A multipart/form-data body: fields is a list of (name, str) or (name, (filename, bytes))."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in fields:
        out.write(f"--{boundary}\r\n".encode())
        if isinstance(value, tuple):
            filename, data = value
            out.write(f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
                      f"Content-Type: application/octet-stream\r\n\r\n".encode())
            out.write(data)
        else:
            out.write(f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}'.encode())
        out.write(b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), {"Content-Type": f"multipart/form-data; boundary={boundary}"}


class Client:
    def __init__(self, url):
        self.url = url

    def get_json(self, path):
        status, ctype, body = request(self.url + path)
        assert "json" in ctype, (path, status, body[:200])
        return status, json.loads(body)

    def create(self, fields):
        body, headers = multipart(fields)
        status, ctype, data = request(self.url + "/api/jobs", body, headers, "POST")
        assert "json" in ctype, (status, data[:300])
        return status, json.loads(data)

    def cancel(self, job_id):
        status, ctype, data = request(self.url + f"/api/jobs/{job_id}/cancel", b"", method="POST")
        return status, json.loads(data)

    def wait(self, job_id, states=FINAL, timeout=240, cond=None):
        t0 = time.monotonic()
        while True:
            status, st = self.get_json(f"/api/jobs/{job_id}")
            assert status == 200, st
            if st["state"] in states and (cond is None or cond(st)):
                return st
            assert time.monotonic() - t0 < timeout, f"job {job_id} still {st['state']} after {timeout} s: {st}"
            time.sleep(0.1)


def texture(size=32, iters=3, **extra):
    fields = [("method", "texture"), ("image", "sample:chelsea"), ("size", str(size)), ("source-size", str(size)),
              ("iters", str(iters))]
    return fields + [(k.replace("_", "-"), str(v)) for k, v in extra.items()]


def png_bytes(arr):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def decode_png(data):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


def bomb_png(width, height):
    """A PNG whose header says width x height pixels, with almost no data: Pillow reads
    its size without decoding it (what a decompression bomb looks like to the server)."""
    def chunk(kind, data):
        return (len(data).to_bytes(4, "big") + kind + data
                + zlib.crc32(kind + data).to_bytes(4, "big"))

    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("serve") / "jobs", "--max-size", "256", "--max-upload-mb", "2")
    yield srv
    assert srv.stop() == 0, srv.proc.stderr.read()[-2000:]


@pytest.fixture(scope="module")
def client(server):
    return Client(server.url)


# ------------------------------------------------------------------ tests
def test_import_and_other_commands_do_not_import_the_web_stack():
    code = ("import sys, minivgg, minivgg.cli as c; c.build_parser(); import minivgg.serve; "
            "print([m for m in ('starlette', 'uvicorn', 'multipart', 'python_multipart') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_info_has_every_method_with_the_cli_defaults(client):
    from minivgg import cli
    from minivgg.vgg import layer_names

    status, info = client.get_json("/api/info")
    assert status == 200
    assert info["methods"] == ["style", "texture", "invert", "dream", "visualize", "atlas"]
    assert info["archs"]["vgg19"]["layers"] == layer_names("vgg19")
    assert info["archs"]["vgg16"]["weights"]  # a file, or "random"
    style = {o["name"]: o for o in info["options"]["style"]}
    defaults = cli.build_parser().parse_args(["style", "--content", "a", "--style", "b"])
    assert style["iters"]["default"] == defaults.iters
    assert style["style-weight"]["default"] == defaults.style_weight
    assert style["style-layers"]["default"] == ",".join(defaults.style_layers)
    assert style["style-layers"]["kind"] == "layers" and style["content"]["kind"] == "image"
    assert style["style-mask"]["kind"] == "image" and style["style-mask"]["multiple"]  # uploads, never paths
    assert style["content-mask"]["kind"] == "image" and style["color-transfer"]["kind"] == "choice"
    assert "out" not in style and "weights" not in style and "device" not in style  # the server's
    assert {o["name"] for o in info["options"]["dream"]} >= {"image", "layer", "octaves", "zoom-steps"}


def test_a_masked_style_job_takes_its_mask_as_an_upload(client, tmp_path):
    """--style-mask in the web lab: an uploaded image, saved by the server under a name
    of its own, and the job runs to done with it."""
    mask = np.zeros((32, 32), np.uint8)
    mask[:, :16] = 255
    status, st = client.create([("method", "style"), ("content", "sample:chelsea"), ("style", "sample:coffee"),
                                ("style-mask", ("left.png", png_bytes(mask))), ("size", "32"), ("iters", "2"),
                                ("color-transfer", "histogram")])
    assert status == 201, st
    st = client.wait(st["id"])
    assert st["state"] == "done", st
    status, _, body = request(client.url + f"/api/jobs/{st['id']}/files/settings.json")
    assert status == 200
    settings = json.loads(body)  # the command's arguments: the mask saved under the server's own name
    assert settings["style_mask"] == ["style_mask-1.png"] and settings["color_transfer"] == "histogram", settings


def test_a_job_runs_to_done_with_its_files(client):
    status, st = client.create(texture(iters=3))
    assert status == 201, st
    assert st["state"] in ("queued", "running") and st["expected_rows"] == 4
    st = client.wait(st["id"])
    assert st["state"] == "done", st
    assert st["iteration"] == 3 and st["rows"] == 4
    assert set(st["losses"]) >= {"iter", "total", "content", "style", "tv", "seconds"}
    assert {"result.png", "log.csv", "log.png", "settings.json", "command.txt", "job.json"} <= set(st["files"])
    status, ctype, img = request(client.url + f"/api/jobs/{st['id']}/image")
    assert status == 200 and ctype == "image/png"
    assert max(decode_png(img).shape[:2]) == 32
    status, ctype, log = request(client.url + f"/api/jobs/{st['id']}/log")
    lines = log.decode().splitlines()
    assert status == 200 and lines[0].startswith("iter,total,content,style,tv,seconds") and len(lines) == 5
    status, _, cmd = request(client.url + f"/api/jobs/{st['id']}/command")
    assert cmd.decode().startswith("python -m minivgg texture --image sample:chelsea --size 32")
    assert "--out result.png --log log.csv" in cmd.decode()
    _, settings = client.get_json(f"/api/jobs/{st['id']}/files/settings.json")
    assert settings["iters"] == 3 and settings["method"] == "texture" and settings["layers"]


def test_the_command_line_redoes_the_job(client, server, tmp_path):
    """The settings as a command: run in the job's folder, the CLI makes the same image."""
    status, st = client.create(texture(iters=2))
    st = client.wait(st["id"])
    assert st["state"] == "done", st
    folder = os.path.join(server.out, st["id"])
    argv = st["command"].split()[3:]
    argv[argv.index("--out") + 1] = str(tmp_path / "again.png")
    argv[argv.index("--log") + 1] = str(tmp_path / "again.csv")
    env = dict(os.environ, PYTHONPATH=ROOT)
    subprocess.run([sys.executable, "-m", "minivgg"] + argv + ["--quiet"], cwd=folder, env=env, check=True,
                   capture_output=True)
    from PIL import Image

    a = np.asarray(Image.open(os.path.join(folder, "result.png")))
    b = np.asarray(Image.open(tmp_path / "again.png"))
    assert np.array_equal(a, b)


def test_a_json_body_works_too(client):
    body = json.dumps({"method": "style", "content": "sample:chelsea", "style": ["sample:coffee", "sample:rocket"],
                       "size": 32, "iters": 1, "original-colors": True}).encode()
    status, ctype, data = request(client.url + "/api/jobs", body, {"Content-Type": "application/json"}, "POST")
    st = json.loads(data)
    assert status == 201, st
    assert "--style sample:coffee sample:rocket" in st["command"] and "--original-colors" in st["command"]
    assert client.wait(st["id"])["state"] == "done"
    status, _, data = request(client.url + "/api/jobs", b"[1]", {"Content-Type": "application/json"}, "POST")
    assert status == 400 and "expected an object" in json.loads(data)["error"]


def test_an_atlas_job_reports_each_run(client):
    status, st = client.create([("method", "atlas"), ("image", "sample:chelsea"), ("size", "32"), ("iters", "2"),
                                ("content-layers", "conv1_1"), ("style-layers", "conv1_1,conv2_1")])
    assert status == 201, st
    st = client.wait(st["id"])
    assert st["state"] == "done", st
    assert st["runs"] == 3 and st["rows"] == 3 * 3 == st["expected_rows"]
    assert {"result.png", "result.csv", "result-curves.png", "log.csv"} <= set(st["files"])
    assert st["command"].endswith("--out result.png")
    rows = client.get_json(f"/api/jobs/{st['id']}/rows?since=0")[1]["rows"]
    assert [r["run"] for r in rows] == [1, 1, 1, 2, 2, 2, 3, 3, 3] and [r["step"] for r in rows] == list(range(9))


def test_an_uploaded_image_is_used_as_given(client, server):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(24, 40, 3), dtype=np.uint8)
    status, st = client.create([("method", "invert"), ("image", ("../../etc/passwd.png", png_bytes(arr))),
                                ("layer", "relu1_1"), ("iters", "2")])
    assert status == 201, st
    st = client.wait(st["id"])
    assert st["state"] == "done", st
    assert "image.png" in st["files"]  # the server's name, never the client's
    _, _, saved = request(client.url + f"/api/jobs/{st['id']}/files/image.png")
    assert np.array_equal(decode_png(saved), arr)
    assert "--image image.png" in st["command"]
    assert decode_png(request(client.url + f"/api/jobs/{st['id']}/image")[2]).shape == (24, 40, 3)


def cli_error(args):
    """What ``python -m minivgg ARGS`` prints after ``error: ``."""
    out = subprocess.run([sys.executable, "-m", "minivgg"] + args, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2, out
    return out.stderr.strip().splitlines()[-1][len("error: "):]


@pytest.mark.parametrize("field,value", [("size", "0"), ("bogus", "1"), ("optimizer", "newton")])
def test_bad_values_are_refused_with_the_cli_text(client, field, value):
    status, body = client.create(texture() + [(field, value)])
    assert status == 400
    argv = ["texture", "--image", "sample:chelsea", "--size", "32", "--source-size", "32", "--iters", "3"]
    assert body["error"] == cli_error(argv + [f"--{field}={value}"])


@pytest.mark.parametrize("fields,status,says", [
    ([("method", "paint")], 400, "unknown method 'paint'"),
    ([], 400, "no method given"),
    ([("method", "texture"), ("image", "sample:nope")], 400, "unknown sample image 'nope'"),
    ([("method", "texture"), ("image", "/etc/hostname")], 400, "is not an image this server can use"),
    ([("method", "style"), ("content", "sample:chelsea"), ("style", "sample:coffee"), ("style-mask", "/etc/hostname")],
     400, "is not an image this server can use"),
    ([("method", "style"), ("content", "sample:chelsea"), ("style", "sample:coffee"), ("content-mask", "/etc/hostname")],
     400, "is not an image this server can use"),
    ([("method", "texture"), ("image", "sample:chelsea"), ("out", "/tmp/x.png")], 400, "--out is set by the server"),
    ([("method", "texture"), ("image", "sample:chelsea"), ("weights", "/etc/hostname")], 400, "set by the server"),
    ([("method", "texture"), ("image", "sample:chelsea"), ("layers", "relu1_1,nope")], 400, "unknown layer 'nope'"),
    ([("method", "texture"), ("image", "sample:chelsea"), ("size", "5000")], 400, "over this server's largest size"),
    ([("method", "texture"), ("image", ("x.png", b"not an image at all"))], 400, "--image: cannot read image"),
    ([("method", "texture"), ("image", ("bomb.png", bomb_png(5000, 5000)))], 413, "refused undecoded"),
    ([("method", "texture"), ("image", ("bomb.png", bomb_png(40000, 40000)))], 413, "too large to decode safely"),
    ([("method", "texture"), ("image", ("big.bin", b"\0" * 2_100_000))], 413, "over this server's limit"),
    ([("method", "texture"), ("image", "sample:chelsea"), ("iters", ("x.png", b"1"))], 400, "takes a value"),
    ([("method", "style"), ("content", "sample:chelsea"), ("style", "sample:coffee"), ("style-blend", "1,2")],
     400, "--style-blend has 2 weight(s) for 1 style image(s)"),
    ([("method", "visualize")], 400, "give --layer"),
])
def test_bad_input_is_a_4xx_with_a_json_message(client, fields, status, says):
    got, body = client.create(fields)
    assert got == status, body
    assert says in body["error"], body
    assert "\n" not in body["error"]


def test_no_client_path_reaches_the_file_system(client):
    status, st = client.create(texture(iters=1))
    st = client.wait(st["id"])
    for path in (f"/api/jobs/{st['id']}/files/..%2Fjob.json", f"/api/jobs/{st['id']}/files/.hidden",
                 "/api/jobs/..%2F..%2Fetc/image", "/api/jobs/nope/log", "/static/..%2F__init__.py",
                 "/static/index.html"):
        status, ctype, body = request(client.url + path)
        assert status == 404 and "json" in ctype, (path, status)
        assert "error" in json.loads(body)


def test_a_failing_job_shows_its_one_line_error_and_the_server_goes_on(client):
    status, st = client.create([("method", "dream"), ("image", "sample:chelsea"), ("size", "48"),
                                ("layer", "relu1_1"), ("channel", "500"), ("octaves", "1"), ("iters", "1")])
    assert status == 201, st
    st = client.wait(st["id"])
    assert st["state"] == "failed"
    assert st["message"] == "channel 500 out of range for relu1_1, which has 64 channels (0..63)"
    status, st = client.create(texture(iters=1))
    assert client.wait(st["id"])["state"] == "done"


def test_cancel_a_waiting_and_a_running_job(client, server):
    _, a = client.create(texture(size=48, iters=2000))
    _, b = client.create(texture(iters=2))
    _, sb = client.get_json(f"/api/jobs/{b['id']}")
    assert sb["state"] == "queued" and sb["position"] >= 1
    client.wait(a["id"], states=("running",), cond=lambda s: s["image_version"] >= 2 and s["rows"] >= 3)
    status, ctype, data = request(client.url + f"/api/jobs/{b['id']}", method="DELETE")
    sb = json.loads(data)
    assert status == 200 and sb["state"] == "cancelled" and "before it started" in sb["message"]
    _, sa = client.cancel(a["id"])
    sa = client.wait(a["id"])
    assert sa["state"] == "cancelled" and sa["rows"] < 2001
    assert {"result.png", "log.csv"} <= set(sa["files"])  # the current image and the log are kept
    log = request(client.url + f"/api/jobs/{a['id']}/log")[2].decode().splitlines()
    assert len(log) == sa["rows"] + 1
    assert "result.png" not in client.get_json(f"/api/jobs/{b['id']}")[1]["files"]
    assert os.path.isfile(os.path.join(server.out, b["id"], "command.txt"))


def test_concurrent_clients_lose_nothing(client, server):
    """N clients at once create jobs and cancel some (waiting or running): every job
    ends done, cancelled or failed, with its files, and the queue positions are a
    permutation while they wait."""
    n_clients, per_client = 4, 2
    made, errors = [], []
    lock = threading.Lock()

    def one_client(k):
        rnd = random.Random(k)
        try:
            for i in range(per_client):
                status, st = client.create(texture(size=32, iters=rnd.choice([2, 40])))
                assert status == 201, st
                with lock:
                    made.append(st["id"])
                if rnd.random() < 0.5:
                    time.sleep(rnd.random() * 2)
                    status, _ = client.cancel(st["id"])
                    assert status == 200
        except Exception as e:  # reported below, with every client's outcome
            errors.append(repr(e))

    threads = [threading.Thread(target=one_client, args=(k,)) for k in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors
    assert len(made) == n_clients * per_client
    _, listing = client.get_json("/api/jobs")
    waiting = [j["position"] for j in listing["jobs"] if j["state"] == "queued"]
    assert sorted(waiting) == list(range(1, len(waiting) + 1))
    finals = [client.wait(job_id, timeout=300) for job_id in made]
    assert {s["state"] for s in finals} <= {"done", "cancelled"}
    for st in finals:
        files = set(st["files"])
        assert {"job.json", "settings.json", "command.txt", "status.json"} <= files, st
        if st["state"] == "done" or st["started"] is not None:
            assert {"result.png", "log.csv"} <= files, st
    ids = {j["id"] for j in client.get_json("/api/jobs")[1]["jobs"]}
    assert set(made) <= ids


def test_jobs_are_listed_again_after_a_restart(tmp_path):
    out = tmp_path / "jobs"
    srv = ServerProcess(out)
    try:
        c = Client(srv.url)
        _, st = c.create(texture(iters=1))
        done = c.wait(st["id"])
        assert done["state"] == "done"
    finally:
        assert srv.stop() == 0
    srv = ServerProcess(out)
    try:
        _, again = Client(srv.url).get_json(f"/api/jobs/{st['id']}")
        assert again["state"] == "done" and again["rows"] == 2 and "result.png" in again["files"]
    finally:
        srv.stop()


def test_a_server_on_vgg16_weights_defaults_to_vgg16(tmp_path):
    """With --weights holding VGG-16, the page's default arch is vgg16 (as the CLI's without
    --arch), the other arch says it has no weights here, the startup line names only the
    file's network, and a job asking for vgg19 is refused at once with the reason."""
    from minivgg.vgg import random_weights
    from minivgg.weights import CAFFE, write_weights

    weights = str(tmp_path / "vgg16-test.h5")
    write_weights(weights, random_weights("vgg16", seed=1), {"arch": "vgg16", "source_format": "test",
                                                             "convention": CAFFE})
    srv = ServerProcess(tmp_path / "jobs", "--weights", weights)
    try:
        assert f"weights: vgg16 {weights};" in srv.first_line and "vgg19" not in srv.first_line, srv.first_line
        c = Client(srv.url)
        _, info = c.get_json("/api/info")
        assert info["default_arch"] == "vgg16"
        assert info["archs"]["vgg16"]["weights"] == weights
        assert info["archs"]["vgg19"]["weights"] is None and "hold vgg16" in info["archs"]["vgg19"]["note"]
        status, body = c.create(texture(iters=1, arch="vgg19"))
        assert status == 400 and "hold vgg16" in body["error"], body
        status, st = c.create(texture(iters=1))
        assert status == 201, st
        assert c.wait(st["id"])["state"] == "done"
    finally:
        assert srv.stop() == 0


def test_the_page_is_served(client):
    status, ctype, html = request(client.url + "/")
    assert status == 200 and ctype.startswith("text/html") and b'id="live-image"' in html
    status, ctype, js = request(client.url + "/static/app.js")
    assert status == 200 and b"/api/jobs" in js


def test_loopback_check_and_a_taken_port(tmp_path):
    from minivgg.serve.app import _is_loopback

    assert _is_loopback("127.0.0.1") and _is_loopback("::1") and _is_loopback("localhost")
    assert not _is_loopback("0.0.0.0") and not _is_loopback("192.168.1.2")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        out = subprocess.run([sys.executable, "-m", "minivgg", "serve", "--port", str(port), "--out",
                              str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().startswith(f"error: cannot listen on 127.0.0.1:{port}")


def test_a_diverged_loss_is_null_in_json():
    from minivgg.serve.app import _JSON

    body = _JSON({"losses": {"total": float("nan"), "style": float("inf"), "tv": 1.5}, "rows": [float("-inf")]}).body
    assert json.loads(body) == {"losses": {"total": None, "style": None, "tv": 1.5}, "rows": [None]}


def test_the_layer_check_uses_the_servers_weights(tmp_path, monkeypatch):
    """A job's layers are checked against the network of the server's --weights (as its
    command will run), not against the cached weights' network."""
    from minivgg.serve.params import ParamError, build_spec
    from minivgg.vgg import random_weights
    from minivgg.weights import CAFFE, write_weights

    monkeypatch.setenv("MINIVGG_HOME", str(tmp_path / "empty-cache"))  # no cache: vgg19 by default
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    weights = str(tmp_path / "vgg16-test.h5")
    write_weights(weights, random_weights("vgg16", seed=1), {"arch": "vgg16", "source_format": "test",
                                                             "convention": CAFFE})
    fields = [("method", "dream"), ("image", "sample:chelsea"), ("layer", "relu5_4")]  # VGG-19 only
    assert build_spec(fields).args.arch == "vgg19"
    with pytest.raises(ParamError, match="unknown layer 'relu5_4' for vgg16"):
        build_spec(fields, weights=weights)
