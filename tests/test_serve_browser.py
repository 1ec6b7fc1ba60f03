"""``minivgg serve`` in a real browser: Debian's headless Chromium driven by Playwright
loads the page, starts a small job, sees the live image change, stops it and
downloads the result. Skipped, with one line saying why, without Chromium or
Playwright (``apt-get install chromium chromium-driver``; ``pip install playwright``;
no ``playwright install``: the browser is the system's).

Set MINIVGG_SERVE_SCREENSHOTS=DIR to keep the screenshots it takes.
"""

import os

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

if not os.path.exists(CHROMIUM):
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver): browser test skipped",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
pytest.importorskip("starlette")

from test_serve import Client, ServerProcess, texture  # noqa: E402  (the same real server as the API tests)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess(tmp_path_factory.mktemp("serve-browser") / "jobs")
    # one tiny job first: a fresh clone compiles numba's kernels here, not while the page waits
    c = Client(srv.url)
    _, st = c.create(texture(iters=1))
    assert c.wait(st["id"], timeout=600)["state"] == "done"
    yield srv
    srv.stop()


@pytest.fixture()
def page(tmp_path):
    with sync_api.sync_playwright() as pw:
        ctx = pw.chromium.launch_persistent_context(str(tmp_path / "profile"), executable_path=CHROMIUM, args=ARGS,
                                                    headless=True, accept_downloads=True,
                                                    viewport={"width": 1280, "height": 900})
        try:
            yield ctx.new_page()
        finally:
            ctx.close()


def shots_dir(tmp_path):
    d = os.environ.get("MINIVGG_SERVE_SCREENSHOTS") or str(tmp_path / "shots")
    os.makedirs(d, exist_ok=True)
    return d


def test_page_runs_watches_stops_and_downloads(server, page, tmp_path):
    from PIL import Image

    shots = shots_dir(tmp_path)
    page.goto(server.url + "/")
    page.wait_for_selector('#method option[value="atlas"]', state="attached")
    assert "weights in use: vgg19" in page.text_content("#weights")
    page.select_option("#method", "texture")
    page.wait_for_selector('[data-opt="source-size"]')
    page.select_option('[data-opt="image"] select', "sample:chelsea")
    page.fill('[data-opt="size"]', "64")
    page.fill('[data-opt="source-size"]', "64")
    page.fill('[data-opt="iters"]', "400")
    page.click("#start")

    # the live image appears, then changes as the optimization goes on
    page.wait_for_function("document.querySelector('#live-image').dataset.version >= 1", timeout=60_000)
    first = page.locator("#live-image").screenshot()
    v1 = int(page.get_attribute("#live-image", "data-version"))
    page.wait_for_function(f"document.querySelector('#live-image').dataset.version >= {v1 + 2}", timeout=60_000)
    page.wait_for_function("document.querySelector('#job-line').textContent.includes('iteration')")
    second = page.locator("#live-image").screenshot()
    assert first != second
    assert page.text_content("#job-state") == "running"
    assert page.text_content("#command").startswith("python -m minivgg texture --image sample:chelsea --size 64")
    page.screenshot(path=os.path.join(shots, "serve-running.png"))

    page.click("#stop")
    page.wait_for_function("document.querySelector('#job-state').textContent === 'cancelled'", timeout=60_000)
    page.wait_for_function("!document.querySelector('#dl-image').classList.contains('disabled')")
    with page.expect_download() as dl:
        page.click("#dl-image")
    path = tmp_path / "result.png"
    dl.value.save_as(path)
    img = np.asarray(Image.open(path))
    assert max(img.shape[:2]) == 64 and img.shape[2] == 3
    with page.expect_download() as dl:
        page.click("#dl-log")
    log = dl.value.path().read_text().splitlines()
    assert log[0].startswith("iter,total,content,style,tv,seconds") and len(log) > 3
    page.screenshot(path=os.path.join(shots, "serve-stopped.png"))

    # the job is in the list, and reopens from it in a new tab
    job_id = page.text_content("#job-title").split(" · ")[1]
    other = page.context.new_page()
    other.goto(server.url + "/")
    other.wait_for_selector(f'tr[data-job="{job_id}"]')
    other.click(f'tr[data-job="{job_id}"]')
    other.wait_for_function("document.querySelector('#job-state').textContent === 'cancelled'")


def test_page_shows_a_bad_value_and_a_failing_job(server, page):
    page.goto(server.url + "/")
    page.wait_for_selector('#method option[value="dream"]', state="attached")
    page.select_option("#method", "dream")
    page.wait_for_selector('[data-opt="octaves"]')
    page.fill('[data-opt="size"]', "0")
    page.click("#start")
    page.wait_for_function("document.querySelector('#form-error').textContent.length > 0")
    assert "argument --size: must be a positive integer up to 1048576, got 0" in page.text_content("#form-error")
    page.fill('[data-opt="size"]', "48")
    page.fill('[data-opt="channel"]', "999")
    page.fill('[data-opt="octaves"]', "1")
    page.fill('[data-opt="iters"]', "1")
    page.check('[data-opt="layer"] input[value="relu1_1"]')
    page.click("#start")
    page.wait_for_function("document.querySelector('#job-state').textContent === 'failed'", timeout=60_000)
    assert page.text_content("#job-message") == "error: channel 999 out of range for relu1_1, which has 64 channels (0..63)"


def test_every_method_form_builds_and_its_defaults_pass_the_checks(server, page):
    """Each method's form (made from /api/info) sends fields the server accepts as they
    are: checked with the server's own build_spec, without queueing a job."""
    from minivgg.serve.params import build_spec

    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector('#method option[value="atlas"]', state="attached")
    for method in ("style", "texture", "invert", "dream", "visualize", "atlas"):
        page.select_option("#method", method)
        if method == "visualize":  # no default layer: the CLI asks for --layer or --class
            page.check('[data-opt="layer"] input[value="relu3_1"]')
        fields = page.evaluate("[...formData().entries()].map(([k, v]) => [k, String(v)])")
        assert ["method", method] in fields
        spec = build_spec([tuple(f) for f in fields])
        assert spec.method == method
    page.select_option("#method", "style")
    page.select_option('[data-opt="arch"]', "vgg16")
    assert "vgg16" in page.text_content("#weights")
    from minivgg.vgg import layer_names

    assert page.locator('[data-opt="style-layers"] input').count() == len(layer_names("vgg16")) == 31
    assert not errors, errors
