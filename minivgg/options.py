"""minivgg's runtime options: every ``MINIVGG_*`` environment variable, read here and nowhere else.

One :class:`RuntimeOptions` holds them all, parsed and checked (a value that is not one of
the choices is a MiniVGGError naming the variable and the choices):

=========================  ==================  ==============================================
variable                   field               meaning (unset or empty: the default)
=========================  ==================  ==============================================
MINIVGG_NUM_THREADS        num_threads         threads of minivgg's pool (an integer; below 1
                                               counts as 1); default: the usable cores
MINIVGG_CONV               conv                ``winograd`` (default: Winograd where it
                                               applies, cpu/ops.py) or ``im2col`` (always)
MINIVGG_WINOGRAD_WEIGHTS   winograd_weights    ``auto`` (default), ``keep``, ``large``,
                                               ``stream``: where Winograd's transformed
                                               weights live (cpu/ops.py)
MINIVGG_ISA                isa                 ``avx512``, ``avx2``, ``blas``: the kernels'
                                               instruction-set level, at most the host's
                                               (cpu/fast/isa.py); default: the host's
MINIVGG_GEMM               gemm                ``ours`` or ``blas``: who runs the products;
                                               default: the level's choice (isa.GEMM_AT_LEVEL)
MINIVGG_MALLOC             malloc              ``tuned`` (default: glibc's malloc keeps freed
                                               blocks, minivgg/runtime.py) or ``default``
                                               (malloc left as it is)
MINIVGG_HOME               home                the weights cache folder; default
                                               ``~/.cache/minivgg`` (weights.cache_dir)
MINIVGG_WEIGHTS            weights             the weights file used when none is given
MINIVGG_KERNELS_DIR        kernels_dir         the folder of the CUDA sources (gpu/sources.py)
MINIVGG_EMULATE_SANITIZE   emulate_sanitize    ``1`` (or true/yes/on): the emulated kernels
                                               built with ASan + UBSan; ``0`` (default): not
MINIVGG_EMULATE_CACHE      emulate_cache       where the emulated kernels' libraries go;
                                               default: a private folder in the temp dir
MINIVGG_FETCH_BASE         fetch_base          a mirror to fetch weights from instead of the
                                               published URLs (weights_tools/fetch.py)
=========================  ==================  ==============================================

The variables are read when a value is needed (as before: a test's ``monkeypatch.setenv``
takes effect at once), each through :func:`get`, which costs one environment lookup and a
memoized parse, cheap enough for the kernels' per-call checks. :func:`current` gives all of
them as one frozen RuntimeOptions; :func:`explain` says where each value came from.

:func:`using` changes options for a block of code without touching ``os.environ``::

    with options.using(conv="im2col", num_threads=2):
        ...

The change is process-wide while the block is open (the thread pool's workers see it),
like the environment it stands in for; blocks nest, the innermost wins. :func:`push` is the
same as a call that returns its undo, for code that collects undo functions.
"""

import contextlib
import dataclasses
import functools
import os
import threading
from typing import Optional

from .errors import MiniVGGError

PREFIX = "MINIVGG_"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _choice(*choices, default=None):
    def parse(raw, variable):
        v = raw.strip().lower()
        if v not in choices:
            raise MiniVGGError(f"{variable}={raw}: unknown value; use one of {', '.join(choices)}"
                               + (f" (unset: {default})" if default else ""))
        return v
    parse.choices = choices
    return parse


def _threads(raw, variable):
    try:
        return max(1, int(raw.strip()))
    except ValueError:
        raise MiniVGGError(f"{variable}={raw}: not a number of threads; use a whole number such as 4 "
                           "(unset: the usable cores)") from None


def _flag(raw, variable):
    v = raw.strip().lower()
    if v in _TRUE:
        return True
    if v in _FALSE:
        return False
    raise MiniVGGError(f"{variable}={raw}: not a flag; use 1 or 0")


def _text(raw, variable):
    return raw


@dataclasses.dataclass(frozen=True)
class Option:
    field: str
    variable: str
    parse: object  # (raw string, variable name) -> value; raises MiniVGGError
    default: object
    help: str


OPTIONS = (
    Option("num_threads", "MINIVGG_NUM_THREADS", _threads, None, "threads of minivgg's pool (None: the usable cores)"),
    Option("conv", "MINIVGG_CONV", _choice("winograd", "im2col", default="winograd"), "winograd",
           "convolution algorithm: Winograd where it applies, or im2col always"),
    Option("winograd_weights", "MINIVGG_WINOGRAD_WEIGHTS", _choice("auto", "keep", "large", "stream", default="auto"),
           "auto", "which Winograd layers keep their transformed weights"),
    Option("isa", "MINIVGG_ISA", _choice("avx512", "avx2", "blas"), None,
           "instruction-set level of the CPU kernels (None: the host's)"),
    Option("gemm", "MINIVGG_GEMM", _choice("ours", "blas"), None, "who runs the products (None: the level's default)"),
    Option("malloc", "MINIVGG_MALLOC", _choice("tuned", "default", default="tuned"), "tuned",
           "glibc malloc keeps freed blocks (tuned) or is left alone (default)"),
    Option("home", "MINIVGG_HOME", _text, None, "weights cache folder (None: ~/.cache/minivgg)"),
    Option("weights", "MINIVGG_WEIGHTS", _text, None, "weights file used when none is given"),
    Option("kernels_dir", "MINIVGG_KERNELS_DIR", _text, None, "folder of the CUDA sources (None: the installed ones)"),
    Option("emulate_sanitize", "MINIVGG_EMULATE_SANITIZE", _flag, False, "emulated kernels built with ASan + UBSan"),
    Option("emulate_cache", "MINIVGG_EMULATE_CACHE", _text, None, "emulated kernels' library folder (None: in the temp dir)"),
    Option("fetch_base", "MINIVGG_FETCH_BASE", _text, None, "mirror URL for weights_tools fetch (None: the published URLs)"),
)
BY_FIELD = {o.field: o for o in OPTIONS}
VARIABLES = tuple(o.variable for o in OPTIONS)
_VARIABLE = {o.field: o.variable for o in OPTIONS}
_DEFAULT = {o.field: o.default for o in OPTIONS}
_environ = os.environ


@dataclasses.dataclass(frozen=True)
class RuntimeOptions:
    """The options in force, parsed (see the module docstring for each field's meaning)."""

    num_threads: Optional[int] = None
    conv: str = "winograd"
    winograd_weights: str = "auto"
    isa: Optional[str] = None
    gemm: Optional[str] = None
    malloc: str = "tuned"
    home: Optional[str] = None
    weights: Optional[str] = None
    kernels_dir: Optional[str] = None
    emulate_sanitize: bool = False
    emulate_cache: Optional[str] = None
    fetch_base: Optional[str] = None


_OVERRIDES = ()  # dicts of the open using()/push() blocks, innermost last (replaced whole, never mutated)
_LOCK = threading.Lock()


@functools.lru_cache(maxsize=256)
def _parsed(field, raw):
    o = BY_FIELD[field]
    return o.default if raw.strip() == "" else o.parse(raw, o.variable)


def _check(field, value):
    """A value given in code (using/push): the field's type, checked like the variable's."""
    o = BY_FIELD.get(field)
    if o is None:
        raise MiniVGGError(f"options: unknown option {field!r}; the options are {', '.join(BY_FIELD)}")
    if value is None:
        return o.default
    if o.parse is _threads:
        if isinstance(value, bool) or not isinstance(value, int):
            raise MiniVGGError(f"options.using({field}={value!r}): a whole number of threads")
        return max(1, value)
    if o.parse is _flag:
        return bool(value)
    if not isinstance(value, str):
        raise MiniVGGError(f"options.using({field}={value!r}): a string ({o.variable})")
    return o.parse(value, f"options.using({field}=...)") if o.parse is not _text else value


def get(field):
    """The value of one option now: the innermost open :func:`using` block's, else the
    environment variable's, else the default. An invalid variable raises MiniVGGError."""
    if _OVERRIDES:
        for ov in reversed(_OVERRIDES):
            if field in ov:
                return ov[field]
    raw = _environ.get(_VARIABLE[field])  # the kernels ask on every product: kept short
    return _DEFAULT[field] if raw is None else _parsed(field, raw)


def source(field):
    """Where :func:`get`'s value comes from: ``"using"``, ``"env"`` or ``"default"``."""
    if any(field in ov for ov in _OVERRIDES):
        return "using"
    raw = os.environ.get(BY_FIELD[field].variable)
    return "default" if raw is None or raw.strip() == "" else "env"


def origin(field):
    """A name for the source in error messages: the variable, or the using() call."""
    return f"options.using({field}=...)" if source(field) == "using" else BY_FIELD[field].variable


def current():
    """Every option now, as one RuntimeOptions (raises MiniVGGError on an invalid variable)."""
    return RuntimeOptions(**{o.field: get(o.field) for o in OPTIONS})


def explain():
    """[{field, variable, value, source, raw}] for every option: what is in force and why
    (``raw``: the variable's text when it is set). Invalid variables give their error as
    ``error`` instead of raising, for reports."""
    rows = []
    for o in OPTIONS:
        row = {"field": o.field, "variable": o.variable, "source": source(o.field), "raw": os.environ.get(o.variable),
               "help": o.help}
        try:
            row["value"] = get(o.field)
        except MiniVGGError as e:
            row["value"], row["error"] = None, str(e)
        rows.append(row)
    return rows


def unknown_variables():
    """``MINIVGG_*`` variables set in the environment that are no option (a typo, or an old name)."""
    return sorted(k for k in os.environ if k.startswith(PREFIX) and k not in VARIABLES)


def push(**changes):
    """Open an override of the given options (process-wide) and return the function that
    closes it. Values are the fields' types (``num_threads=2``, ``conv="im2col"``); None
    stands for the default (as if the variable were unset)."""
    global _OVERRIDES
    entry = {field: _check(field, value) for field, value in changes.items()}
    with _LOCK:
        _OVERRIDES = _OVERRIDES + (entry,)

    def undo():
        global _OVERRIDES
        with _LOCK:
            _OVERRIDES = tuple(e for e in _OVERRIDES if e is not entry)

    return undo


@contextlib.contextmanager
def using(**changes):
    """The given options inside the block (process-wide), the previous ones after."""
    undo = push(**changes)
    try:
        yield
    finally:
        undo()
