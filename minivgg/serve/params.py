"""A job's parameters, read with the CLI's own argument parsers.

The API and the page name every parameter as the CLI does (``content-weight``,
``--content-weight`` or ``content_weight``). A request becomes the argument list of
the command (``minivgg style --content content.png --size 256 ...``) and is parsed by
the parser that ``minivgg style`` itself uses, so the defaults, the checks and the
error texts are the CLI's; :class:`ParamError` carries that text to the client as a
4xx reply. The same parsers describe each option to the page (:func:`describe`).

No value from a client is ever used as a file path: an image is either an uploaded
file, saved by the server under a name it chooses, or ``sample:NAME`` with NAME one of
``minivgg.image.SAMPLES``; the options that name files or steer the server (``--out``,
``--log``, ``--weights``, ``--device`` ...) are set by the server and refused from a
client.
"""

import argparse
import io
import os
import shlex
import warnings

from ..errors import MiniVGGError

METHODS = ("style", "texture", "invert", "dream", "visualize", "atlas")
# options that take an image: an upload, sample:NAME, or (init) one of the CLI's keywords
IMAGE_DESTS = ("content", "style", "image", "init", "style_mask", "content_mask")
INIT_KEYWORDS = ("noise", "content", "style")
# options that take layer names
LAYER_DESTS = ("layer", "layers", "content_layers", "style_layers")
# options the server sets (files it writes, its weights and device, its own progress)
SERVER_DESTS = ("out", "log", "plot", "save_every", "quiet", "weights", "device", "frames", "workers", "scheduler",
                "help")
SIZE_DESTS = ("size", "source_size")
OUT_NAME = "result.png"
LOG_NAME = "log.csv"


class ParamError(MiniVGGError):
    """A request the server refuses: ``status`` is the HTTP status (400, 413, ...)."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class _ApiParser(argparse.ArgumentParser):
    """The CLI's parsers with their error turned into an exception: the same text the
    CLI prints after ``error:`` (minivgg.cli.common.ArgumentParser.error)."""

    def error(self, message):
        raise ParamError(f"{message} (see {self.prog} --help)")

    def exit(self, status=0, message=None):  # --help, --version: not for a job
        raise ParamError(message.strip() if message else f"{self.prog}: not a job parameter")


def _build():
    from ..cli import dream, invert, style, texture, visualize
    from ..cli.common import PROG
    from ..experiments import atlas

    top = _ApiParser(prog=PROG)
    sub = top.add_subparsers(dest="command", parser_class=_ApiParser)
    for command in (style, texture, invert, dream, visualize, atlas):
        command.add_parser(sub)
    return top, {m: sub.choices[m] for m in METHODS}


_PARSERS = None


def _parsers():
    global _PARSERS
    if _PARSERS is None:
        _PARSERS = _build()
    return _PARSERS


def parsers():
    """{method: the CLI's argparse parser of that command} (built once)."""
    return _parsers()[1]


def parse(method, argv):
    """``minivgg METHOD ARGV`` parsed as the CLI parses it (ParamError: its error text)."""
    return _parsers()[0].parse_args([method] + list(argv))


def _options(parser):
    """{--option: action} for every option of a parser."""
    return {s: a for a in parser._actions for s in a.option_strings if s.startswith("--")}


def _is_image(action):
    """An option that takes an image (atlas's --init is a plain choice)."""
    return action.dest in IMAGE_DESTS and not action.choices


def _kind(method, action):
    from ..cli.args import name_list

    if _is_image(action):
        return "image"
    if action.dest in LAYER_DESTS:
        return "layers" if (action.type is name_list or method == "atlas") else "layer"
    if action.nargs == 0:
        return "flag"
    if action.choices:
        return "choice"
    return "value"


def _json_default(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


def describe(method):
    """The options of ``method`` as the page shows them: name (as the CLI spells it),
    kind (image, layer, layers, flag, choice, value), default, choices, help, group."""
    parser = parsers()[method]
    out = []
    seen = set()
    groups = {id(a): g.title for g in parser._action_groups for a in g._group_actions}
    for action in parser._actions:
        if not action.option_strings or action.dest in SERVER_DESTS or action.dest in seen:
            continue
        seen.add(action.dest)
        name = next(s for s in action.option_strings if s.startswith("--"))[2:]
        out.append({"name": name, "dest": action.dest, "kind": _kind(method, action),
                    "default": _json_default(action.default), "choices": list(action.choices or []) or None,
                    "required": bool(action.required), "multiple": action.nargs == "+",
                    "help": (action.help or "").replace("%(default)s", str(_json_default(action.default))),
                    "group": groups.get(id(action)) or "options"})
    return out


def sample_names():
    from ..image import SAMPLES

    return list(SAMPLES)


def check_sample(option, value):
    """``sample:NAME`` with NAME a built-in photo; the same text as minivgg.image.sample_image."""
    from ..image import SAMPLES

    name = value[len("sample:"):]
    if name not in SAMPLES:
        raise ParamError(f"{option}: unknown sample image {name!r}; choose one of {', '.join(SAMPLES)}")
    return value


class Upload:
    """An uploaded image: the client's bytes and the field it came in."""

    def __init__(self, option, data, filename=""):
        self.option, self.data, self.filename = option, data, filename


class JobSpec:
    """A checked job: method, the CLI arguments (``argv``, with the server's names for
    the uploads), the parsed Namespace, the uploads to save (name -> Upload)."""

    def __init__(self, method, argv, args, uploads):
        self.method, self.argv, self.args, self.uploads = method, argv, args, uploads

    def command_line(self, server_argv=()):
        """The equivalent command, to run in the job's folder."""
        return shlex.join(["python", "-m", "minivgg", self.method] + self.argv + list(server_argv))


def _truthy(option, value):
    v = str(value).strip().lower()
    if v in ("", "1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise ParamError(f"{option}: expected true or false, got {value!r}")


def build_spec(fields, max_size=None, weights=None):
    """A JobSpec from the request's fields: a list of (name, value) with value a str or
    an Upload; raises ParamError with the CLI's text for anything the CLI would refuse.
    ``weights``: the server's --weights, so that the layer check uses their network as
    the job's command will."""
    fields = list(fields)
    methods = [v for k, v in fields if k == "method"]
    if not methods:
        raise ParamError(f"no method given; choose one of {', '.join(METHODS)}")
    method = methods[-1]
    if not isinstance(method, str) or method not in METHODS:
        raise ParamError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    parser = parsers()[method]
    options = _options(parser)
    argv, multi, uploads, counts = [], {}, {}, {}
    for key, value in fields:
        if key == "method":
            continue
        option = "--" + str(key).lstrip("-").replace("_", "-")
        action = options.get(option)
        if action is not None and action.dest in SERVER_DESTS:
            raise ParamError(f"{option} is set by the server (minivgg serve --out/--weights/--device), not by a job")
        if action is None:
            argv.append(f"{option}={value}" if isinstance(value, str) else option)  # argparse names it
            continue
        if _is_image(action):
            if isinstance(value, Upload):
                n = counts[action.dest] = counts.get(action.dest, 0) + 1
                name = f"{action.dest}.png" if action.nargs != "+" else f"{action.dest}-{n}.png"
                uploads[name] = value
                value = name
            else:
                value = str(value).strip()
                if value.startswith("sample:"):
                    check_sample(option, value)
                elif not (action.dest == "init" and value in INIT_KEYWORDS):
                    what = f"sample:NAME ({', '.join(sample_names())})"
                    if action.dest == "init":
                        what += f", or {', '.join(INIT_KEYWORDS)}"
                    raise ParamError(f"{option}: {value!r} is not an image this server can use: upload the image as "
                                     f"a file, or give {what}")
        elif isinstance(value, Upload):
            raise ParamError(f"{option} takes a value, not a file")
        if action.nargs == 0:
            if _truthy(option, value):
                argv.append(option)
        elif action.nargs == "+":
            multi.setdefault(option, []).append(value)
        else:  # "--opt=-1" keeps a value that starts with "-" a value
            argv += [f"{option}={value}"] if str(value).startswith("-") else [option, value]
    for option, values in multi.items():
        argv += [option] + values
    args = parse(method, argv + server_argv(method, weights))  # atlas requires --out
    _check(method, args, max_size)
    return JobSpec(method, argv, args, uploads)


def _check(method, args, max_size):
    """What the commands check before any work, that the parser does not: layer names,
    the style blend's length, --layer or --class; and the server's size limit."""
    from ..cli.visualize import class_index
    from ..vgg import layer_names
    from ..weights import arch_for

    if getattr(args, "arch", "") is None:  # as the command will: the weights' network
        args.arch = arch_for(getattr(args, "weights", None))
    names = layer_names(args.arch)
    for dest in LAYER_DESTS:
        v = getattr(args, dest, None)
        if v is None:
            continue
        layers = [n.strip() for n in v.split(",") if n.strip()] if isinstance(v, str) else list(v)
        bad = [n for n in layers if n not in names]
        if bad:  # the text of Net.check_layers
            raise ParamError(f"unknown layer {', '.join(map(repr, bad))} for {args.arch} (classifier not kept); "
                             f"valid layers: {', '.join(names)}")
    if method == "style" and args.style_blend is not None and len(args.style_blend) != len(args.style):
        raise ParamError(f"--style-blend has {len(args.style_blend)} weight(s) for {len(args.style)} style image(s)")
    if method == "visualize":
        if args.class_index is None and args.layer is None:
            raise ParamError("give --layer (and optionally --channel) or --class")
        if args.class_index is not None:
            try:
                class_index(args.class_index)
            except MiniVGGError as e:
                raise ParamError(str(e)) from None
    if max_size:
        sizes = [(f"--{d.replace('_', '-')}", getattr(args, d, None)) for d in SIZE_DESTS]
        sizes += [("--scales", s) for s in (getattr(args, "scales", None) or [])]
        for option, v in sizes:
            if v is not None and v > max_size:
                raise ParamError(f"{option} {v} is over this server's largest size {max_size} (minivgg serve "
                                 f"--max-size)")


def server_argv(method, weights=None, device="cpu"):
    """The options the server adds to every job's command (files in the job's folder)."""
    argv = ["--out", OUT_NAME]
    if method != "atlas":
        argv += ["--log", LOG_NAME, "--plot"]
    if weights:
        argv += ["--weights", os.path.abspath(weights)]
    if device != "cpu":
        argv += ["--device", device]
    return argv


def expected_rows(spec):
    """How many log rows the job will make, for its progress bar (None: unknown)."""
    a = spec.args
    if spec.method == "style":
        return len(a.scales or [a.size]) * (a.iters + 1)
    if spec.method in ("texture", "invert", "visualize"):
        return a.iters + 1
    if spec.method == "dream":
        return (a.zoom_steps + 1) * (a.octaves * a.iters + 1)
    return None  # atlas: the worker reports its number of runs


def check_image(option, data, max_pixels):
    """Decode an uploaded image as the CLI reads images (minivgg.image.load_image's
    conversions), refusing before decoding anything over ``max_pixels``; returns the
    uint8 RGB array."""
    import numpy as np
    from PIL import Image, ImageOps

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                w, h = im.size
                if w <= 0 or h <= 0:
                    raise ParamError(f"{option}: image has no pixels ({w}x{h})")
                if w * h > max_pixels:
                    raise ParamError(f"{option}: image of {w} x {h} pixels is over this server's limit of "
                                     f"{max_pixels} pixels (minivgg serve --max-pixels); refused undecoded", 413)
                im = ImageOps.exif_transpose(im)
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except ParamError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ParamError(f"{option}: image too large to decode safely ({e})", 413) from None
    except MemoryError:
        raise ParamError(f"{option}: not enough memory to decode this image", 413) from None
    except Exception as e:
        raise ParamError(f"{option}: cannot read image ({type(e).__name__}: {e})") from None
    return np.ascontiguousarray(arr)


def main_image_longest(spec, images):
    """The longest side the job works at when no --size is given: the image the
    method takes its size from (uploads: their arrays; samples: skipped)."""
    a = spec.args
    if getattr(a, "size", None) is not None or getattr(a, "scales", None):
        return None
    dest = {"style": "content", "texture": "image", "invert": "image", "dream": "image"}.get(spec.method)
    if dest is None:
        return None
    value = getattr(a, dest)
    if isinstance(value, str) and value in images:
        return max(images[value].shape[:2])
    return None
