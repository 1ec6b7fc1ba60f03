#!/usr/bin/env python
"""Per-layer timing of VGG-19's convolutions (to relu5_1): Winograd vs im2col vs PyTorch.

For each conv layer at the map size it has for a given image size, times the forward
(conv + bias) and the backward to the input, interleaved in one process (one call of
each implementation per round, median of the rounds), and prints ms and the ratios to
torch. Also prints each Winograd layer's relative error against float64 (max|a-b| /
max|b|), forward and backward, with He-initialised weights and ReLU-like inputs.

    python scripts/bench_layers.py                 # 256
    python scripts/bench_layers.py --size 512 --repeats 5
    python scripts/bench_layers.py --no-torch
    MINIVGG_ISA=avx2 MINIVGG_GEMM=ours python scripts/bench_layers.py   # another level (docs/gemm.md)

A benchmark, not a test: the machine's other load moves the numbers; compare ratios.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from minivgg import options  # noqa: E402
from minivgg.cpu import ops  # noqa: E402
from minivgg.cpu.fast import isa, winograd  # noqa: E402
from minivgg.vgg import conv_specs  # noqa: E402

LAST = "conv5_1"


def layers(size):
    out = []
    for name, cin, cout in conv_specs("vgg19"):
        blk = int(name[4])
        out.append((name, cin, cout, size >> (blk - 1)))
        if name == LAST:
            break
    return out


def rel(a, b):
    return float(np.abs(np.asarray(a, np.float64) - b).max() / np.abs(b).max())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    torch = None
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            pass
    rng = np.random.default_rng(0)
    print(f"VGG-19 convs at {args.size}x{args.size}; median of {args.repeats}, interleaved; ms")
    print(f"minivgg: {isa.describe()}" + (f"; torch CPU capability {torch.backends.cpu.get_cpu_capability()}" if torch else ""))
    hdr = f"{'layer':8} {'map':>4} {'Cin':>4} {'Cout':>4} | {'wino f':>7} {'im2col f':>8} {'torch f':>7} | {'wino b':>7} {'im2col b':>8} {'torch b':>7} | {'w/t f':>5} {'w/t b':>5} | {'err f':>7} {'err b':>7} | default f/b"
    print(hdr)
    print("-" * len(hdr))
    tot = {"w": 0.0, "i": 0.0, "t": 0.0}
    for name, cin, cout, hw in layers(args.size):
        x = np.maximum(rng.standard_normal((1, cin, hw, hw)), 0).astype(np.float32)
        W = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.01).astype(np.float32)
        dy = rng.standard_normal((1, cout, hw, hw)).astype(np.float32)
        U = winograd.transform_weights(W)
        im_cache = (x, W, 1, 1, {})
        fns = {
            "wf": lambda: winograd.conv3x3_forward(x, U, b),
            "wb": lambda: winograd.conv3x3_backward_input(dy, U),
            "if": lambda: _im2col_forward(x, W, b),
            "ib": lambda: _im2col_backward(dy, im_cache),
        }
        if torch is not None:
            xt, Wt, bt, dyt = (torch.from_numpy(a) for a in (x, W, b, dy))
            fns["tf"] = lambda: torch.nn.functional.conv2d(xt, Wt, bt, padding=1)
            fns["tb"] = lambda: torch.nn.grad.conv2d_input(xt.shape, Wt, dyt, padding=1)
        for f in fns.values():
            f()
        times = {k: [] for k in fns}
        for _ in range(args.repeats):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        # accuracy against float64 (the direct definition via im2col in float64)
        y64, c64 = ops.conv2d_forward(x.astype(np.float64), W.astype(np.float64), b.astype(np.float64), 1, 1, {})
        dx64, _, _ = ops.conv2d_backward(dy.astype(np.float64), c64, False)
        ef = rel(fns["wf"](), y64)
        eb = rel(fns["wb"](), dx64)
        t = lambda k: f"{med[k]:7.2f}" if k in med else f"{'-':>7}"  # noqa: E731
        ratio = lambda a, c: f"{med[a] / med[c]:5.2f}" if c in med else f"{'-':>5}"  # noqa: E731
        dflt_f = "wino" if ops._winograd_applies(x, W, 1, 1, cin) else "im2col"
        dflt_b = "wino" if ops._winograd_applies(x, W, 1, 1, cout) else "im2col"
        default = f"{dflt_f}/{dflt_b}"
        print(
            f"{name:8} {hw:4d} {cin:4d} {cout:4d} | {t('wf')} {med['if']:8.2f} {t('tf')} | {t('wb')} {med['ib']:8.2f} {t('tb')} |"
            f" {ratio('wf', 'tf')} {ratio('wb', 'tb')} | {ef:7.1e} {eb:7.1e} | {default}"
        )
        pick = (med["wf"] if dflt_f == "wino" else med["if"]) + (med["wb"] if dflt_b == "wino" else med["ib"])
        tot["w"] += pick
        tot["i"] += med["if"] + med["ib"]
        if "tf" in med:
            tot["t"] += med["tf"] + med["tb"]
    print(f"\nconvs fwd+bwd: default choice {tot['w']:.1f} ms, im2col {tot['i']:.1f} ms" + (f", torch {tot['t']:.1f} ms, ratio {tot['w'] / tot['t']:.2f}" if tot["t"] else ""))


def _im2col_forward(x, W, b):
    with options.using(conv="im2col"):
        return ops.conv2d_forward(x, W, b, 1, 1, {})[0]


def _im2col_backward(dy, cache):
    with options.using(conv="im2col"):
        return ops.conv2d_backward(dy, cache, False)[0]


if __name__ == "__main__":
    main()
