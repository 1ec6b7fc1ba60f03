"""Hostile and broken inputs against ``weights_tools convert|inspect|normalize`` and
``--weights`` loading: every case must fail cleanly (exit 2, one ``error:`` line, no
traceback, no file left, nothing from a planted secret anywhere, no code run), or, for
a mutated genuine file, convert to finite weights.

The default suite runs every generator of tests/fuzz_gen.py once (seed 0, about 350
cases) in one child process under an address-space limit and a per-case alarm, plus the
signal tests. ``python -m pytest -m fuzz tests/test_fuzz.py`` runs the long part: more
seeds and mutations, of full-size genuine files too, each case in a process of its
own, so that a crash shows as a signal and a hang as a timeout. docs/security.md
records the counts.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import fuzz_gen as fg  # noqa: E402

MEM_LIMIT = 3 << 30  # address space of a child: a bomb fails as MemoryError, not by taking the machine
CASE_SECONDS = 20
CHILD_ENV = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1",
                 PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _long_part(request):
    if "fuzz" not in (request.config.getoption("-m") or ""):
        pytest.skip("long fuzzing: run with -m fuzz")


def _run_batch(tmp_path, cases):
    job, res = tmp_path / "job.json", tmp_path / "res.json"
    job.write_text(json.dumps({"cases": cases, "mem_bytes": MEM_LIMIT, "seconds": CASE_SECONDS}))
    r = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_gen.py"), "batch", str(job), str(res)],
                       env=CHILD_ENV, capture_output=True, text=True, timeout=600)
    last = [line for line in r.stderr.splitlines() if line.startswith("case ")][-1:]
    assert r.returncode == 0, f"the batch died ({r.returncode}) at {last}: {r.stderr[-2000:]}"
    return json.loads(res.read_text())


def _problems(rec, case, token, d):
    """What is wrong with one case's record (an empty list when it held)."""
    bad = []
    if rec["exception"]:
        bad.append(f"escaped: {rec['exception']} {rec.get('traceback', '')[-800:]}")
        return bad
    err = rec["stderr"]
    lines = err.splitlines()
    ok_success = rec["status"] == 0 and (case.get("may_succeed") or case["argv"][0] == "inspect")
    if not ok_success:
        if rec["status"] != 2:
            bad.append(f"exit status {rec['status']}")
        if len(lines) != 1 or not lines[0].startswith("error: "):
            bad.append(f"stderr is not one error line: {err[:400]!r}")
        if rec["new_files"]:
            bad.append(f"left files {rec['new_files']}")
    if "Traceback" in err and not lines[0].startswith("error: "):
        bad.append("traceback")
    for text, what in ((err, "stderr"), (rec["stdout"], "stdout")):
        if any(not (c.isprintable() or c == "\n") for c in text):
            bad.append(f"{what} holds control characters: {text[:200]!r}")
    if any(len(line) > 1000 for line in lines):
        bad.append("an error line longer than 1000 characters")
    for blob in (err.encode(), rec["stdout"].encode()):
        if token[:16] in blob or token[-16:] in blob:
            bad.append("the secret appears in the output")
    for p in rec["outputs"]:
        if os.path.isfile(p):
            data = open(p, "rb").read()
            if token[:16] in data or token[-16:] in data:
                bad.append(f"the secret appears in {p}")
            if p.endswith(".h5") and case.get("may_succeed"):
                from minivgg import weights as mw

                params, _ = mw.read_weights(p)  # finite, checked attributes
                assert params
    if os.path.exists(os.path.join(d, fg.CANARY)):
        bad.append("the canary exists: code from a file ran")
    return bad


def _check_all(cases, results, token, d):
    by_name = {c["name"]: c for c in cases}
    assert len(results) == len(cases)
    failures = []
    for rec in results:
        probs = _problems(rec, by_name[rec["name"]], token, d)
        if probs:
            failures.append(f"{rec['cls']}/{rec['name']}: {'; '.join(probs)}")
    assert not failures, f"{len(failures)} of {len(results)} cases failed:\n" + "\n".join(failures[:30])
    return len(results)


def test_fuzz_every_class_once(tmp_path):
    """All generators, seed 0, mutations of small genuine files: one guarded batch."""
    d = str(tmp_path / "cases")
    cases, token = fg.make_cases(d, seed=0, mutations=6)
    classes = {c["cls"] for c in cases}
    assert {"pickle_hostile", "pickle_tensor", "pickle_build", "pickle_bomb", "zip", "hdf5", "hdf5_attrs", "mat",
            "images", "special", "mutation"} <= classes
    results = _run_batch(tmp_path, cases)
    n = _check_all(cases, results, token.encode() if isinstance(token, str) else token, d)
    assert n >= 300
    slow = [(r["name"], round(r["seconds"], 1)) for r in results if r["seconds"] > 5]
    assert not slow, f"cases that took more than 5 s to fail: {slow}"


# ------------------------------------------------------------------ signals during the write

SIGNAL_CHILD = textwrap.dedent("""
    import os, signal, sys
    import h5py
    sys.path.insert(0, {here!r})
    from weights_tools import cli
    calls = [0]
    original = h5py.Group.create_dataset
    def create_dataset(self, *a, **kw):
        calls[0] += 1
        if calls[0] == 5:  # in the middle of the write, with the temporary file open
            os.kill(os.getpid(), signal.{sig})
        return original(self, *a, **kw)
    h5py.Group.create_dataset = create_dataset
    sys.exit(cli.main(["convert", {src!r}, "--out", {out!r}]))
""")


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM", "SIGHUP"])
def test_signal_during_the_write_leaves_nothing(tmp_path, sig):
    import weights_gen as gen

    src = str(tmp_path / "src.h5")
    fg._our_file(src, params=gen.random_params("vgg16", seed=0))
    out = str(tmp_path / "out" / "o.h5")
    os.makedirs(os.path.dirname(out))
    code = SIGNAL_CHILD.format(here=HERE, sig=sig, src=src, out=out)
    r = subprocess.run([sys.executable, "-c", code], env=CHILD_ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 130, (r.returncode, r.stderr)
    assert r.stderr.strip().splitlines() == ["error: interrupted"], r.stderr
    assert os.listdir(os.path.dirname(out)) == [], "a temporary or partial output was left"


# ------------------------------------------------------------------ the long part

@pytest.mark.fuzz
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzz_more_seeds_batched(tmp_path, request, seed):
    _long_part(request)
    d = str(tmp_path / "cases")
    cases, token = fg.make_cases(d, seed=seed, mutations=80)
    results = _run_batch(tmp_path, cases)
    _check_all(cases, results, token, d)


def _run_isolated(tmp_path, case, i):
    job, res = tmp_path / f"job{i}.json", tmp_path / f"res{i}.json"
    job.write_text(json.dumps({"case": case, "mem_bytes": MEM_LIMIT, "seconds": CASE_SECONDS}))
    try:
        r = subprocess.run([sys.executable, os.path.join(HERE, "fuzz_gen.py"), "one", str(job), str(res)],
                           env=CHILD_ENV, capture_output=True, text=True, timeout=CASE_SECONDS + 30)
    except subprocess.TimeoutExpired:
        return {"name": case["name"], "cls": case["cls"], "exception": "hang (killed)", "stderr": "", "stdout": "",
                "status": None, "new_files": [], "outputs": []}
    if r.returncode < 0 or not res.exists():
        return {"name": case["name"], "cls": case["cls"], "exception": f"child died: rc {r.returncode}",
                "stderr": r.stderr[-500:], "stdout": "", "status": None, "new_files": [], "outputs": []}
    return json.loads(res.read_text())


@pytest.mark.fuzz
def test_fuzz_full_size_mutations_isolated(tmp_path, request):
    """Mutations of genuine full-size VGG-16 files, each case in a process of its own."""
    _long_part(request)
    d = str(tmp_path / "cases")
    os.makedirs(os.path.join(d, "out"))
    os.mkfifo(os.path.join(d, "fifo"))
    rng = np.random.default_rng(11)
    secret = os.path.join(d, "secret.txt")
    token = fg.write_secret(secret, rng)
    cases = fg.gen_mutations(rng, d, secret, per_kind=15, full=True)
    results = [_run_isolated(tmp_path, c, i) for i, c in enumerate(cases)]
    _check_all(cases, results, token, d)


@pytest.mark.fuzz
def test_fuzz_every_class_isolated(tmp_path, request):
    """Every generated case once more, each in a process of its own (a segfault or a
    hang in a library shows here as what it is)."""
    _long_part(request)
    d = str(tmp_path / "cases")
    cases, token = fg.make_cases(d, seed=4, mutations=10)
    results = [_run_isolated(tmp_path, c, i) for i, c in enumerate(cases)]
    _check_all(cases, results, token, d)


MEMORY_CHILD = textwrap.dedent("""
    import sys
    sys.path.insert(0, {here!r})
    from weights_tools import cli
    rc = cli.main(["convert", {src!r}, "--out", {out!r}])
    hwm = [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmHWM")][0]
    print(int(hwm) * 1024, file=sys.stderr)
    sys.exit(rc)
""")
IMPORTS_CHILD = ("import weights_tools.cli, weights_tools.convert, h5py, scipy.io, numpy;"
                 "print(int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]) * 1024)")


@pytest.mark.fuzz
def test_conversion_peak_memory_is_a_small_multiple_of_the_weights(tmp_path, request):
    """Peak resident memory of a conversion, above what the imports take, at most 3x the
    weights it writes, for every reader (docs/security.md has the measured factors)."""
    _long_part(request)
    import weights_gen as gen

    files = fg.genuine_files(str(tmp_path), full=True)
    params = gen.random_params("vgg16", seed=3)
    weights = sum(W.nbytes + b.nbytes for W, b in params.values())
    base = int(subprocess.run([sys.executable, "-c", IMPORTS_CHILD], env=CHILD_ENV, capture_output=True,
                              text=True).stdout)
    for kind, src in files.items():
        out = str(tmp_path / f"out-{kind}.h5")
        r = subprocess.run([sys.executable, "-c", MEMORY_CHILD.format(here=HERE, src=src, out=out)], env=CHILD_ENV,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, (kind, r.stderr)
        peak = int(r.stderr.strip().splitlines()[-1])
        assert peak - base <= 3 * weights, (kind, peak / 2**20, base / 2**20, weights / 2**20)
