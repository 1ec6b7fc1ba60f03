"""Time, peak memory (max RSS of a child process) and seam visibility of the tiled stage
against one direct run, on real weights (docs/methods.md, "Large images").

    python scripts/tiled_measure.py --weights vgg16.h5 --size 384 --tile 192 --iters 100
"""

import argparse
import json
import resource
import subprocess
import sys
import time


def child(a):
    import numpy as np

    sys.path.insert(0, "scripts")
    from control_figures import strokes
    from minivgg import load_vgg
    from minivgg.image import sample_image, save_image
    from minivgg.methods import style_transfer
    from minivgg.methods.tiled import seam_ratio, tiled_style_transfer

    net = load_vgg("vgg16", weights=a.weights, pooling="avg", up_to="relu5_1")
    content = sample_image("chelsea")
    t = time.perf_counter()
    if a.mode == "direct":
        img = style_transfer(net, content, [strokes()], size=a.size, iters=a.iters).image
        boxes = None
    else:
        img, info = tiled_style_transfer(net, content, [strokes()], size=a.size, tile=a.tile, overlap=a.overlap,
                                         coarse=a.tile, iters=a.iters)
        boxes = info["boxes"]
    out = {"mode": a.mode, "seconds": time.perf_counter() - t}
    if boxes:
        out["seam_ratio"] = seam_ratio(img, boxes)
        out["tiles"] = len(boxes)
    save_image(f"/tmp/tiled_{a.mode}.png", img)
    print(json.dumps(out))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--weights", required=True)
    p.add_argument("--size", type=int, default=384)
    p.add_argument("--tile", type=int, default=192)
    p.add_argument("--overlap", type=int, default=32)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument("--mode", choices=("direct", "tiled"))
    a = p.parse_args()
    if a.mode:
        return child(a)
    for mode in ("tiled", "direct"):  # tiled first: RUSAGE_CHILDREN keeps the max over children
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        r = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True, text=True)
        line = json.loads(r.stdout.strip().splitlines()[-1])
        line["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        line["rss_grew"] = line["peak_rss_mib"] * 1024 > before  # max over children: valid when it grew
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
