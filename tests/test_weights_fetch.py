"""weights_tools fetch against a local HTTP server on 127.0.0.1 serving generated files:
download + verify + convert into the cache, resume with Range, truncated and corrupted
downloads (clear error, cache untouched)."""

import hashlib
import http.server
import os
import threading

import numpy as np
import pytest

import weights_gen as gen
from minivgg import weights as mw
from minivgg.errors import MiniVGGError
from weights_tools import cli, fetch

NAME = "vgg16-keras-notop"
FILE = fetch.SOURCES[NAME]["file"]


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves ``server.files``; honours ``Range: bytes=N-``; ``server.mode`` can be
    ``truncate`` (announce the full length, send half, close) or ``corrupt`` (flip bytes)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        srv = self.server
        name = self.path.rsplit("/", 1)[-1]
        srv.requests.append((self.path, self.headers.get("Range")))
        data = srv.files.get(name)
        if data is None:
            self.send_error(404)
            return
        if srv.mode == "corrupt":
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            data = bytes(data)
        start = 0
        rng = self.headers.get("Range")
        if rng and srv.ranges and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if srv.mode == "truncate":
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture(scope="module")
def payload(tmp_path_factory):
    """A genuine Keras notop file for VGG-16 (constant weights compress to a few KB)."""
    d = tmp_path_factory.mktemp("payload")
    params = {k: (np.full_like(W, 0.01), np.full_like(b, 0.1)) for k, (W, b) in gen.random_params("vgg16").items()}
    p = d / FILE
    gen.write_keras(str(p), "vgg16", params, compression="gzip")
    return p.read_bytes()


@pytest.fixture
def server(payload):
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files = {FILE: payload}
    srv.mode = None
    srv.ranges = True
    srv.requests = []
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.base = f"http://127.0.0.1:{srv.server_address[1]}/mirror"
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def home(tmp_path, monkeypatch):
    h = tmp_path / "home"
    monkeypatch.setenv("MINIVGG_HOME", str(h))
    monkeypatch.delenv("MINIVGG_WEIGHTS", raising=False)
    monkeypatch.delenv("MINIVGG_FETCH_BASE", raising=False)
    return h


def error_line(capsys):
    """The one ``error:`` line (progress lines may come before it), no traceback."""
    err = capsys.readouterr().err
    errors = [l for l in err.splitlines() if l.startswith("error: ")]
    assert len(errors) == 1 and err.strip().splitlines()[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


def md5(data):
    return hashlib.md5(data).hexdigest()


def _h5_files(d):
    return sorted(f for f in os.listdir(d) if f.endswith(".h5")) if os.path.isdir(d) else []


def test_fetch_verifies_converts_into_cache(server, payload, home):
    out = fetch.fetch(NAME, base_url=server.base, md5=md5(payload), progress=False)
    assert out == str(home / "vgg16-keras-notop.h5")
    assert mw.default_weights_path("vgg16") == out
    assert mw.default_weights_path("vgg19") is None
    params, meta = mw.read_weights(out)
    assert meta["arch"] == "vgg16" and meta["source_format"] == "keras"
    assert meta["convention"]["channel_order"] == "BGR"
    assert params["conv1_1"][0].shape == (64, 3, 3, 3)
    assert (home / "downloads" / FILE).read_bytes() == payload
    # a second fetch finds the result and downloads nothing
    n = len(server.requests)
    assert fetch.fetch(NAME, base_url=server.base, md5=md5(payload), progress=False) == out
    assert len(server.requests) == n


def test_fetch_cli_with_environment_base_and_url(server, payload, home, monkeypatch, capsys):
    monkeypatch.setenv("MINIVGG_FETCH_BASE", server.base)
    assert cli.main(["fetch", NAME, "--md5", md5(payload), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == str(home / "vgg16-keras-notop.h5")
    assert server.requests[-1][0] == f"/mirror/{FILE}"
    other = home.parent / "other"
    assert cli.main(["fetch", NAME, "--dir", str(other), "--url", f"{server.base}/{FILE}",
                     "--sha256", hashlib.sha256(payload).hexdigest(), "--size", str(len(payload)), "--no-progress"]) == 0
    assert _h5_files(other) == ["vgg16-keras-notop.h5"]


def test_published_checksum_mismatch_is_refused(server, payload, home, capsys):
    """Served under the official name but not the official bytes: the published MD5 fails."""
    code = cli.main(["fetch", NAME, "--base-url", server.base, "--no-progress"])
    err = error_line(capsys)
    assert code == 2
    assert FILE in err and "MD5" in err and fetch.SOURCES[NAME]["md5"] in err
    assert _h5_files(home) == []
    assert not os.listdir(home / "downloads")


def test_corrupted_download(server, payload, home, capsys):
    server.mode = "corrupt"
    (home).mkdir(parents=True)
    (home / "keep.h5").write_bytes(b"other weights")
    code = cli.main(["fetch", NAME, "--base-url", server.base, "--md5", md5(payload), "--no-progress"])
    err = error_line(capsys)
    assert code == 2 and "MD5" in err and "corrupt" in err
    assert _h5_files(home) == ["keep.h5"] and (home / "keep.h5").read_bytes() == b"other weights"
    assert not os.listdir(home / "downloads")


def test_truncated_download_then_resume(server, payload, home, capsys):
    server.mode = "truncate"
    code = cli.main(["fetch", NAME, "--base-url", server.base, "--md5", md5(payload), "--no-progress"])
    err = error_line(capsys)
    assert code == 2 and "truncated" in err and "resume" in err
    assert _h5_files(home) == []
    part = home / "downloads" / (FILE + ".part")
    assert 0 < part.stat().st_size < len(payload)
    assert mw.default_weights_path("vgg16") is None

    have = part.stat().st_size
    server.mode = None
    out = fetch.fetch(NAME, base_url=server.base, md5=md5(payload), progress=False)
    assert server.requests[-1][1] == f"bytes={have}-"
    assert (home / "downloads" / FILE).read_bytes() == payload
    assert not part.exists()
    assert mw.default_weights_path("vgg16") == out


def test_resume_when_server_ignores_range(server, payload, home):
    server.ranges = False
    (home / "downloads").mkdir(parents=True)
    (home / "downloads" / (FILE + ".part")).write_bytes(payload[:100])
    fetch.fetch(NAME, base_url=server.base, md5=md5(payload), progress=False)
    assert (home / "downloads" / FILE).read_bytes() == payload


def test_unreachable_server_and_404(home, server, capsys):
    code = cli.main(["fetch", NAME, "--base-url", "http://127.0.0.1:9/none", "--md5", "0" * 32, "--no-progress"])
    assert code == 2 and "download failed" in error_line(capsys)
    code = cli.main(["fetch", NAME, "--url", server.base + "/missing.h5", "--md5", "0" * 32, "--no-progress"])
    assert code == 2 and "404" in error_line(capsys)
    assert _h5_files(home) == []


def test_unknown_name_and_list(capsys, home):
    assert cli.main(["fetch", "vgg11-caffe"]) == 2
    assert "unknown weights name" in error_line(capsys)
    assert cli.main(["fetch", NAME, "--keep-classifier"]) == 2
    assert "no classifier" in error_line(capsys)
    assert cli.main(["fetch", "--list"]) == 0
    listing = capsys.readouterr().out
    for name in ("vgg19-caffe", "vgg16-caffe", "vgg19-torchvision", "vgg16-torchvision",
                 "vgg19-keras-notop", "vgg16-keras-notop"):
        assert name in listing


def test_registry_has_published_checksums():
    s = fetch.SOURCES
    assert s["vgg19-caffe"]["size"] == 574671192 and s["vgg19-caffe"]["md5"] == "b5c644beabd7cf06bdd9065cfd674c97"
    assert s["vgg16-caffe"]["size"] == 553432081 and s["vgg16-caffe"]["md5"] == "441315b0ff6932dbfde97731be7ca852"
    assert s["vgg16-torchvision"]["urls"] == ["https://download.pytorch.org/models/vgg16-397923af.pth"]
    assert s["vgg19-torchvision"]["urls"] == ["https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"]
    assert s["vgg16-keras-notop"]["urls"][0] == ("https://storage.googleapis.com/tensorflow/keras-applications/"
                                                 "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5")
    for k, v in s.items():
        assert v["arch"] == k[:5] and ("md5" in v or "sha256_prefix" in v)


def test_sha256_prefix_in_torchvision_name_is_checked(tmp_path):
    p = tmp_path / "vgg16-397923af.pth"
    p.write_bytes(b"not the weights")
    with pytest.raises(MiniVGGError, match="397923af"):
        fetch._verify(str(p), fetch.SOURCES["vgg16-torchvision"])
    good = hashlib.sha256(b"not the weights").hexdigest()[:8]
    fetch._verify(str(p), {"sha256_prefix": good})


def test_default_weights_path_prefers_classifier_when_asked(home, monkeypatch):
    home.mkdir(parents=True)
    for n in ("vgg19-caffe.h5", "vgg19-torchvision-fc.h5", "vgg16-caffe.h5", "vgg19-notes.txt"):
        (home / n).write_bytes(b"")
    assert mw.default_weights_path("vgg19") == str(home / "vgg19-caffe.h5")
    assert mw.default_weights_path("vgg19", classifier=True) == str(home / "vgg19-torchvision-fc.h5")
    assert mw.default_weights_path("vgg16", classifier=True) == str(home / "vgg16-caffe.h5")
    monkeypatch.setenv("MINIVGG_WEIGHTS", "/elsewhere/w.h5")
    assert mw.default_weights_path("vgg19") == "/elsewhere/w.h5"
