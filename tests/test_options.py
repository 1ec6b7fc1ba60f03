"""minivgg/options.py: every MINIVGG_* variable parsed and checked in one place, overridable
in code without touching os.environ; minivgg/runtime.py: the process-wide tuning, recorded."""

import ast
import os
import pathlib

import pytest

from minivgg import options, runtime
from minivgg.errors import MiniVGGError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_env(monkeypatch):
    for v in options.VARIABLES:
        monkeypatch.delenv(v, raising=False)
    return monkeypatch


def test_defaults(clean_env):
    assert options.current() == options.RuntimeOptions()
    assert all(row["source"] == "default" for row in options.explain())


@pytest.mark.parametrize("variable, raw, field, value", [
    ("MINIVGG_NUM_THREADS", "3", "num_threads", 3),
    ("MINIVGG_NUM_THREADS", " 0 ", "num_threads", 1),  # below 1 counts as 1, as before
    ("MINIVGG_NUM_THREADS", "", "num_threads", None),  # empty: unset
    ("MINIVGG_CONV", "im2col", "conv", "im2col"),
    ("MINIVGG_CONV", "IM2COL", "conv", "im2col"),
    ("MINIVGG_CONV", "winograd", "conv", "winograd"),
    ("MINIVGG_WINOGRAD_WEIGHTS", " Stream ", "winograd_weights", "stream"),
    ("MINIVGG_ISA", "AVX2", "isa", "avx2"),
    ("MINIVGG_GEMM", "blas", "gemm", "blas"),
    ("MINIVGG_MALLOC", "default", "malloc", "default"),
    ("MINIVGG_HOME", "/tmp/x y", "home", "/tmp/x y"),
    ("MINIVGG_WEIGHTS", "w.h5", "weights", "w.h5"),
    ("MINIVGG_KERNELS_DIR", "/k", "kernels_dir", "/k"),
    ("MINIVGG_EMULATE_SANITIZE", "1", "emulate_sanitize", True),
    ("MINIVGG_EMULATE_SANITIZE", "0", "emulate_sanitize", False),
    ("MINIVGG_EMULATE_CACHE", "/c", "emulate_cache", "/c"),
    ("MINIVGG_FETCH_BASE", "http://mirror/", "fetch_base", "http://mirror/"),
])
def test_each_variable_parses(clean_env, variable, raw, field, value):
    clean_env.setenv(variable, raw)
    assert options.get(field) == value
    assert getattr(options.current(), field) == value
    assert options.source(field) == ("default" if raw.strip() == "" else "env")


@pytest.mark.parametrize("variable, raw, words", [
    ("MINIVGG_NUM_THREADS", "four", ["MINIVGG_NUM_THREADS=four", "whole number"]),
    ("MINIVGG_CONV", "direct", ["MINIVGG_CONV=direct", "winograd, im2col"]),
    ("MINIVGG_WINOGRAD_WEIGHTS", "some", ["MINIVGG_WINOGRAD_WEIGHTS=some", "auto, keep, large, stream"]),
    ("MINIVGG_ISA", "sse9", ["MINIVGG_ISA=sse9", "avx512, avx2, blas"]),
    ("MINIVGG_GEMM", "fast", ["MINIVGG_GEMM=fast", "ours, blas"]),
    ("MINIVGG_MALLOC", "off", ["MINIVGG_MALLOC=off", "tuned, default"]),
    ("MINIVGG_EMULATE_SANITIZE", "maybe", ["MINIVGG_EMULATE_SANITIZE=maybe", "1 or 0"]),
])
def test_bad_values_name_the_variable_and_the_choices(clean_env, variable, raw, words):
    clean_env.setenv(variable, raw)
    field = next(o.field for o in options.OPTIONS if o.variable == variable)
    with pytest.raises(MiniVGGError) as e:
        options.get(field)
    for w in words:
        assert w in str(e.value)
    with pytest.raises(MiniVGGError):
        options.current()
    row = next(r for r in options.explain() if r["variable"] == variable)  # reports do not raise
    assert variable in row["error"]


def test_using_overrides_without_touching_environ(clean_env):
    clean_env.setenv("MINIVGG_CONV", "im2col")
    before = dict(os.environ)
    with options.using(conv="winograd", num_threads=2):
        assert options.get("conv") == "winograd" and options.get("num_threads") == 2
        assert options.source("conv") == "using"
        with options.using(num_threads=5):  # nested: the innermost wins, the rest stays
            assert options.current().num_threads == 5 and options.get("conv") == "winograd"
        assert options.get("num_threads") == 2
        assert dict(os.environ) == before
    assert options.get("conv") == "im2col" and options.get("num_threads") is None
    undo = options.push(winograd_weights="stream")
    assert options.get("winograd_weights") == "stream"
    undo()
    assert options.get("winograd_weights") == "auto"
    with options.using(conv=None):  # None: as if the variable were unset
        assert options.get("conv") == "winograd"


def test_using_checks_its_values(clean_env):
    with pytest.raises(MiniVGGError, match="unknown option 'colour'"):
        with options.using(colour="red"):
            pass
    with pytest.raises(MiniVGGError, match="winograd, im2col"):
        options.push(conv="fft")
    with pytest.raises(MiniVGGError, match="whole number"):
        options.push(num_threads="2")
    assert options._OVERRIDES == ()


def test_the_kernels_read_the_options(clean_env):
    from minivgg.cpu import ops
    from minivgg.cpu.fast import isa, threads

    with options.using(conv="im2col", winograd_weights="keep", num_threads=3):
        assert ops.conv_algorithm() == "im2col" and ops.winograd_weights_mode() == "keep"
        assert threads.num_threads() == 3
    with options.using(isa="blas"):
        assert isa.level() == "blas" and isa.gemm_choice() == "blas"
        with options.using(gemm="ours"):
            with pytest.raises(MiniVGGError, match=r"options.using\(gemm=...\)=ours: the ISA level is blas"):
                isa.gemm_choice()


def test_unknown_variables_are_listed(clean_env):
    clean_env.setenv("MINIVGG_THREADS", "2")
    assert "MINIVGG_THREADS" in options.unknown_variables()


def test_runtime_apply_is_idempotent_and_recorded(clean_env):
    r = runtime.Runtime()
    assert r.report()["malloc"]["tuned"] is False and "not applied" in r.report()["malloc"]["note"]
    clean_env.setenv("MINIVGG_MALLOC", "default")
    assert r.apply() is False and "MINIVGG_MALLOC=default" in r.report()["malloc"]["note"]
    clean_env.delenv("MINIVGG_MALLOC")
    first = r.apply()
    assert r.apply() == first == r.report()["malloc"]["tuned"]
    from minivgg.cpu.fast.arena import keep_freed_memory  # the old name: the process's runtime

    assert keep_freed_memory() == runtime.RUNTIME.apply()


def _reads_minivgg_env(tree):
    """(line, text) of every os.environ / os.getenv use whose key is a MINIVGG_* string, or
    not a constant (then it may be one)."""
    found = []
    for node in ast.walk(tree):
        key = None
        if isinstance(node, ast.Subscript) and ast.unparse(node.value) in ("os.environ", "environ"):
            key = node.slice
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in (
                "os.environ.get", "os.getenv", "environ.get", "getenv", "os.environ.pop", "os.environ.setdefault",
                "os.environ.__setitem__"):
            key = node.args[0] if node.args else None
        else:
            continue
        if not (isinstance(key, ast.Constant) and isinstance(key.value, str)) or key.value.startswith("MINIVGG_"):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_only_options_reads_minivgg_variables():
    """No module but minivgg/options.py reads (or sets) a MINIVGG_* variable."""
    offenders = []
    for top in ("minivgg", "weights_tools", "scripts"):
        for path in sorted((ROOT / top).rglob("*.py")):
            if path == ROOT / "minivgg" / "options.py":
                continue
            for line, text in _reads_minivgg_env(ast.parse(path.read_text(), str(path))):
                offenders.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not offenders, "read MINIVGG_* through minivgg.options:\n" + "\n".join(offenders)


def test_the_env_check_catches_a_read():
    tree = ast.parse('import os\na = os.environ.get("MINIVGG_CONV")\nb = os.environ["MINIVGG_X"]\n'
                     'c = os.getenv("MINIVGG_Y")\nd = os.environ.get("CXX")\nos.environ["MINIVGG_Z"] = "1"\n')
    assert [line for line, _ in _reads_minivgg_env(tree)] == [2, 3, 4, 6]


def test_docs_list_every_variable():
    doc = (ROOT / "docs" / "cli.md").read_text()
    for v in options.VARIABLES:
        assert f"`{v}" in doc, v
