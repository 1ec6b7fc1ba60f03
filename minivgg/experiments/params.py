"""The parameters of an experiment's run ("cell"): each method's parameters, their
kinds, aliases and defaults, parsing and checking of values, and the check of a whole
cell before any work (layer names against its arch, inputs, sizes)."""

import math

from ..errors import MiniVGGError
from ..methods.control import SWEEP_KINDS

ARCHS = ("vgg16", "vgg19")
POOLINGS = ("avg", "max")
OPTIMIZERS = ("lbfgs", "adam", "sgd")
METHODS = ("style", "texture", "invert", "dream")
LINE_SEARCHES = ("strong_wolfe", "none")
INITS = {"style": ("noise", "content", "style"), "texture": ("noise", "style"), "invert": ("noise", "content")}

# What each parameter is: a kind that says how to parse and check its values.
KINDS = {
    "style_layers": "layers", "content_layers": "layers", "layers": "layers", "layer": "layer",
    "iters": "int>=1", "size": "int>=1", "seed": "int>=0", "channel": "int>=0", "octaves": "int>=1",
    "jitter": "int>=0", "zoom_steps": "int>=0",
    "ratio": "float>0", "lr": "float>0", "style_scale": "float>0", "octave_scale": "float>1",
    "content_weight": "float>=0", "style_weight": "float>=0", "tv_weight": "float>=0", "alpha_weight": "float>=0",
    "pooling": POOLINGS, "optimizer": OPTIMIZERS, "arch": ARCHS, "init": "init",
    "line_search": LINE_SEARCHES,
    **SWEEP_KINDS,  # colour transfer, gradient normalization (minivgg.methods.control)
}
# The parameters of each method, in the order the CSV lists them.
PARAMS = {
    "style": ("style_layers", "content_layers", "iters", "ratio", "content_weight", "style_weight", "tv_weight",
              "style_scale", *SWEEP_KINDS, "init", "optimizer", "line_search", "lr", "pooling", "arch", "size", "seed"),
    "texture": ("layers", "iters", "tv_weight", "init", "optimizer", "line_search", "lr", "pooling", "arch", "size", "seed"),
    "invert": ("layer", "iters", "tv_weight", "alpha_weight", "init", "optimizer", "line_search", "lr", "pooling", "arch", "size",
               "seed"),
    "dream": ("layer", "channel", "iters", "octaves", "octave_scale", "lr", "jitter", "zoom_steps", "pooling", "arch",
              "size", "seed"),
}
# Other names people use for the same thing.
ALIASES = {
    "style": {"layers": "style_layers"},
    "texture": {"style_layers": "layers"},
    "invert": {"layers": "layer", "content_layers": "layer"},
    "dream": {"layers": "layer"},
}
# Defaults of a sweep (the methods' own defaults otherwise); small enough for a CPU.
# L-BFGS takes a strong-Wolfe line search here: from white noise through random or
# shallow layer sets, its plain steps can overshoot by orders of magnitude.
# The arch is not pinned: a sweep takes the weights file's (minivgg.weights.arch_for).
DEFAULTS = {"size": 128, "iters": 100, "pooling": "avg", "seed": 0, "optimizer": "lbfgs", "init": "noise",
            "line_search": "strong_wolfe"}
DREAM_DEFAULTS = {"iters": 10, "pooling": "max"}  # dream on the pooling VGG was trained with
# Which inputs each method needs (names of the --content/--style/--image options).
NEEDS = {"style": ("content", "style"), "texture": ("source",), "invert": ("image",), "dream": ("image",)}


def method_defaults(method):
    """The effective default of every parameter of ``method`` (None = the method's own)."""
    import importlib

    # the package re-exports functions named like some modules (invert, dream)
    mod = lambda name: importlib.import_module(f"minivgg.methods.{name}")
    style, texture, invert, dream = mod("style"), mod("texture"), mod("invert"), mod("dream")
    d = {p: DEFAULTS.get(p) for p in PARAMS[method]}
    if method == "style":
        d.update(style_layers=tuple(style.STYLE_LAYERS), content_layers=tuple(style.CONTENT_LAYERS))
    elif method == "texture":
        d.update(layers=tuple(texture.TEXTURE_LAYERS))
    elif method == "invert":
        d.update(layer=(invert.INVERT_LAYER,))
    else:
        d.update(layer=(dream.DREAM_LAYER,), **DREAM_DEFAULTS)
        d.pop("init", None)
    return {k: v for k, v in d.items() if k in PARAMS[method]}


def canonical_param(method, name):
    """The parameter's canonical name for ``method``; MiniVGGError lists the valid ones."""
    if method not in PARAMS:
        raise MiniVGGError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    name = str(name).strip().replace("-", "_")
    name = ALIASES[method].get(name, name)
    if name not in PARAMS[method]:
        raise MiniVGGError(f"unknown parameter {name!r} for method {method}; valid parameters: "
                           f"{', '.join(PARAMS[method])}")
    return name


def parse_value(method, name, value, arch=None):
    """Parse and check one value of parameter ``name`` (a string from the command line
    or a TOML value). Layer sets are tuples of names (``relu1_1+relu2_1`` or a list).
    ``arch`` checks layer names against that network (else against VGG-19's and
    VGG-16's names together; the cell check redoes it with the cell's arch)."""
    kind = KINDS[name]
    what = f"parameter {name}"
    if kind in ("layers", "layer"):
        if isinstance(value, str):
            names = [v.strip() for v in value.split("+") if v.strip()]
        elif isinstance(value, (list, tuple)):
            names = [str(v).strip() for v in value]
        else:
            raise MiniVGGError(f"{what}: expected layer names like relu1_1+relu2_1, got {value!r}")
        if not names:
            raise MiniVGGError(f"{what}: empty layer set")
        check_layer_names(names, arch, what)
        if kind == "layer" and method == "dream" and len(names) != 1:
            raise MiniVGGError(f"{what}: dream takes one layer, got {'+'.join(names)}")
        return tuple(names)
    if isinstance(kind, tuple):
        v = str(value).strip()
        if v not in kind:
            raise MiniVGGError(f"{what}: unknown value {v!r}; valid values: {', '.join(kind)}")
        return v
    if kind == "init":
        v = str(value).strip()
        if v not in INITS[method]:
            raise MiniVGGError(f"{what}: unknown value {v!r} for method {method}; valid values: "
                               f"{', '.join(INITS[method])}")
        return v
    if kind.startswith("int"):
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            v = int(str(value).strip()) if not isinstance(value, (int, float)) else int(value)
        except ValueError:
            raise MiniVGGError(f"{what}: expected an integer, got {value!r}") from None
        low = int(kind[kind.index("=") + 1:])
        if v < low:
            raise MiniVGGError(f"{what}: must be >= {low}, got {v}")
        return v
    try:
        if isinstance(value, bool):
            raise ValueError
        v = float(value)
    except (TypeError, ValueError):
        raise MiniVGGError(f"{what}: expected a number, got {value!r}") from None
    if not math.isfinite(v):
        raise MiniVGGError(f"{what}: must be finite, got {value!r}")
    op, bound = kind[5:7].rstrip("0123456789"), float(kind[5:].lstrip("<>="))
    ok = v > bound if op == ">" else v >= bound
    if not ok:
        raise MiniVGGError(f"{what}: must be {op} {bound:g}, got {v:g}")
    return v


def check_layer_names(names, arch, what):
    """MiniVGGError naming ``what``, the unknown names and the valid ones, unless every
    name is a layer of ``arch`` (None: of VGG-19 or VGG-16)."""
    valid = _valid_layers(arch)
    bad = [n for n in names if n not in valid]
    if bad:
        raise MiniVGGError(f"{what}: unknown layer {', '.join(map(repr, bad))}"
                           f"{' for ' + arch if arch else ''}; valid layers: {', '.join(valid)}")


def _valid_layers(arch):
    from ..vgg import layer_names

    if arch:
        return layer_names(arch)
    return list(dict.fromkeys(layer_names("vgg19") + layer_names("vgg16")))


def format_value(v):
    """A parameter value as text: layer sets joined with '+', numbers compactly."""
    if v is None:
        return ""
    if isinstance(v, (tuple, list)):
        return "+".join(map(str, v))
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def pools_before(arch, layer):
    """How many 2x2 poolings come before ``layer``'s output (inclusive for poolN)."""
    from ..vgg import layer_names

    names = layer_names(arch)
    return sum(1 for n in names[: names.index(layer) + 1] if n.startswith("pool"))


def check_cell(cell):
    """Check a cell before any work: layer names against its arch, every needed input
    present, the ratio not given together with a style weight, and an image size large
    enough for the deepest layer (each 2x2 pooling halves it). MiniVGGError otherwise."""
    from ..image import size_for_longest

    method, p = cell["method"], cell["params"]
    arch = p["arch"]
    layers = []
    for name in PARAMS[method]:
        if KINDS[name] in ("layers", "layer") and p.get(name) is not None:
            layers += list(parse_value(method, name, p[name], arch))
    if method == "style" and p.get("ratio") is not None and p.get("style_weight") is not None:
        raise MiniVGGError("give either ratio (content weight / style weight) or style_weight, not both")
    inputs = cell["inputs"]
    for need in NEEDS[method]:
        if inputs.get(need) is None or (need == "style" and not len(inputs[need])):
            raise MiniVGGError(f"method {method} needs {_INPUT_HELP[need]}")
    shape = size_for_longest(_main_input(cell).shape, p["size"]) if p.get("size") else _main_input(cell).shape[:2]
    if layers:
        deepest = max(layers, key=lambda n: pools_before(arch, n))
        need = 2 ** pools_before(arch, deepest)
        if min(shape) < need:
            raise MiniVGGError(f"size {p.get('size')} gives a {shape[0]}x{shape[1]} image, too small for {deepest} "
                               f"(needs at least {need} pixels on each side after {pools_before(arch, deepest)} "
                               f"poolings); use a larger size")
    return cell


_INPUT_HELP = {"content": "a content image (--content)", "style": "a style image (--style)",
               "source": "a texture source image (--style or --image)", "image": "an image (--image)"}


def _main_input(cell):
    inputs = cell["inputs"]
    return {"style": lambda: inputs["content"], "texture": lambda: inputs["source"],
            "invert": lambda: inputs["image"], "dream": lambda: inputs["image"]}[cell["method"]]()
