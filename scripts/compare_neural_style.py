#!/usr/bin/env python
"""minivgg's style transfer beside neural-style-pt's, on the same pretrained weights and
the same image pairs: a contact sheet and a table.

For each pair (content, style) and each iteration count it runs

- neural-style-pt (https://github.com/ProGamerGov/neural-style-pt, a checkout the user
  gets; nothing of it is in this repository) as a subprocess: ``neural_style.py -gpu c
  -backend nn`` with its own defaults except ``-image_size``, ``-num_iterations``,
  ``-seed 0``, ``-print_iter 0 -save_iter 0`` and ``-model_file``, a .pth this script
  writes at run time from the minivgg weights file (below);
- ``python -m minivgg style --content C --style S --size N --iters K --arch A --weights W``
  with minivgg's defaults (plus ``--ours-args``), run in ``--minivgg-root`` (default: the
  checkout this script is in), so the harness measures whatever defaults that code has;
- with ``--mapped``, minivgg again with neural-style-pt's settings translated to
  minivgg's flags as far as they go (``mapped_flags``; docs/comparison.md says what
  cannot be translated).

Every result is then measured the same way, by minivgg's own losses on the result image
(``Meter``: the content resized to the result's size, the style to the result's longest
side with its own aspect): Lc = 1/2 sum (F - P)^2 at relu4_2 and Ls = the mean over
relu1_1 ... relu5_1 of E_l = 1/(4 N^2) sum (G/M - A/M_s)^2 (the paper's E_l, per
position), once with average pooling (minivgg's default net) and once with max pooling
(neural-style-pt's); plus r, the correlation of the 32 x 32 luminance of result and
content (how much of the content's layout is kept: 1 = all of it), and the wall time
of the subprocess (minivgg's after an untimed warm-up that compiles its kernels).

The model file: neural-style-pt's CaffeLoader builds torchvision's VGG layout
(``features.N`` = conv / ReLU / pool in order, ``classifier.0/3/6`` the fc layers),
picks the architecture from the file *name* (it must contain "vgg" and "16" or "19")
and loads the state dict strictly. Style transfer keeps only ``features``, so the
classifier is written as zeros of the right shapes (stored as an expanded zero: a few
bytes on disk) -- it is never used. The file is written to a temporary folder and
removed at the end; never commit it (it is derived from the weights).

torch is needed here only to write that file (``import torch`` happens there); the
interpreter that runs neural-style-pt (``--nsp-python``, default this one) needs torch
and torchvision.

    python scripts/compare_neural_style.py --neural-style ~/neural-style-pt --weights vgg16.h5
    python scripts/compare_neural_style.py --neural-style NSP --weights W.h5 --iters 200,500 --mapped \\
        --pair NSP/examples/inputs/golden_gate.jpg:NSP/examples/inputs/the_scream.jpg --out-dir compare_out

Writes OUT_DIR/compare_{size}px_{iters}it.png (one sheet per iteration count),
OUT_DIR/compare_table.md (also printed) and OUT_DIR/runs/ (every result image and log).
"""

import argparse
import csv
import datetime
import json
import os
import platform
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTENT_LAYER = "relu4_2"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_PAIR = ("examples/inputs/tubingen.jpg", "examples/inputs/starry_night.jpg")
# what neural_style.py uses when given no flag (read from its argparse defaults)
NSP_DEFAULTS = "content 5, style 100, tv 1e-3 (L1), max pool, init randn*0.001, L-BFGS (history 100, no line search)"
THUMB = 32  # side of the luminance thumbnails compared for r


class Fail(Exception):
    """A problem the user can fix: printed as one ``error:`` line, exit status 2."""


# --- the model file neural-style-pt loads ---------------------------------------------
def require_torch():
    try:
        import torch
    except ImportError:
        raise Fail("torch is not installed; this script needs it to write neural-style-pt's model file: "
                   "pip install torch==2.13.0 (only this script needs it)") from None
    return torch


def feature_indices(blocks):
    """{conv name: index in torchvision's ``features``}: each conv is followed by its ReLU,
    each block by a pool, as CaffeLoader.buildSequential lays them out."""
    idx, i = {}, 0
    for blk, n in enumerate(blocks, start=1):
        for k in range(1, n + 1):
            idx[f"conv{blk}_{k}"] = i
            i += 2
        i += 1
    return idx


def write_nsp_model(params, meta, folder):
    """Write minivgg's conv weights as the .pth neural-style-pt loads; return its file name
    (relative to ``folder``, where neural_style.py then runs: CaffeLoader reads the
    architecture from the whole path, so a temporary folder named ...19... would turn a
    VGG-16 into a VGG-19)."""
    torch = require_torch()
    from minivgg.vgg import BLOCKS

    arch = str(meta.get("arch", ""))
    if arch not in BLOCKS:
        raise Fail(f"weights file has arch {arch!r}; expected vgg16 or vgg19")
    conv = meta["convention"]
    if not (float(conv["scale"]) == 255.0 and all(float(s) == 1.0 for s in conv["std"])):
        raise Fail(f"weights use inputs of scale {conv['scale']} / std {conv['std']}; neural-style-pt feeds "
                   "0-255 mean-subtracted images (Caffe convention): convert Caffe-convention weights")
    flip = conv["channel_order"] == "RGB"  # e.g. MatConvNet's: same inputs, channels reversed
    state = {}
    for name, i in feature_indices(BLOCKS[arch]).items():
        if name not in params:
            raise Fail(f"weights file lacks {name}")
        W, b = params[name]
        if name == "conv1_1" and flip:
            W = W[:, ::-1]
        state[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(W, np.float32))
        state[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(b, np.float32))
    # unused by style transfer (CaffeLoader keeps cnn.features only) but required by its
    # strict load_state_dict: zeros, one stored element each, expanded to the shape
    for k, shape in (("classifier.0", (4096, 512 * 7 * 7)), ("classifier.3", (4096, 4096)),
                     ("classifier.6", (1000, 4096))):
        state[f"{k}.weight"] = torch.zeros(1).expand(*shape)
        state[f"{k}.bias"] = torch.zeros(1).expand(shape[0])
    name = f"{arch}-minivgg.pth"
    torch.save(state, os.path.join(folder, name))
    check_nsp_model(torch, os.path.join(folder, name), arch, meta, params)
    return name


def check_nsp_model(torch, path, arch, meta, params):
    """Read the written file back and run it as CaffeLoader lays it out (conv, ReLU, ...,
    max pool) on a small image beside minivgg's net on the same weights: the two must give
    the same relu5_1, or the comparison would compare different networks."""
    from minivgg.vgg import BLOCKS, load_vgg

    state = torch.load(path)
    conv = {i: (state[f"features.{i}.weight"], state[f"features.{i}.bias"]) for i in feature_indices(BLOCKS[arch]).values()}
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(32, 48, 3), dtype=np.uint8)
    net = load_vgg(arch, params, pooling="max", convention=meta["convention"], up_to="relu5_1")
    x = net.preprocess(img)
    ours = np.asarray(net.forward(x, ["relu5_1"])["relu5_1"], np.float64)
    t = torch.from_numpy(np.asarray(x, np.float32))
    if meta["convention"]["channel_order"] == "RGB":
        t = t.flip(1)  # neural-style-pt feeds BGR; the file's conv1_1 was flipped to match
    i, last = 0, feature_indices(BLOCKS[arch])["conv5_1"]
    with torch.no_grad():
        while i <= last:
            if i in conv:
                t = torch.relu(torch.nn.functional.conv2d(t, conv[i][0], conv[i][1], padding=1))
                i += 2
            else:
                t = torch.nn.functional.max_pool2d(t, 2, 2)
                i += 1
    theirs = t.double().numpy()
    err = float(np.abs(ours - theirs).max() / max(np.abs(theirs).max(), 1e-30))
    if not err < 1e-4:
        raise Fail(f"the model file written for neural-style-pt does not reproduce minivgg's relu5_1 "
                   f"(max relative difference {err:.2g}); this is a bug in this script")


# --- runs -------------------------------------------------------------------------------
def run_timed(cmd, cwd, timeout, what):
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Fail(f"{what} ran past --timeout {timeout} s; raise --timeout or lower --size/--iters") from None
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        tail = [l for l in (p.stderr or p.stdout).strip().splitlines() if l.strip()]
        raise Fail(f"{what} failed (exit {p.returncode}): {tail[-1] if tail else 'no output'}")
    return wall, p


def run_nsp(args, model_name, work, content, style, iters, out):
    """Run neural_style.py, or with --reuse-nsp take the result of an earlier run with the
    same inputs (its side file OUT.json records them): neural-style-pt does not depend on
    minivgg's code, and on a shared CPU it is the slow half. Returns (wall, when)."""
    from minivgg.weights import file_sha256

    cmd = [args.nsp_python, os.path.join(args.neural_style, "neural_style.py"),
           "-content_image", content, "-style_image", style, "-output_image", out,
           "-image_size", str(args.size), "-num_iterations", str(iters), "-seed", "0",
           "-gpu", "c", "-backend", "nn", "-print_iter", "0", "-save_iter", "0", "-model_file", model_name]
    key = {"cmd": cmd[1:], "weights_sha256": args.weights_sha256, "neural_style_sha256": args.nsp_sha256,
           "content_sha256": file_sha256(content), "style_sha256": file_sha256(style)}
    side = os.path.splitext(out)[0] + ".json"
    if args.reuse_nsp and os.path.isfile(out) and os.path.isfile(side):
        with open(side) as f:
            old = json.load(f)
        if old.get("key") == key:
            return old["wall"], f"reused from {old['when']}"
    wall, _ = run_timed(cmd, work, args.timeout, f"neural-style-pt ({os.path.basename(content)})")
    if not os.path.isfile(out):
        raise Fail(f"neural-style-pt wrote no {out}")
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    with open(side + ".tmp", "w") as f:
        json.dump({"key": key, "wall": wall, "when": when}, f, indent=1)
    os.replace(side + ".tmp", side)
    return wall, None


def run_ours(args, arch, content, style, iters, out, extra, size=None, what="minivgg style"):
    log = os.path.splitext(out)[0] + ".csv"
    cmd = [sys.executable, "-m", "minivgg", "style", "--content", content, "--style", style,
           "--size", str(size or args.size), "--iters", str(iters), "--arch", arch, "--weights", args.weights,
           "--out", out, "--log", log, "--quiet"] + list(extra)
    wall, _ = run_timed(cmd, args.minivgg_root, args.timeout, f"{what} ({os.path.basename(content)})")
    return wall, cmd


def warm_up(args, arch, content, style, extra, work, done):
    """A 2-iteration run at 32 px with the same flags, untimed, so that the timed run does
    not include numba compiling minivgg's kernels (the first run of a fresh checkout or
    of changed kernel code compiles them and caches them on disk)."""
    key = tuple(f for f in extra if not f.endswith(".png"))
    if key in done:
        return
    run_ours(args, arch, content, style, 2, os.path.join(work, "warm.png"), extra, size=32, what="minivgg warm-up")
    done.add(key)


def mapped_flags(content_shape, size, mean_png, help_text):
    """neural-style-pt's defaults as minivgg flags. Its losses, per layer, with F (N x M):
    content 5 * mean((F - P)^2) = 5 * 2/(N M) * Lc, and style 100 * mean((G/(NM) -
    A/(NM))^2) = 100 * 4/N^2 * E_l, summed over the five layers (no 1/5). So
    content weight 10/(512 M) at relu4_2 (M from the size), style weight 100 with layer
    weights 4/N_l^2. Its TV is the L1 (anisotropic) one, which minivgg lacks: beta-2 TV
    with 1e-3/(2*5) = 1e-4 has the same gradient at a neighbour difference of 5 levels.
    Its start, randn*0.001 in input space, is the mean pixel: a flat image of it.
    These weights are for the papers' sums; a minivgg whose --help offers --loss-norm
    is asked for them with --loss-norm paper."""
    from minivgg.image import size_for_longest

    h, w = size_for_longest(content_shape, size)
    m = (h // 8) * (w // 8)  # relu4_2 is after three 2x2 pools
    widths = {"relu1_1": 64, "relu2_1": 128, "relu3_1": 256, "relu4_1": 512, "relu5_1": 512}
    return ["--pooling", "max", "--content-weight", f"{10.0 / (512 * m):.6g}", "--style-weight", "100",
            "--style-layer-weights", ",".join(f"{4.0 / widths[l] ** 2:.6g}" for l in STYLE_LAYERS),
            "--tv-weight", "1e-4", "--init", mean_png, "--optimizer", "lbfgs", "--lr", "1", "--history-size", "100",
            "--line-search", "none", "--tol", "0"] + (["--loss-norm", "paper"] if "--loss-norm" in help_text else [])


def write_mean_image(meta, shape, path):
    from minivgg.image import save_image

    conv = meta["convention"]
    mean = list(conv["mean"])
    rgb = mean[::-1] if conv["channel_order"] == "BGR" else mean
    save_image(path, np.broadcast_to(np.clip(np.rint(rgb), 0, 255).astype(np.uint8), tuple(shape[:2]) + (3,)))


def our_help(root):
    p = subprocess.run([sys.executable, "-m", "minivgg", "style", "--help"], cwd=root, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, text=True)
    return " ".join(p.stdout.split())


def our_defaults(root):
    """The style command's defaults as its --help states them (so the table shows what was
    in force, whatever the code's defaults are now)."""
    text = our_help(root)
    found = []
    for flag in ("content-weight", "style-weight", "tv-weight", "loss-norm", "style-layer-weights", "pooling", "init",
                 "optimizer", "line-search", "history-size", "style-layers", "content-layers"):
        for m in re.finditer(r"(?:^|\s)--" + re.escape(flag) + r"\b(.*?)(?=\s--[a-z]|$)", text):
            chunk = m.group(1)
            d = re.search(r"\(default:? ([^);:]*)", chunk) or re.search(r"([\w-]+(?: [\w-]+)?) \(default\)", chunk)
            if d:
                found.append(f"{flag} {d.group(1).strip()}")
                break
    return "; ".join(found)


# --- measurement ------------------------------------------------------------------------
class Meter:
    """Lc and Ls of a result by minivgg's losses, the same way for every run.

    The content is resized to the result's size. The style keeps its aspect ratio, its
    longest side the result's (as neural-style-pt, and minivgg since it keeps aspects,
    resize it); its Gram matrix A has M_s positions, not the result's M, so it is
    compared per position: E_l = 1/(4 N^2) sum (G/M - A/M_s)^2, which is minivgg's
    style_loss with the target A M/M_s, and the paper's E_l when M_s = M."""

    def __init__(self, arch, weights):
        from minivgg.vgg import load_vgg

        self.nets = {p: load_vgg(arch, weights, pooling=p, up_to="relu5_1") for p in ("avg", "max")}

    def losses(self, result, content, style):
        from minivgg import losses
        from minivgg.image import resize, resize_longest

        shape = result.shape[:2]
        c, s = resize(content, shape), resize_longest(style, max(shape))
        layers = [CONTENT_LAYER] + list(STYLE_LAYERS)
        out = {}
        for pool, net in self.nets.items():
            P = net.forward(net.preprocess(c), [CONTENT_LAYER])[CONTENT_LAYER].copy()
            fs = net.forward(net.preprocess(s), list(STYLE_LAYERS))
            A = {l: (losses.gram_matrix(fs[l]), fs[l].shape[2] * fs[l].shape[3]) for l in STYLE_LAYERS}
            f = net.forward(net.preprocess(result), layers)
            out[f"Lc_{pool}"] = losses.content_loss(f[CONTENT_LAYER], P)[0]
            es = []
            for l in STYLE_LAYERS:
                G_target, m_s = A[l]
                m = f[l].shape[2] * f[l].shape[3]
                es.append(losses.style_loss(f[l], G_target * np.float32(m / m_s))[0])
            out[f"Ls_{pool}"] = float(np.mean(es))
        return out


def luminance_corr(result, content):
    """Pearson correlation of the THUMB x THUMB luminance (box-filtered) of result and content."""
    from PIL import Image

    def thumb(img):
        y = np.asarray(img, np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.asarray(Image.fromarray(y, mode="F").resize((THUMB, THUMB), Image.BOX), np.float64).ravel()

    a, b = thumb(result), thumb(content)
    return float(np.corrcoef(a, b)[0, 1])


# --- sheet and table --------------------------------------------------------------------
def make_sheet(path, rows, title, box):
    from minivgg.experiments.pictures import Tile, contact_sheet

    grid = [(label, [Tile(t["image"], t["caption"]) for t in tiles]) for label, tiles in rows]
    sheet, _ = contact_sheet(grid, box=box, title=title)
    tmp = path + ".tmp.png"
    sheet.save(tmp)
    os.replace(tmp, path)


def git_commit(root):
    try:
        head = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, text=True).stdout.strip()
        # only the package counts: an edited script or doc does not change what runs
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no", "--", "minivgg"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + ("+dirty" if dirty else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def table(rows):
    head = ["pair", "method", "size", "iters", "wall s", "Lc avg", "Ls avg", "Lc max", "Ls max", "r (32px Y)",
            "settings"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append("| " + " | ".join([
            r["pair"], r["method"], f"{r['shape'][1]}x{r['shape'][0]}", str(r["iters"]), f"{r['wall']:.0f}",
            f"{r['Lc_avg']:.3g}", f"{r['Ls_avg']:.3g}", f"{r['Lc_max']:.3g}", f"{r['Ls_max']:.3g}", f"{r['r']:.3f}",
            r["settings"]]) + " |")
    return "\n".join(lines)


# --- main -------------------------------------------------------------------------------
def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="docs/comparison.md: the sheet, the table, and how the settings map.")
    p.add_argument("--neural-style", required=True, metavar="DIR", help="a neural-style-pt checkout (neural_style.py)")
    p.add_argument("--weights", required=True, metavar="FILE.h5",
                   help="minivgg weights file, Caffe convention (0-255, mean subtracted), vgg16 or vgg19")
    p.add_argument("--pair", action="append", metavar="CONTENT:STYLE",
                   help="image pair (repeatable; default NSP/examples/inputs/tubingen.jpg:...starry_night.jpg)")
    p.add_argument("--size", type=int, default=192, help="longest side of the results (default 192)")
    p.add_argument("--iters", default="200", metavar="K1,K2", help="L-BFGS iterations, one sheet each (default 200)")
    p.add_argument("--mapped", action="store_true",
                   help="also run minivgg with neural-style-pt's settings mapped onto its flags")
    p.add_argument("--ours-args", default="", metavar="'FLAGS'",
                   help="extra flags for minivgg's default run (for experiments), e.g. '--style-weight 1e5'")
    p.add_argument("--minivgg-root", default=REPO, metavar="DIR",
                   help="checkout whose `python -m minivgg` runs and measures (default: this script's repo)")
    p.add_argument("--nsp-python", default=sys.executable, metavar="PYTHON",
                   help="interpreter for neural_style.py, with torch and torchvision (default: this one)")
    p.add_argument("--box", type=int, default=None, metavar="PX",
                   help="tile size on the sheet (default: twice --size up to 256, enlarged pixel for pixel, so grain "
                        "shows; else --size)")
    p.add_argument("--out-dir", default="compare_out", metavar="DIR", help="where sheets, table, runs go")
    p.add_argument("--timeout", type=int, default=2400,
                   help="seconds allowed per run (default 2400: neural-style-pt at 192 px x 200 took over 900 s "
                        "on 2 busy cores)")
    p.add_argument("--reuse-nsp", action="store_true",
                   help="reuse neural-style-pt results in OUT_DIR/runs from an earlier run with the same inputs "
                        "(command, weights, images, neural_style.py), e.g. to rerun only minivgg after a change")
    args = p.parse_args(argv)
    try:
        args.iters_list = [int(k) for k in args.iters.split(",") if k.strip()]
    except ValueError:
        raise Fail(f"--iters: expected comma-separated integers, got {args.iters!r}") from None
    if not args.iters_list or any(k <= 0 for k in args.iters_list) or args.size <= 0:
        raise Fail("--iters and --size must be positive")
    return args


def check_inputs(args):
    from minivgg.weights import file_sha256

    nsp = args.neural_style
    for f in ("neural_style.py", "CaffeLoader.py"):
        if not os.path.isfile(os.path.join(nsp, f)):
            raise Fail(f"--neural-style {nsp}: no {f} there; pass the folder of a neural-style-pt checkout")
    args.neural_style = os.path.abspath(nsp)
    if not os.path.isfile(args.weights):
        raise Fail(f"--weights {args.weights}: no such file (a minivgg .h5: python -m weights_tools)")
    args.weights = os.path.abspath(args.weights)
    args.weights_sha256 = file_sha256(args.weights)
    args.nsp_sha256 = file_sha256(os.path.join(args.neural_style, "neural_style.py"))
    if not os.path.isfile(os.path.join(args.minivgg_root, "minivgg", "__init__.py")):
        raise Fail(f"--minivgg-root {args.minivgg_root}: no minivgg package there")
    args.minivgg_root = os.path.abspath(args.minivgg_root)
    specs = args.pair or [":".join(os.path.join(args.neural_style, f) for f in DEFAULT_PAIR)]
    pairs = []
    for spec in specs:
        if spec.count(":") != 1:
            raise Fail(f"--pair {spec!r}: expected CONTENT:STYLE")
        c, s = spec.split(":")
        for f in (c, s):
            if not os.path.isfile(f):
                raise Fail(f"--pair {spec}: no such image {f}")
        pairs.append((os.path.abspath(c), os.path.abspath(s)))
    args.pairs = pairs
    require_torch()
    probe = subprocess.run([args.nsp_python, "-c", "import torch, torchvision"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["?"])[-1]
        raise Fail(f"--nsp-python {args.nsp_python} cannot import torch and torchvision, which neural-style-pt "
                   f"needs ({last}); pass an interpreter that has both")


def main(argv=None):
    args = parse_args(argv)
    check_inputs(args)
    sys.path.insert(0, args.minivgg_root)  # measure with the code that runs
    from minivgg.errors import MiniVGGError
    from minivgg.image import load_image, resize_longest
    from minivgg.weights import read_weights

    try:
        params, meta = read_weights(args.weights)
    except MiniVGGError as e:
        raise Fail(str(e)) from None
    arch = str(meta["arch"])
    os.makedirs(os.path.join(args.out_dir, "runs"), exist_ok=True)
    work = tempfile.mkdtemp(prefix="compare_nsp_")
    try:
        model_name = write_nsp_model(params, meta, work)
        del params
        meter = Meter(arch, args.weights)
        extra = shlex.split(args.ours_args)
        ours_label = "minivgg defaults" + (f" + {args.ours_args}" if extra else "")
        wname = os.path.basename(args.weights)
        commit = git_commit(args.minivgg_root)
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        results, sheets, warmed = [], [], set()
        for iters in args.iters_list:
            sheet_rows = []
            for c_path, s_path in args.pairs:
                content, style = load_image(c_path), load_image(s_path)
                pair = f"{os.path.splitext(os.path.basename(c_path))[0]} x {os.path.splitext(os.path.basename(s_path))[0]}"
                stem = os.path.join(os.path.abspath(args.out_dir), "runs",
                                    f"{pair.replace(' x ', '_x_')}_{args.size}px_{iters}it")
                runs = []
                out = stem + "_nsp.png"
                wall, reused = run_nsp(args, model_name, work, c_path, s_path, iters, out)
                runs.append(("neural-style-pt", out, wall,
                             f"its defaults ({NSP_DEFAULTS})" + (f"; {reused}" if reused else "")))
                out = stem + "_minivgg.png"
                warm_up(args, arch, c_path, s_path, extra, work, warmed)
                defaults = our_defaults(args.minivgg_root)  # just before: the code may be changing under us
                wall, _ = run_ours(args, arch, c_path, s_path, iters, out, extra)
                runs.append((ours_label, out, wall, f"{defaults}" + (f"; + {args.ours_args}" if extra else "")))
                if args.mapped:
                    mean_png = os.path.join(work, f"mean_{len(results)}.png")
                    from minivgg.image import size_for_longest

                    write_mean_image(meta, size_for_longest(content.shape, args.size), mean_png)
                    flags = mapped_flags(content.shape, args.size, mean_png, our_help(args.minivgg_root))
                    warm_up(args, arch, c_path, s_path, flags, work, warmed)
                    out = stem + "_minivgg_mapped.png"
                    wall, _ = run_ours(args, arch, c_path, s_path, iters, out, flags)
                    shown = " ".join(f if f != mean_png else "MEAN.png" for f in flags)
                    runs.append(("minivgg, nsp settings", out, wall, shown))
                tiles = [{"image": resize_longest(content, args.size), "caption": ["content", os.path.basename(c_path)]},
                         {"image": resize_longest(style, args.size), "caption": ["style", os.path.basename(s_path)]}]
                for method, path, wall, settings in runs:
                    img = load_image(path)
                    row = {"pair": pair, "method": method, "iters": iters, "wall": wall, "shape": img.shape[:2],
                           "r": luminance_corr(img, content), "settings": settings, "image": path}
                    row.update(meter.losses(img, content, style))
                    results.append(row)
                    tiles.append({"image": img, "caption": [
                        method if len(method) <= 30 else method[:29] + "~",
                        f"{img.shape[1]}x{img.shape[0]} px, {iters} it, {wname}",
                        f"r {row['r']:.3f}, {wall:.0f} s",
                        f"Lc {row['Lc_avg']:.3g}, Ls {row['Ls_avg']:.3g}"]})
                sheet_rows.append((pair, tiles))
            path = os.path.join(args.out_dir, f"compare_{args.size}px_{iters}it.png")
            make_sheet(path, sheet_rows, box=args.box or (2 * args.size if args.size <= 256 else args.size), title=[
                f"{arch} ({wname}), {args.size} px, {iters} L-BFGS iterations; {stamp}",
                f"minivgg {commit} ({args.minivgg_root}); neural-style-pt {args.neural_style}, -gpu c",
                "r: correlation of the 32x32 luminance of result and content; Lc, Ls: minivgg's losses, avg pool, style per position"])
            sheets.append(path)
        text = table(results)
        header = (f"{stamp}; minivgg {commit}; {cpu_model()}, {os.cpu_count()} cores; weights {wname} ({arch})\n"
                  f"command: {' '.join(shlex.quote(a) for a in [sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))}\n")
        tmp = os.path.join(args.out_dir, ".compare_table.md.tmp")
        with open(tmp, "w") as f:
            f.write(header + "\n" + text + "\n")
        os.replace(tmp, os.path.join(args.out_dir, "compare_table.md"))
        print(header)
        print(text)
        print("\nwrote " + ", ".join(sheets + [os.path.join(args.out_dir, "compare_table.md")]))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Fail as e:
        sys.stderr.write(f"error: {e}\n")
        sys.exit(2)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        sys.exit(130)
