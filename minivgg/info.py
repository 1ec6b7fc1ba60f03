"""``minivgg info``: what this process would run with, and why.

The options in force (each with its source: the default, the environment, or code), the
CPU and the features the kernels care about, the ISA level and the kernels it selects
(GEMM micro-kernel, Winograd or im2col, the BLAS numpy uses), numba's version, target and
threads, the process-wide tuning (minivgg/runtime.py), the caches (numba's, the weights',
the GPU emulation's) and whether CuPy sees a GPU. ``--json`` prints the same as one JSON
object. Nothing here compiles a kernel or needs torch; reading the report changes nothing
(the caches are looked at, not created).
"""

import json
import os
import platform
import sys

import numpy as np

# LLVM's names of the features that decide what the kernels can use
FEATURES = ("sse4.2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512dq", "avx512bw", "avx512vl", "avx512vnni",
            "avx512bf16", "avxvnni", "amx-tile", "neon", "sve", "sve2")


def _cpu():
    model = None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    model = value.strip()
                    break
    except OSError:
        pass
    out = {"model": model or platform.processor() or platform.machine(), "machine": platform.machine(),
           "cores_usable": None, "llvm_name": None, "features": []}
    try:
        out["cores_usable"] = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        out["cores_usable"] = os.cpu_count()
    try:
        import llvmlite.binding as ll

        feats = ll.get_host_cpu_features()
        out["llvm_name"] = ll.get_host_cpu_name()
        out["features"] = [f for f in FEATURES if feats.get(f)]
    except Exception as e:  # LLVM cannot read this host's features
        out["features_error"] = str(e)
    return out


def _blas():
    try:
        from threadpoolctl import threadpool_info

        libs = [d for d in threadpool_info() if d.get("user_api") == "blas"]
    except ImportError:
        libs = []
    if libs:
        d = libs[0]
        return {"library": d.get("internal_api"), "version": d.get("version"), "architecture": d.get("architecture"),
                "threads": d.get("num_threads"), "path": d.get("filepath")}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        return {"library": cfg.get("name"), "version": cfg.get("version"), "architecture": None, "threads": None,
                "path": None}
    except Exception:
        return {"library": "unknown", "version": None, "architecture": None, "threads": None, "path": None}


def _kernels(errors):
    from .cpu import ops
    from .cpu.fast import gemm, isa

    out = {"host_level": isa.host_level()}
    try:
        out["level"] = isa.level()
        out["gemm"] = isa.gemm_choice()
        k = gemm.kernel()
        out["gemm_kernel"] = (f"minivgg {out['level']} {k.mr}x{k.nr} micro-kernel ({k.lanes}-float vectors)"
                              if k is not None else "numpy's BLAS")
        out["describe"] = isa.describe()
    except Exception as e:  # an invalid MINIVGG_ISA / MINIVGG_GEMM: reported, not raised
        errors.append(str(e))
    try:
        conv = ops.conv_algorithm()
        out["conv"] = ("Winograd F(4x4, 3x3) where it applies (3x3 float32 layers, maps of at least "
                       f"{ops.WINOGRAD_MIN_TILES} tiles, {ops.WINOGRAD_MIN_CHANNELS}+ channels summed), im2col elsewhere"
                       if conv == "winograd" else "im2col + GEMM for every layer")
        out["winograd_weights"] = ops.winograd_weights_mode()
    except Exception as e:
        errors.append(str(e))
    return out


def _numba():
    import numba
    from numba.core import config

    from . import warmup

    out = {"version": numba.__version__, "target_cpu": warmup.target_cpu(),
           "cpu_name_env": config.CPU_NAME, "cpu_features_env": config.CPU_FEATURES,
           "threads": numba.config.NUMBA_NUM_THREADS}
    try:
        from .cpu.fast import threads

        out["minivgg_threads"] = threads.num_threads()
    except Exception:
        out["minivgg_threads"] = None
    return out


def _caches():
    from . import warmup, weights
    from .gpu import emulate

    out = {}
    cached, n = warmup.cached_for_this_cpu()
    out["numba"] = {"dirs": warmup.cache_dirs(), "kernels": n, "cached_for_this_cpu": cached}
    home = weights.cache_dir()
    files = []
    if os.path.isdir(home):
        for name in sorted(os.listdir(home)):
            if name.endswith(".h5"):
                files.append({"file": name, "bytes": os.path.getsize(os.path.join(home, name))})
    default = {arch: weights.default_weights_path(arch) for arch in weights.ARCHS}
    out["weights"] = {"dir": home, "exists": os.path.isdir(home), "files": files, "default": default}
    em = emulate.cache_path()
    libs = sorted(p.name for p in em.glob("*.so")) if em.is_dir() else []
    out["emulation"] = {"dir": str(em), "exists": em.is_dir(), "libraries": len(libs)}
    return out


def _gpu():
    try:
        import cupy
    except Exception as e:
        return {"cupy": None, "devices": 0, "note": f"CuPy not importable ({type(e).__name__})"}
    out = {"cupy": cupy.__version__, "devices": 0}
    try:
        out["devices"] = cupy.cuda.runtime.getDeviceCount()
        if out["devices"]:
            props = cupy.cuda.runtime.getDeviceProperties(0)
            name = props.get("name")
            out["name"] = name.decode() if isinstance(name, bytes) else name
            out["memory_bytes"] = props.get("totalGlobalMem")
    except Exception as e:  # no driver, no device
        out["note"] = f"no CUDA device ({type(e).__name__})"
    return out


def collect():
    """Everything ``minivgg info`` reports, as a dict of plain values."""
    from . import options, runtime

    errors = []
    opts = options.explain()
    errors += [row["error"] for row in opts if "error" in row]
    report = {
        "python": sys.version.split()[0], "platform": platform.platform(), "numpy": np.__version__,
        "options": opts, "unknown_variables": options.unknown_variables(),
        "cpu": _cpu(), "kernels": _kernels(errors), "blas": _blas(), "numba": _numba(),
        "runtime": runtime.RUNTIME.report(), "caches": _caches(), "gpu": _gpu(),
    }
    effective = {"num_threads": report["numba"]["minivgg_threads"], "isa": report["kernels"].get("level"),
                 "gemm": report["kernels"].get("gemm"), "home": report["caches"]["weights"]["dir"]}
    for row in opts:  # what a default of None turns into on this host
        if row.get("value") is None and effective.get(row["field"]) is not None:
            row["effective"] = effective[row["field"]]
    report["errors"] = list(dict.fromkeys(errors))
    return report


def _mib(n):
    return f"{n / 2**20:.0f} MiB"


def format_text(r):
    lines = []
    add = lines.append
    add(f"minivgg on Python {r['python']}, numpy {r['numpy']}, {r['platform']}")
    add("")
    add("options (minivgg/options.py; source: default, env or using):")
    for row in r["options"]:
        value = row.get("error") or row["value"]
        if "effective" in row:
            value = row["effective"]
        raw = f" ({row['variable']}={row['raw']})" if row["source"] == "env" else ""
        add(f"  {row['field']:17} {str(value):20} {row['source']}{raw}")
    if r["unknown_variables"]:
        add(f"  not options (typos?): {', '.join(r['unknown_variables'])}")
    c = r["cpu"]
    add("")
    add(f"cpu: {c['model']} ({c['machine']}, LLVM {c['llvm_name']}, {c['cores_usable']} usable cores)")
    add(f"  features: {' '.join(c['features']) or 'none of ' + ', '.join(FEATURES[:6])}")
    k = r["kernels"]
    add("")
    add(f"isa level: {k.get('level', '?')} (host level {k['host_level']})")
    add(f"  products: {k.get('gemm', '?')}: {k.get('gemm_kernel', '?')}")
    add(f"  convolution: {k.get('conv', '?')}")
    add(f"  winograd weights: {k.get('winograd_weights', '?')}")
    b = r["blas"]
    arch = f", kernels {b['architecture']}" if b.get("architecture") else ""
    add(f"  numpy's BLAS: {b['library']} {b['version'] or ''}{arch}".rstrip())
    n = r["numba"]
    add("")
    add(f"numba {n['version']}: target {n['target_cpu']}"
        + (f" (NUMBA_CPU_NAME={n['cpu_name_env']})" if n["cpu_name_env"] else "")
        + f"; minivgg's pool {n['minivgg_threads']} threads, numba's {n['threads']}")
    rt = r["runtime"]
    add(f"runtime of this process (minivgg/runtime.py): malloc {rt['malloc']['note']}; pool {rt['pool']['note']}")
    ca = r["caches"]
    add("")
    nb = ca["numba"]
    hit = "unknown" if nb["cached_for_this_cpu"] is None else f"{nb['cached_for_this_cpu']} of {nb['kernels']}"
    add(f"numba cache: {', '.join(nb['dirs']) or 'unknown'} (kernels cached for this cpu: {hit})")
    w = ca["weights"]
    add(f"weights cache: {w['dir']}" + ("" if w["exists"] else " (not there yet)"))
    for f in w["files"]:
        add(f"  {f['file']} ({_mib(f['bytes'])})")
    for arch, path in w["default"].items():
        add(f"  {arch} uses: {path or 'random weights (none cached)'}")
    e = ca["emulation"]
    add(f"emulation cache: {e['dir']}" + (f" ({e['libraries']} libraries)" if e["exists"] else " (not there yet)"))
    g = r["gpu"]
    add("")
    if g["devices"]:
        add(f"gpu: CuPy {g['cupy']}, {g['devices']} device(s): {g.get('name')} ({_mib(g.get('memory_bytes') or 0)})")
    else:
        add(f"gpu: none ({g.get('note') or 'CuPy ' + str(g['cupy']) + ', no device'})")
    for err in r["errors"]:
        add(f"error: {err}")
    return "\n".join(lines) + "\n"


def add_parser(subparsers):
    p = subparsers.add_parser("info", help="the options, CPU features, kernels, caches and GPU this process would use",
                              description=__doc__.split("\n\n")[1])
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.set_defaults(_run=run)
    return p


def run(args):
    r = collect()
    if args.json:
        sys.stdout.write(json.dumps(r, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(format_text(r))
    return 2 if r["errors"] else 0

