"""Describe a weights file: format, architecture, layers and shapes, input convention,
checksums. Works on every source format and on minivgg's own HDF5."""

import os

from minivgg.errors import MiniVGGError

from .convert import CONVENTIONS, FC_SPECS, assemble, conv_specs, file_digests, read_source


def _name(c):
    """The convention's name when it is one of the published ones, else "custom"."""
    for name, ref in CONVENTIONS.items():
        if (c["channel_order"] == ref["channel_order"] and c["scale"] == ref["scale"]
                and all(abs(a - b) < 1e-6 for a, b in zip(c["std"], ref["std"]))
                and all(abs(a - b) < 1e-3 for a, b in zip(c["mean"], ref["mean"]))):
            return name
    return "custom"


def describe(path):
    """A multi-line report on ``path`` (raises :class:`MiniVGGError` if it can't be read)."""
    src = read_source(path, strict=False)
    where = os.path.basename(path)
    sha, md5 = file_digests(path)
    lines = [
        f"file:        {path}",
        f"size:        {os.path.getsize(path)} bytes",
        f"sha256:      {sha}",
        f"md5:         {md5}",
        f"format:      {src.format}",
    ]
    try:
        _, arch = assemble(src, where, keep_classifier=len(src.fcs) == 3)
        fc = " + classifier (fc6, fc7, fc8)" if len(src.fcs) == 3 else " (no classifier)"
        lines.append(f"arch:        {arch}, {len(src.convs)} convolutions{fc}")
        names = [n for n, _, _ in conv_specs(arch)] + [n for n, _, _ in FC_SPECS]
    except MiniVGGError as e:
        lines.append(f"arch:        not a usable VGG: {str(e).split(': ', 1)[-1]}")
        names = []
    c = src.convention
    if c:
        lines.append(
            f"input:       {c['channel_order']}, white = {c['scale']:g}, mean = ({', '.join(f'{v:g}' for v in c['mean'])}),"
            f" std = ({', '.join(f'{v:g}' for v in c['std'])})"
        )
        lines.append(f"convention:  {_name(c)}, {src.decided}")
    else:
        lines.append(f"convention:  {src.decided}")
    if src.warning:
        lines.append(f"warning:     {src.warning.split(': ', 1)[-1]}")
    info = src.info
    if info.get("producer"):
        lines.append(f"producer:    {info['producer']}")
    if info.get("input_layout"):
        lines.append(f"graph input: {info['input']!r}, {info['input_layout']}"
                     + (" (a Transpose to NCHW before the first convolution)" if info["input_layout"] == "NHWC" else ""))
    if info.get("pooling"):
        lines.append(f"pooling:     {info['pooling']} in the source graph")
    for note in src.notes:
        lines.append(f"note:        {note}")
    for key in ("source_format", "source_file", "source_sha256", "source_pooling", "normalized", "converter_version",
                "normalize_pooling", "normalize_images"):
        if src.format == "minivgg" and key in src.meta:
            lines.append(f"{key + ':':<19}{src.meta[key]}")
    lines.append("layers:")
    all_layers = list(src.convs) + list(src.fcs)
    for i, (sname, W, b) in enumerate(all_layers):
        ours = names[i] if i < len(names) else "?"
        label = ours if ours == sname else f"{ours:<8} <- {sname}"
        lines.append(f"  {label:<28} W {tuple(W.shape)!s:<22} b {tuple(b.shape)}")
    return "\n".join(lines)
