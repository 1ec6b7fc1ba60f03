"""Remake the figures of README.md and docs/experiments.md from one weights file.

    python scripts/figures.py --weights vgg16.h5 --out docs/img [--painting starry_night.jpg] [--quick]

Every figure runs the project's own commands and methods with their defaults (the
point is to show what the defaults give); only the size and, where a method's
default would take too long on a CPU, the number of iterations are set here, and
each picture says so in its title. Every title names the network, the weights file
and its fingerprint (conv1_1 bias[0]: 0.73429835 is the ImageNet VGG-16 of the Caffe
model zoo), the minivgg commit and the date.

Figures (FIGURES; ``--only`` picks some):

- atlas:   ``python -m minivgg atlas`` as it stands (its own layers and defaults);
           writes atlas_ARCH.png and atlas_ARCH-curves.png;
- invert:  ``invert`` from one layer, relu1_1 ... relu5_1 (the papers' post-ReLU
           conv1_1 ... conv5_1), Mahendran & Vedaldi's regularizers at their defaults;
- texture: ``synthesize_texture`` with the growing sets of its default layers
           (relu1_1, pool1, ... pool4: the texture paper's);
- style:   ``style_transfer`` with its defaults, one run of 800 L-BFGS iterations shown
           at iteration 200 and 800 (L-BFGS does not depend on the total count, so the
           200th iterate is what a 200-iteration run returns), and its loss curve;
- dream:   ``dream`` at a low and a high layer, and a zoom loop's frames;
- random:  the inversion row again on random weights, labelled as such (what training adds).

Contents and styles are scikit-image's photos (``sample:NAME``); ``--painting`` takes
a painting from a file for the style transfer and the atlas (the figures in docs/img
use Van Gogh's Starry Night, which is not shipped with the project).
``--quick`` makes tiny versions of everything, to test this script.
"""

import argparse
import datetime
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

from minivgg.experiments import execute, pictures, records  # noqa: E402
from minivgg.errors import MiniVGGError  # noqa: E402

FIGURES = ("atlas", "invert", "texture", "style", "dream", "random")
INVERT_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
# sizes and iterations: (full, quick)
SETTINGS = {
    "atlas": {"size": (128, 40), "iters": (100, 4)},
    "invert": {"size": (160, 40), "iters": (300, 4)},
    "texture": {"size": (160, 40), "iters": (300, 4)},
    "style": {"size": (192, 48), "iters": (800, 8), "snapshot": (200, 2)},
    "dream": {"size": (256, 48), "zoom_size": (192, 40), "zoom_steps": (12, 2)},
}


def setting(fig, name, quick):
    return SETTINGS[fig][name][1 if quick else 0]


class Context:
    """What every figure needs: the nets (built once), the inputs, the title lines."""

    def __init__(self, args):
        from minivgg import load_vgg

        self.args = args
        self.quick = args.quick
        self.weights = os.path.abspath(args.weights)
        self.net = load_vgg(args.arch, weights=self.weights, pooling="avg")
        self.arch = self.net.arch
        self.fingerprint = fingerprint(self.weights)
        self.content = execute.load_input(args.content)
        self.style = execute.load_input(args.style)
        self.painting = execute.load_input(args.painting) if args.painting else None
        self.painting_name = os.path.basename(args.painting) if args.painting else None
        self.commit = commit()
        self.date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        self.timings = {}
        self.nets = {}

    def net_with(self, pooling):
        """The net with ``pooling`` (``self.net`` when it has that pooling), built once."""
        from minivgg import load_vgg

        if pooling == self.net.pooling:
            return self.net
        if pooling not in self.nets:
            self.nets[pooling] = load_vgg(self.arch, weights=self.weights, pooling=pooling)
        return self.nets[pooling]

    def weights_line(self, pooling="avg"):
        return (f"network {self.arch}, {pooling} pooling, weights {os.path.basename(self.weights)} "
                f"(conv1_1 bias[0] = {self.fingerprint:.8f}: the ImageNet VGG-16, Caffe convention)"
                if self.arch == "vgg16" else
                f"network {self.arch}, {pooling} pooling, weights {os.path.basename(self.weights)} "
                f"(conv1_1 bias[0] = {self.fingerprint:.8f})")

    def made_line(self):
        return f"minivgg {self.commit}, {self.date}, python scripts/figures.py{' --quick' if self.quick else ''}"


def fingerprint(path):
    """conv1_1's first bias: a published number that tells which weights a file holds."""
    import h5py

    with h5py.File(path, "r") as f:
        return float(np.asarray(f["conv1_1"]["b"])[0])


def commit():
    try:
        out = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"], capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown commit"
    except (OSError, subprocess.SubprocessError):
        return "unknown commit"


def label_lines(result, seconds):
    s = records.loss_summary(result.history)
    stopped = "" if result.stopped in ("iterations", "tolerance") else f", {result.stopped}"
    return [f"{s['iterations']} it, loss {pictures.fmt_loss(s['total'])}{stopped}", f"{seconds:.0f} s"]


def psnr(image, original):
    """PSNR of a reconstruction against the original at the reconstruction's size, in dB."""
    from minivgg.image import resize

    ref = resize(original, image.shape[:2]).astype(np.float64)
    mse = float(np.mean((image.astype(np.float64) - ref) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0**2 / mse)


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    r = fn(*a, **kw)
    return r, time.perf_counter() - t0


def save(ctx, name, sheet):
    path = os.path.join(ctx.args.out, name)
    records.save_png(path, sheet)
    print(f"wrote {path}", flush=True)
    return path


# ------------------------------------------------------------------ the figures
def fig_atlas(ctx):
    """``minivgg atlas`` itself (its defaults), into a scratch folder; its PNGs are kept."""
    from minivgg.experiments import atlas

    size, iters = setting("atlas", "size", ctx.quick), setting("atlas", "iters", ctx.quick)
    style = ctx.args.painting or ctx.args.style
    scratch = tempfile.mkdtemp(prefix="minivgg-figures-")
    try:
        out = os.path.join(scratch, f"atlas_{ctx.arch}.png")
        argv = ["--image", ctx.args.content, "--style", style, "--arch", ctx.arch, "--weights", ctx.weights,
                "--size", str(size), "--iters", str(iters), "--out", out, "--quiet"]
        print("python -m minivgg atlas " + " ".join(argv), flush=True)
        status = atlas.main(argv)
        if status != 0:
            raise MiniVGGError(f"atlas failed (exit status {status})")
        paths = []
        for suffix in (".png", "-curves.png"):
            src = os.path.join(scratch, f"atlas_{ctx.arch}{suffix}")
            dst = os.path.join(ctx.args.out, os.path.basename(src))
            shutil.copyfile(src, dst)
            print(f"wrote {dst}", flush=True)
            paths.append(dst)
        return paths
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def invert_row(ctx, net, what):
    from minivgg.methods import invert

    size, iters = setting("invert", "size", ctx.quick), setting("invert", "iters", ctx.quick)
    tiles = [pictures.Tile(ctx.content, [f"image ({ctx.content.shape[1]}x{ctx.content.shape[0]})", "original"],
                     pictures.FAINT)]
    for layer in INVERT_LAYERS:
        r, sec = timed(invert, net, ctx.content, layer, size=size, iters=iters, seed=ctx.args.seed)
        tiles.append(pictures.Tile(r.image, [f"{layer}, {psnr(r.image, ctx.content):.1f} dB"] + label_lines(r, sec)))
        print(f"  invert {what} {layer}: {sec:.1f} s, {r.stopped}", flush=True)
    return tiles, size, iters


def fig_invert(ctx):
    tiles, size, iters = invert_row(ctx, ctx.net, "pretrained")
    title = [f"Inversion from one layer (Mahendran & Vedaldi regularizers, invert's defaults), {iters} L-BFGS "
             f"iterations from faint noise, size {size}; relu*_1 = the papers' post-ReLU conv*_1; dB: PSNR against the photo",
             ctx.weights_line(), ctx.made_line()]
    sheet, _ = pictures.contact_sheet([("reconstruction\nfrom one layer", tiles)], box=pictures.default_box(size), title=title)
    return [save(ctx, f"invert_layers_{ctx.arch}.png", sheet)]


def fig_random(ctx):
    """The same inversions on random weights: the one random-weights figure kept, for what
    it teaches (random filters keep the pixels too; training shows in the deep layers)."""
    from minivgg import load_vgg
    from minivgg.vgg import random_weights

    net = load_vgg(ctx.arch, weights=random_weights(ctx.arch, False, 0), pooling="avg")
    tiles, size, iters = invert_row(ctx, net, "random")
    title = [f"Inversion from one layer on RANDOM weights ({ctx.arch}, minivgg's deterministic random init, seed 0; "
             f"NOT trained), invert's defaults, {iters} iterations, size {size}",
             f"compare with invert_layers_{ctx.arch}.png, the same runs on "
             f"{os.path.basename(ctx.weights)}", ctx.made_line()]
    note = "RANDOM WEIGHTS: what an untrained VGG keeps of the photo"
    sheet, _ = pictures.contact_sheet([("random weights:\nfrom one layer", tiles)], box=pictures.default_box(size), title=title,
                                note=note)
    return [save(ctx, f"invert_layers_random_{ctx.arch}.png", sheet)]


def fig_texture(ctx):
    from minivgg.methods import synthesize_texture
    from minivgg.methods.texture import TEXTURE_LAYERS

    size, iters = setting("texture", "size", ctx.quick), setting("texture", "iters", ctx.quick)
    sources = [(ctx.args.style, ctx.style)]
    if ctx.painting is not None:
        sources.append((ctx.painting_name, ctx.painting))
    rows = []
    for name, src in sources:
        tiles = [pictures.Tile(src, [f"source ({src.shape[1]}x{src.shape[0]})", "original"], pictures.FAINT)]
        for k in range(1, len(TEXTURE_LAYERS) + 1):
            layers = TEXTURE_LAYERS[:k]
            r, sec = timed(synthesize_texture, ctx.net, src, layers=layers, size=size, iters=iters,
                           seed=ctx.args.seed)
            label = "+".join(layers) if k <= 2 else f"relu1_1..{layers[-1]}"
            tiles.append(pictures.Tile(r.image, [label] + label_lines(r, sec)))
            print(f"  texture {name} {label}: {sec:.1f} s, {r.stopped}", flush=True)
        rows.append((f"texture of\n{name}", tiles))
    title = [f"Texture from Gram matrices of growing layer sets (synthesize_texture's defaults and layers), {iters} "
             f"L-BFGS iterations from faint noise, size {size}, source at the output's scale",
             ctx.weights_line(), ctx.made_line()]
    sheet, _ = pictures.contact_sheet(rows, box=pictures.default_box(size), title=title)
    return [save(ctx, f"texture_layers_{ctx.arch}.png", sheet)]


def fig_style(ctx):
    from minivgg.image import line_plot
    from minivgg.methods import style_transfer

    size, iters = setting("style", "size", ctx.quick), setting("style", "iters", ctx.quick)
    snap_at = setting("style", "snapshot", ctx.quick)
    style, style_name = ((ctx.painting, ctx.painting_name) if ctx.painting is not None
                         else (ctx.style, ctx.args.style))
    snaps = {}
    t0 = time.perf_counter()

    def keep(rec):
        if rec["iter"] == snap_at:
            snaps[snap_at] = (rec["render"](rec["x"]), time.perf_counter() - t0, rec["total"])
        return False

    r, sec = timed(style_transfer, ctx.net, ctx.content, [style], size=size, iters=iters, seed=ctx.args.seed,
                   callback=keep)
    print(f"  style {iters} iterations: {sec:.1f} s, {r.stopped}", flush=True)
    s = records.loss_summary(r.history)
    tiles = [pictures.Tile(ctx.content, [f"content {ctx.args.content}", "original"], pictures.FAINT),
             pictures.Tile(style, [f"style {style_name}", "original"], pictures.FAINT)]
    if snap_at in snaps:
        img, t, loss = snaps[snap_at]
        tiles.append(pictures.Tile(img, [f"{snap_at} iterations", f"loss {pictures.fmt_loss(loss)}, {t:.0f} s"]))
    else:
        tiles.append(pictures.Tile(None, [f"{snap_at} iterations", f"stopped earlier: {r.stopped}"], pictures.WARN))
    tiles.append(pictures.Tile(r.image, [f"{s['iterations']} iterations", f"loss {pictures.fmt_loss(s['total'])}, {sec:.0f} s"]))
    title = [f"Style transfer, style_transfer's defaults (content relu4_2, style relu1_1..relu5_1, faint-noise start),"
             f" size {size}: one L-BFGS run shown at iteration {snap_at} and {iters}",
             ctx.weights_line(), ctx.made_line()]
    sheet, _ = pictures.contact_sheet([("style transfer", tiles)], box=min(256, pictures.default_box(size)), title=title)
    paths = [save(ctx, f"style_iters_{ctx.arch}.png", sheet)]
    xs = [h["iter"] for h in r.history]
    # content, style and tv as logged: each term before its weight
    series = {("total" if k == "total" else f"{k} (unweighted)"): [float(h.get(k, float("nan"))) for h in r.history]
              for k in ("total", "content", "style", "tv")}
    curve = line_plot(xs, series, title=f"style transfer loss, {ctx.arch} {os.path.basename(ctx.weights)}, size {size}",
                      xlabel="L-BFGS iteration")
    from PIL import Image

    paths.append(save(ctx, f"style_iters_{ctx.arch}-curve.png", Image.fromarray(curve)))
    return paths


def fig_dream(ctx):
    from minivgg.methods import dream
    from minivgg.methods.dream import DREAM_LAYER, DREAM_POOLING

    net = ctx.net_with(DREAM_POOLING)  # dream's default net: the pooling VGG was trained with
    size = setting("dream", "size", ctx.quick)
    img = execute.load_input(ctx.args.dream_image)
    low, high = ctx.args.dream_low, ctx.args.dream_high
    tiles = [pictures.Tile(img, [f"{ctx.args.dream_image}", "original"], pictures.FAINT)]
    r = None
    for layer in (low, DREAM_LAYER, high) if DREAM_LAYER not in (low, high) else (low, high):
        r, sec = timed(dream, net, img, layer, size=size, seed=ctx.args.seed)
        tiles.append(pictures.Tile(r.image, [layer + (" (default)" if layer == DREAM_LAYER else ""),
                                       f"{r.settings['octaves_used']} octaves x {r.settings['iters']} steps",
                                       f"{sec:.0f} s"]))
        print(f"  dream {layer}: {sec:.1f} s, {r.stopped}", flush=True)
    rows = [("dream:\nlow vs high\nlayer", tiles)]
    d = r.settings
    zsize, zsteps = setting("dream", "zoom_size", ctx.quick), setting("dream", "zoom_steps", ctx.quick)
    r, sec = timed(dream, net, img, DREAM_LAYER, size=zsize, zoom_steps=zsteps, seed=ctx.args.seed)
    print(f"  dream zoom {zsteps} steps: {sec:.1f} s, {r.stopped}", flush=True)
    picks = sorted(set(np.linspace(0, len(r.frames) - 1, min(5, len(r.frames))).round().astype(int).tolist()))
    ztiles = [pictures.Tile(r.frames[i], [f"frame {i}" + (" (first dream)" if i == 0 else f" ({i} zooms)")])
              for i in picks]
    rows.append((f"{DREAM_LAYER} dreamed\non its own\noutput, zoom\n{r.settings['zoom_scale']} per frame", ztiles))
    title = [f"DeepDream, dream's defaults ({d['octaves']} octaves of {d['octave_scale']}, {d['iters']} steps each, "
             f"step {d['lr']} levels, jitter {d['jitter']}), size {size}; "
             f"the zoom loop at size {zsize}, {zsteps} zooms ({sec:.0f} s)", ctx.weights_line(DREAM_POOLING),
             ctx.made_line()]
    sheet, _ = pictures.contact_sheet(rows, box=min(256, pictures.default_box(size)), title=title)
    return [save(ctx, f"dream_layers_{ctx.arch}.png", sheet)]


RUNNERS = {"atlas": fig_atlas, "invert": fig_invert, "texture": fig_texture, "style": fig_style,
           "dream": fig_dream, "random": fig_random}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--weights", required=True, help="converted HDF5 weights (python -m weights_tools convert/fetch)")
    p.add_argument("--out", required=True, help="folder for the PNGs (e.g. docs/img)")
    p.add_argument("--arch", default=None, help="network (default: the weights file's)")
    p.add_argument("--content", default="sample:chelsea", help="content photo (default %(default)s)")
    p.add_argument("--style", default="sample:immunohistochemistry",
                   help="style / texture source shipped with scikit-image (default %(default)s)")
    p.add_argument("--painting", help="a painting file: the style of the style-transfer figure and the atlas, and a "
                                      "second texture row (default: --style)")
    p.add_argument("--dream-image", default="sample:coffee", help="the dream figure's photo (default %(default)s)")
    p.add_argument("--dream-low", default="relu3_3", help="the low dream layer (default %(default)s)")
    p.add_argument("--dream-high", default="relu5_1", help="the high dream layer (default %(default)s)")
    p.add_argument("--only", help=f"comma-separated figures to make (default all: {','.join(FIGURES)})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny sizes and iterations, to test this script")
    args = p.parse_args(argv)
    try:
        if not os.path.isfile(args.weights):
            raise MiniVGGError(f"{args.weights}: no such weights file")
        if not os.path.isdir(args.out):
            raise MiniVGGError(f"{args.out}: no such folder")
        only = FIGURES if not args.only else tuple(s.strip() for s in args.only.split(",") if s.strip())
        bad = [f for f in only if f not in FIGURES]
        if bad:
            raise MiniVGGError(f"--only: unknown figure {', '.join(bad)}; choose from {', '.join(FIGURES)}")
        if args.arch is None:
            from minivgg.weights import arch_for

            args.arch = arch_for(args.weights)
        ctx = Context(args)
        t_all = time.perf_counter()
        for name in only:
            print(f"{name}:", flush=True)
            _paths, sec = timed(RUNNERS[name], ctx)
            ctx.timings[name] = sec
            print(f"{name}: {sec:.1f} s", flush=True)
        print("timings: " + ", ".join(f"{k} {v:.0f} s" for k, v in ctx.timings.items())
              + f"; total {time.perf_counter() - t_all:.0f} s", flush=True)
    except MiniVGGError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
