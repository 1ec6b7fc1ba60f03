"""``minivgg info`` (minivgg/info.py): the options, CPU, kernels, caches and GPU, as text or JSON."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a child in which importing torch fails: info must not need it
NO_TORCH = ("import sys\n"
            "class _NoTorch:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('torch is blocked in this test')\n"
            "sys.meta_path.insert(0, _NoTorch())\n"
            "from minivgg.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")


def _info(*args, **env):
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), **env)
    for v in ("MINIVGG_ISA", "MINIVGG_GEMM", "MINIVGG_CONV"):
        if v not in env:
            e.pop(v, None)
    return subprocess.run([sys.executable, "-c", NO_TORCH, "info", *args], capture_output=True, text=True, env=e,
                          timeout=300)


def test_info_text_names_the_level_and_the_kernels():
    from minivgg.cpu.fast import isa

    r = _info()
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert f"isa level: {isa.host_level()}" in out
    for words in ("options (minivgg/options.py", "conv ", "cpu: ", "numpy's BLAS", "numba ", "malloc",
                  "numba cache", "weights cache", "emulation cache", "gpu: "):
        assert words in out, words


def test_info_json_parses_and_reports_sources(tmp_path):
    r = _info("--json", MINIVGG_CONV="im2col", MINIVGG_HOME=str(tmp_path))
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    rows = {row["field"]: row for row in d["options"]}
    assert rows["conv"]["value"] == "im2col" and rows["conv"]["source"] == "env"
    assert rows["winograd_weights"]["source"] == "default"
    assert d["kernels"]["conv"].startswith("im2col")
    assert d["kernels"]["level"] in ("avx512", "avx2", "blas")
    assert d["caches"]["weights"]["dir"] == str(tmp_path) and d["caches"]["weights"]["files"] == []
    assert set(d) >= {"cpu", "blas", "numba", "runtime", "caches", "gpu", "errors"}


def test_info_reports_a_bad_variable_and_fails():
    r = _info("--json", MINIVGG_CONV="fft")
    assert r.returncode == 2
    d = json.loads(r.stdout)
    assert any("MINIVGG_CONV=fft" in e for e in d["errors"])


@pytest.mark.parametrize("level", ["blas"])
def test_info_follows_minivgg_isa(level):
    r = _info(MINIVGG_ISA=level)
    assert r.returncode == 0, r.stderr
    assert f"isa level: {level}" in r.stdout and "numpy's BLAS" in r.stdout
