#!/usr/bin/env python
"""Time one Gatys style-transfer iteration: minivgg vs PyTorch, interleaved, same machine.

One iteration = VGG-19 (average pooling) forward to relu1_1 relu2_1 relu3_1 relu4_1
relu4_2 relu5_1, the content loss (relu4_2) and the five style losses, and backward to
the image; minivgg's as its methods run it (methods.Objective: the style gradients made
when the backward reaches their layer, ``backward(keep=False)``). Each implementation runs in its own worker process (so peak memory is its
own: VmHWM of the worker; --in-process runs both in this one process instead), and the
parent interleaves the two: one minivgg iteration, one torch iteration, and so on.
Before timing, one minivgg iteration per size runs in a throwaway process, so that the
numba kernels are compiled and cached on disk and the worker's peak is the iteration's,
not the one-time compilation's. Prints medians after warm-up, the ratio, peak RSS, and
how far the loss and the gradient (of the last iteration, max|a - b| / max|b|) are from
torch's, and each gradient from torch's in float64 (computed once, after the timing and
the peaks); the last column is ours from torch's as ||a - b|| / ||b||, which a few ReLU
near-ties (each moving the gradient in one small patch) move far less than the maximum.
Both nets are built only as deep as relu5_1 (``load_vgg(up_to=...)``; the torch model is
cut there too).

    python scripts/bench.py                    # 256 and 512, 7 repeats
    python scripts/bench.py --sizes 256 --repeats 5 --arch vgg16
    python scripts/bench.py --device gpu       # CuPy vs torch CUDA, when both are present
    python scripts/bench.py --in-process       # both in one process (peak memory not separable)
    python scripts/bench.py --gemm             # minivgg's GEMM kernels vs numpy's BLAS, one thread
    python scripts/bench.py --isa avx2         # minivgg at a lower ISA level (minivgg/cpu/fast/isa.py)
    python scripts/bench.py --isa avx2 --products ours   # with our AVX2 GEMM kernel, not BLAS
    NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES= python scripts/bench.py --isa avx2 --torch-capability avx2
                                               # an AVX2-only machine, as far as this host can be one

The header says which kernels ran: minivgg's ISA level and GEMM (docs/gemm.md), numpy's
BLAS, torch's CPU capability (its own dispatch: AVX-512 on an AVX-512 host whatever numba
is told, unless --torch-capability sets ATEN_CPU_CAPABILITY for its worker), and each conv
layer's algorithm, forward and backward, at each size.
"""

import argparse
import contextlib
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

CONTENT = "relu4_2"
STYLE = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
LAYERS = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1"]


def _peak_rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def _inputs(size, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((1, 3, size, size)) * 50).astype(np.float32)
    t = (rng.standard_normal((1, 3, size, size)) * 50).astype(np.float32)
    return x, t


def _minivgg_step(arch, size, device, level=None):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    if level:  # (ISA level or None, products or None): this process's kernels for its whole life
        from minivgg.cpu.fast import isa

        isa.forced(level[0] or isa.level(), level[1]).__enter__()
    from minivgg import load_vgg
    from minivgg.losses import content_loss, gram_matrix, style_loss_deferred
    from minivgg.vgg import layer_names, random_weights

    # built to relu5_1, like the torch model below (conv5_2-conv5_4 are never used)
    net = load_vgg(arch, weights=random_weights(arch), pooling="avg", device=device,
                   up_to=max(LAYERS, key=layer_names(arch).index))
    xp = net.xp
    x, t = (xp.asarray(a) for a in _inputs(size))
    tf = net.forward(t, LAYERS)
    targets = {l: gram_matrix(tf[l])[0] for l in STYLE}
    P = tf[CONTENT].copy()
    del tf

    def step():
        f = net.forward(x, LAYERS)
        grads = {}
        loss, grads[CONTENT] = content_loss(f[CONTENT], P)
        for l in STYLE:  # as the methods do: each gradient made when the backward needs it
            v, grads[l] = style_loss_deferred(f[l], targets[l], 1e3 / len(STYLE))
            loss += 1e3 / len(STYLE) * v
        del f  # and, as they do, each layer's arrays let go once its backward is done
        dx = net.backward(grads, keep=False)
        if device == "gpu":
            xp.cuda.Device().synchronize()
        return loss, dx

    return step


def _minivgg_worker(conn, arch, size, device, level, capability):
    _serve(conn, _minivgg_step(arch, size, device, level))


def _torch_step(arch, size, device, double=False):
    """torch's iteration (float64 throughout when double: the reference for the gradients)."""
    import torch

    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from minivgg.vgg import layer_names, random_weights

    dev = "cuda" if device == "gpu" else "cpu"
    dtype = torch.float64 if double else torch.float32
    params = random_weights(arch)
    mods = []
    for name in layer_names(arch):
        if name.startswith("conv"):
            W, b = params[name]
            m = torch.nn.Conv2d(W.shape[1], W.shape[0], 3, 1, 1)
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(W))
                m.bias.copy_(torch.from_numpy(b))
        elif name.startswith("relu"):
            m = torch.nn.ReLU()
        else:
            m = torch.nn.AvgPool2d(2, 2)
        m.requires_grad_(False)
        mods.append((name, m.to(dev, dtype)))
    last = max(i for i, (n, _) in enumerate(mods) if n in LAYERS)
    mods = mods[: last + 1]

    def feats(x):
        out, h = {}, x
        for name, m in mods:
            h = m(h)
            if name in LAYERS:
                out[name] = h
        return out

    def gram(F):
        F = F.reshape(F.shape[1], -1)
        return F @ F.T

    x, t = (torch.from_numpy(a).to(dev, dtype) for a in _inputs(size))
    with torch.no_grad():
        tf = feats(t)
        targets = {l: gram(tf[l]) for l in STYLE}
        P = tf[CONTENT].clone()
        del tf

    def step():
        xx = x.clone().requires_grad_(True)
        f = feats(xx)
        loss = 0.5 * ((f[CONTENT] - P) ** 2).sum()
        for l in STYLE:
            N, M = f[l].shape[1], f[l].shape[2] * f[l].shape[3]
            loss = loss + 1e3 / len(STYLE) * ((gram(f[l]) - targets[l]) ** 2).sum() / (4 * N * N * M * M)
        (dx,) = torch.autograd.grad(loss, xx)
        if dev == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach()), dx

    if not double:  # the float64 gradient, computed once after the timing (and the peak)
        step.reference = lambda: _torch_step(arch, size, device, double=True)()[1]
    return step


def _torch_worker(conn, arch, size, device, level, capability):
    if capability:  # read by torch when it loads: this (spawned) worker has not loaded it yet
        os.environ["ATEN_CPU_CAPABILITY"] = capability
    _serve(conn, _torch_step(arch, size, device))


def _host(dx):
    """A gradient (numpy, CuPy or torch) as a float64 numpy array."""
    if hasattr(dx, "detach"):
        dx = dx.detach().cpu().numpy()
    elif hasattr(dx, "get"):
        dx = dx.get()
    return np.asarray(dx, np.float64)


def _serve(conn, step):
    conn.send("ready")
    dx = None
    while True:
        cmd = conn.recv()
        if cmd == "stop":
            conn.send((_peak_rss_mb(), _host(dx)))
            reference = getattr(step, "reference", None)
            conn.send(None if reference is None else _host(reference()))
            return
        t0 = time.perf_counter()
        loss, dx = step()
        conn.send((time.perf_counter() - t0, float(loss)))


def _compile_worker(arch, sizes, device, level):
    for size in sizes:
        _minivgg_step(arch, size, device, level)()


def fill_jit_cache(arch, sizes, device, level=None):
    """One minivgg iteration at each size in a throwaway process, so that numba's on-disk
    cache holds every kernel the timed worker will call: its peak is then the iteration's,
    not the one-time compilation's (LLVM's memory, ~170 MB more on a fresh clone)."""
    p = mp.get_context("spawn").Process(target=_compile_worker, args=(arch, sizes, device, level), daemon=True)
    p.start()
    p.join()


def bench_size_in_process(arch, size, repeats, warmup, device, with_torch, level=None, capability=None):
    """Both implementations in this process, interleaved (no per-implementation peak)."""
    steps = {"minivgg": _minivgg_step(arch, size, device, level)}
    if with_torch:
        steps["torch"] = _torch_step(arch, size, device)
    times = {n: [] for n in steps}
    losses, grads = {}, {}
    for r in range(warmup + repeats):
        for name, step in steps.items():
            t0 = time.perf_counter()
            loss, dx = step()
            dt = time.perf_counter() - t0
            losses[name], grads[name] = float(loss), dx
            if r >= warmup:
                times[name].append(dt)
    ref = _host(steps["torch"].reference()) if with_torch else None
    return {n: (statistics.median(ts), None, losses[n], _host(grads[n])) for n, ts in times.items()}, ref


def bench_size(arch, size, repeats, warmup, device, with_torch, level=None, capability=None):
    ctx = mp.get_context("spawn")
    workers = {"minivgg": _minivgg_worker}
    if with_torch:
        workers["torch"] = _torch_worker
    procs, conns = {}, {}
    for name, fn in workers.items():
        parent, child = ctx.Pipe()
        p = ctx.Process(target=fn, args=(child, arch, size, device, level, capability), daemon=True)
        p.start()
        procs[name], conns[name] = p, parent
    for name, c in conns.items():
        assert c.recv() == "ready", name
    times = {n: [] for n in workers}
    losses = {}
    for r in range(warmup + repeats):
        for name, c in conns.items():  # interleaved: one of each per round
            c.send("go")
            dt, loss = c.recv()
            losses[name] = loss
            if r >= warmup:
                times[name].append(dt)
    peaks, grads, ref = {}, {}, None
    for name, c in conns.items():
        c.send("stop")
        peaks[name], grads[name] = c.recv()
        ref = c.recv() if ref is None else ref
        procs[name].join()
    return {n: (statistics.median(ts), peaks[n], losses[n], grads[n]) for n, ts in times.items()}, ref


def _capability_worker(conn, capability):
    if capability:
        os.environ["ATEN_CPU_CAPABILITY"] = capability
    import torch

    conn.send(f"{torch.__version__}, {torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}"
              + (f" (ATEN_CPU_CAPABILITY={capability})" if capability else ""))


def _torch_capability(capability):
    """torch's kernels as its worker will see them (a throwaway process: the variable is read at import)."""
    parent, child = mp.get_context("spawn").Pipe()
    p = mp.get_context("spawn").Process(target=_capability_worker, args=(child, capability), daemon=True)
    p.start()
    line = parent.recv()
    p.join()
    return line


def _mb(peak):
    return "-" if peak is None else f"{peak:.0f}"


# (m, K, n) of the GEMMs one iteration does at 256x256: Winograd bands (Cout x Cin @ Cin x
# tiles) and im2col layers (Cout x 9 Cin @ 9 Cin x pixels), plus the two transposed ones
GEMM_SHAPES = [(64, 64, 1024), (128, 128, 1024), (256, 256, 512), (512, 256, 256), (512, 512, 256),
               (512, 4608, 256), (256, 2304, 1024)]


def _blas_name():
    from threadpoolctl import threadpool_info

    info = [f"{d['internal_api']} {d.get('architecture')}" for d in threadpool_info() if d["user_api"] == "blas"]
    return ", ".join(info) or "unknown"


def bench_gemm(repeats, level=None):
    """GFLOP/s of minivgg's GEMM kernels (each level this host supports, or ``level``'s) and
    of numpy's BLAS, one thread each, interleaved."""
    from threadpoolctl import threadpool_limits

    from minivgg.cpu.fast import gemm, isa

    levels = [lv for lv in ("avx512", "avx2") if lv in isa.supported() and (level is None or lv == level)]
    rng = np.random.default_rng(0)
    print(f"GEMM, one thread, float32, median of {repeats}; {isa.describe()}")
    with threadpool_limits(1, "blas"):
        print(f"numpy's BLAS: {_blas_name()}")
        names = [f"{lv} {gemm.KERNELS[lv].mr}x{gemm.KERNELS[lv].nr}" for lv in levels]
        print(f"{'m':>5} {'K':>5} {'n':>5} | {'A layout':>8} | " + " | ".join(f"{n:>11} GF/s" for n in names)
              + f" | {'BLAS GF/s':>9} | " + " | ".join(f"{lv}/BLAS" for lv in levels))
        for m, K, n in GEMM_SHAPES:
            B = rng.standard_normal((K, n), dtype=np.float32)
            C = np.empty((m, n), np.float32)
            for layout in ("rows", "T"):
                A = rng.standard_normal((m, K), dtype=np.float32)
                if layout == "T":
                    A = np.ascontiguousarray(A.T).T
                flops = 2 * m * n * K
                inner = max(1, int(2e8 / flops))
                times = {lv: [] for lv in levels + ["blas"]}
                for lv in levels:
                    gemm.gemm(A, B, C, level=lv)
                for _ in range(repeats):
                    for lv in levels + ["blas"]:
                        t = time.perf_counter()
                        for _ in range(inner):
                            if lv == "blas":
                                np.matmul(A, B, out=C)
                            else:
                                gemm.gemm(A, B, C, level=lv)
                        times[lv].append((time.perf_counter() - t) / inner)
                gf = {lv: flops / statistics.median(ts) / 1e9 for lv, ts in times.items()}
                print(f"{m:>5} {K:>5} {n:>5} | {layout:>8} | " + " | ".join(f"{gf[lv]:>16.0f}" for lv in levels)
                      + f" | {gf['blas']:>9.0f} | " + " | ".join(f"{gf[lv] / gf['blas']:>{len(lv) + 5}.2f}" for lv in levels))


def kernels_report(arch, sizes):
    """Lines saying which kernels minivgg runs: the ISA level, the GEMM, and per size each
    conv layer's algorithm (ops.py's choice, forward / backward to the input)."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from minivgg.cpu import ops
    from minivgg.cpu.fast import gemm, isa
    from minivgg.vgg import conv_specs

    k = gemm.kernel()
    lines = [f"minivgg: {isa.describe()}; GEMM: " + (f"ours, {isa.level()} {k.mr}x{k.nr} micro-kernel" if k else
                                                    f"numpy's BLAS ({_blas_name()})")]
    for size in sizes:
        algos = []
        for name, cin, cout in conv_specs(arch):
            blk = int(name[4])
            h = size >> (blk - 1)
            x = np.broadcast_to(np.float32(0), (1, cin, h, h))  # shapes only, no memory
            W = np.broadcast_to(np.float32(0), (cout, cin, 3, 3))
            f = "W" if ops._winograd_applies(x, W, 1, 1, cin) else "I"
            b = "W" if ops._winograd_applies(x, W, 1, 1, cout) else "I"
            algos.append(f"{name} {f}/{b}")
            if name == "conv5_1":
                break
        lines.append(f"  conv at {size} (W winograd, I im2col; forward/backward): " + ", ".join(algos))
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,512", help="comma-separated image sizes (square), default 256,512")
    ap.add_argument("--repeats", type=int, default=7, help="timed iterations per implementation (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed iterations first (JIT compile, caches)")
    ap.add_argument("--arch", default="vgg19", choices=["vgg16", "vgg19"])
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="gpu: CuPy vs torch CUDA")
    ap.add_argument("--no-torch", action="store_true", help="time minivgg alone")
    ap.add_argument("--in-process", action="store_true",
                    help="run both implementations in this one process (their threads share it; no peak memory)")
    ap.add_argument("--gemm", action="store_true",
                    help="instead: GFLOP/s of minivgg's GEMM kernels vs numpy's BLAS on the shapes of VGG's layers")
    ap.add_argument("--isa", choices=["avx512", "avx2", "blas"],
                    help="minivgg's ISA level for this run (at most the host's; default: MINIVGG_ISA, else the host's)")
    ap.add_argument("--products", choices=["ours", "blas"],
                    help="minivgg's products in its kernel of the level or numpy's BLAS (default: the level's choice)")
    ap.add_argument("--torch-capability", choices=["avx512", "avx2", "default"],
                    help="ATEN_CPU_CAPABILITY for torch's worker (torch picks its own kernels otherwise)")
    args = ap.parse_args(argv)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from minivgg.cpu.fast import isa

    if args.isa and args.isa not in isa.supported():
        print(f"error: --isa {args.isa}: this host's level is {isa.host_level()} (it supports {', '.join(isa.supported())})",
              file=sys.stderr)
        sys.exit(2)
    if args.products == "ours" and (args.isa or isa.level()) == "blas":
        print("error: --products ours: the ISA level is blas, which has no kernel of ours", file=sys.stderr)
        sys.exit(2)
    if args.gemm:
        bench_gemm(args.repeats, args.isa if args.isa != 'blas' else None)
        return
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch  # noqa: F401
        except ImportError:
            print("torch not installed: timing minivgg alone", file=sys.stderr)
            with_torch = False
    import platform

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; device {args.device}; {args.arch}, avg pooling")
    print(f"one iteration = forward to {', '.join(LAYERS)} + content/style losses + backward to the image")
    where = "in one process" if args.in_process else "separate worker processes"
    print(f"median of {args.repeats} after {args.warmup} warm-up, interleaved, {where}")
    sizes = [int(s) for s in args.sizes.split(",")]
    level = (args.isa, args.products) if args.isa or args.products else None
    with contextlib.ExitStack() as stack:  # the report at the run's level
        if level:
            stack.enter_context(isa.forced(args.isa or isa.level(), args.products))
        for line in kernels_report(args.arch, sizes):
            print(line)
    if with_torch:
        print(f"torch {_torch_capability(args.torch_capability)}")
    print()
    hdr = (f"{'size':>5} | {'minivgg s/iter':>14} | {'torch s/iter':>12} | {'ratio':>6} | {'minivgg peak MB':>15} | "
           f"{'torch peak MB':>13} | loss rel diff | grad rel diff | minivgg vs f64 | torch vs f64 | grad vs torch (norm)")
    if not args.in_process:
        fill_jit_cache(args.arch, sizes, args.device, level)
    print(hdr)
    print("-" * len(hdr))
    for size in sizes:
        run = bench_size_in_process if args.in_process else bench_size
        res, ref = run(args.arch, size, args.repeats, args.warmup, args.device, with_torch, level, args.torch_capability)
        m = res["minivgg"]
        if with_torch:
            t = res["torch"]
            # the last iteration's gradients (the same input every iteration), max|a - b| / max|b|,
            # against each other and against torch in float64
            def rel(a, b):
                return np.abs(a - b).max() / np.abs(b).max()

            print(f"{size:>5} | {m[0]:>14.3f} | {t[0]:>12.3f} | {m[0] / t[0]:>6.2f} | {_mb(m[1]):>15} | {_mb(t[1]):>13} | "
                  f"{abs(m[2] - t[2]) / abs(t[2]):>13.1e} | {rel(m[3], t[3]):>13.1e} | {rel(m[3], ref):>14.1e} | {rel(t[3], ref):>12.1e} | "
                  f"{np.linalg.norm(m[3] - t[3]) / np.linalg.norm(t[3]):>20.1e}")
        else:
            print(f"{size:>5} | {m[0]:>14.3f} | {'-':>12} | {'-':>6} | {_mb(m[1]):>15} | {'-':>13} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
