"""Remake docs/img/serve.png: the page of ``minivgg serve`` after a style transfer.

Starts ``python -m minivgg serve --weights WEIGHTS`` on a free loopback port (jobs in a
temporary folder), opens the page in Debian's headless Chromium with Playwright (as
tests/test_serve_browser.py does), runs a style transfer from the form (content
sample:chelsea, style sample:immunohistochemistry, every other option at its default
but --arch, --size and --iters), waits until it is done, scrolls the form down to its
"control" options (--style-mask, --content-mask, --color-transfer, ...) and writes
the screenshot. The server is stopped at the end.

    python scripts/serve_screenshot.py --weights vgg16.h5 --out docs/img/serve.png

On 2 CPU cores the default job (224 px, 150 iterations, VGG-16) takes a few minutes.
"""

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def start_server(weights, jobs):
    proc = subprocess.Popen([sys.executable, "-m", "minivgg", "serve", "--weights", weights, "--port", "0",
                             "--out", jobs], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    line = proc.stdout.readline()
    m = re.search(r"http://[\d.]+:\d+/", line)
    if not m:
        proc.kill()
        raise SystemExit(f"the server did not start: {line.strip()}")
    print(line.strip())
    return proc, m.group(0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", required=True, help="converted weights file (.h5) the server uses")
    ap.add_argument("--out", default="docs/img/serve.png", help="the PNG written (default docs/img/serve.png)")
    ap.add_argument("--arch", default="vgg16", help="arch picked in the form (default vgg16)")
    ap.add_argument("--content", default="sample:chelsea")
    ap.add_argument("--style", default="sample:immunohistochemistry")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=150)
    ap.add_argument("--width", type=int, default=1320, help="viewport width (default 1320)")
    ap.add_argument("--height", type=int, default=900, help="viewport height (default 900)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds to wait for the job (default 1800)")
    args = ap.parse_args()

    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_server(args.weights, os.path.join(tmp, "jobs"))
        try:
            with sync_playwright() as pw:
                ctx = pw.chromium.launch_persistent_context(os.path.join(tmp, "profile"), executable_path=CHROMIUM,
                                                            args=ARGS, headless=True,
                                                            viewport={"width": args.width, "height": args.height})
                page = ctx.new_page()
                errors = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(url)
                page.wait_for_selector('#method option[value="style"]', state="attached")
                page.select_option("#method", "style")
                page.wait_for_selector('[data-opt="content"]')
                page.select_option('[data-opt="arch"]', args.arch)
                page.select_option('[data-opt="content"] select', args.content)
                page.select_option('[data-opt="style"] select', args.style)
                page.fill('[data-opt="size"]', str(args.size))
                page.fill('[data-opt="iters"]', str(args.iters))
                t0 = time.time()
                page.click("#start")
                page.wait_for_function("document.querySelector('#job-state').textContent === 'running'",
                                       timeout=120_000)
                page.wait_for_function("['done', 'failed', 'cancelled'].includes("
                                       "document.querySelector('#job-state').textContent)",
                                       timeout=args.timeout * 1000, polling=1000)
                state = page.text_content("#job-state")
                print(f"job {state} after {time.time() - t0:.0f} s: {page.text_content('#job-line')}")
                if state != "done":
                    raise SystemExit(f"the job ended {state}: {page.text_content('#job-message')}")
                page.wait_for_function("document.querySelector('#image-caption').textContent === 'result'")
                page.wait_for_timeout(1500)  # the last poll: the result image and the full curves
                # the form scrolled to its end: the control options (style masks, colour transfer)
                page.evaluate("document.querySelector('#job-form').scrollTop = 1e6")
                page.mouse.move(args.width - 5, args.height - 5)
                page.wait_for_timeout(300)
                os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                page.screenshot(path=args.out)
                ctx.close()
                if errors:
                    print("page errors:", *errors, sep="\n  ")
        finally:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB)")


if __name__ == "__main__":
    main()
