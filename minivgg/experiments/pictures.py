"""The pictures of an experiment, drawn with Pillow: a labeled contact sheet of
result tiles, loss curves, and the captions' number formats."""

import math

import numpy as np

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
FAINT = (120, 120, 120)
EMPTY = (225, 225, 225)
WARN = (170, 30, 30)
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def font():
    from PIL import ImageFont

    return ImageFont.load_default()


def text_width(fnt, text):
    if not text:
        return 0
    box = fnt.getbbox(text)
    return box[2] - min(box[0], 0)


def line_height(fnt):
    return fnt.getbbox("Ag_|")[3] + 3


def wrap(fnt, text, width, seps=("+", " ", ",")):
    """Split ``text`` into lines no wider than ``width`` pixels, breaking after one of
    ``seps`` where possible (layer sets break after '+')."""
    lines = []
    for para in str(text).split("\n"):
        cur = ""
        tokens, tok = [], ""
        for ch in para:
            tok += ch
            if ch in seps:
                tokens.append(tok)
                tok = ""
        if tok:
            tokens.append(tok)
        for t in tokens:
            if cur and text_width(fnt, cur + t.rstrip()) > width:
                lines.append(cur.rstrip())
                cur = t.lstrip()
            else:
                cur += t
        lines.append(cur.rstrip())
    return lines


def fit(img, box):
    """A PIL image of ``img`` (uint8 H x W x 3) for a ``box``-pixel tile: shrunk with
    Lanczos so its longer side is ``box``, or enlarged by a whole factor with nearest
    neighbour (so the pixels of a small run stay visible, all the same size) to at
    most ``box``."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(np.asarray(img, np.uint8)))
    w, h = im.size
    if max(w, h) > box:
        s = box / max(w, h)
        return im.resize((max(1, int(round(w * s))), max(1, int(round(h * s)))), Image.LANCZOS)
    k = box // max(w, h)
    return im if k <= 1 else im.resize((w * k, h * k), Image.NEAREST)


def default_box(size):
    """The tile size for runs of ``size`` pixels: the size itself between 128 and 256,
    256 above, and small sizes enlarged by a whole factor to reach 128 or just under."""
    size = int(size)
    if size >= 256:
        return 256
    return size if size >= 128 else size * max(1, 128 // size)


class Tile:
    """One cell of a contact sheet: an image (or None for an empty slot) and caption
    lines; ``marks`` a colour for the caption (e.g. a warning)."""

    def __init__(self, image, caption=(), colour=INK):
        self.image, self.caption, self.colour = image, list(caption), colour


def contact_sheet(rows, *, box=128, title=(), col_headers=None, corner="", note=None, pad=6):
    """A labeled grid as a PIL image.

    rows: list of (row_label, [Tile | None, ...]). Every image is scaled so its longer
    side is ``box`` and centred in a slot as large as the largest scaled image (so a
    sheet of landscape images has landscape slots); captions go below each slot, row
    labels at the left (wrapped), optional column headers on top, title lines above
    everything and an optional ``note`` line (red) under the title. Returns (image,
    layout), layout = {"cell": (w, h), "origin": (x0, y0), "slot": (sw, sh)}: the slot
    of tile (r, c) starts at (x0 + c * w, y0 + r * h)."""
    from PIL import Image, ImageDraw

    fnt = font()
    lh = line_height(fnt)
    tiles_all = [t for _l, ts in rows for t in ts if t is not None]
    scaled = {id(t): fit(t.image, box) for t in tiles_all if t.image is not None}
    slot_w = max([im.size[0] for im in scaled.values()] + [box if not scaled else 16])
    slot_h = max([im.size[1] for im in scaled.values()] + [box if not scaled else 16])
    ncols = max((len(t) for _l, t in rows), default=0)
    cap_lines = max([len(t.caption) for t in tiles_all] + [0])
    cap_width = max([text_width(fnt, line) for t in tiles_all for line in t.caption] + [0])
    cell_w = max(slot_w, cap_width) + 2 * pad
    cell_h = slot_h + cap_lines * lh + 2 * pad + 2
    label_lines = [wrap(fnt, label, 150) for label, _t in rows]
    label_w = max([text_width(fnt, line) for ls in label_lines for line in ls] + [0]) + 2 * pad
    header_lines = [wrap(fnt, h, cell_w - 2 * pad) for h in (col_headers or [])]
    header_h = (max(len(h) for h in header_lines) * lh + pad) if header_lines else 0
    title = list(title)
    title_h = (len(title) + (1 if note else 0)) * lh + (pad if title or note else 0)
    width = max(label_w + ncols * cell_w + pad,
                max([text_width(fnt, t) for t in title + [note or ""]] + [0]) + 2 * pad)
    x0, y0 = label_w, pad + title_h + header_h
    height = y0 + len(rows) * cell_h + pad
    sheet = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    y = pad
    for line in title:
        draw.text((pad, y), line, fill=INK, font=fnt)
        y += lh
    if note:
        draw.text((pad, y), note, fill=WARN, font=fnt)
    if corner:
        for i, line in enumerate(wrap(fnt, corner, label_w - 2 * pad)[-max(1, header_h // lh):]):
            draw.text((pad, y0 - header_h + i * lh), line, fill=FAINT, font=fnt)
    for c, lines in enumerate(header_lines):
        for i, line in enumerate(lines):
            tx = x0 + c * cell_w + (cell_w - text_width(fnt, line)) // 2
            draw.text((tx, y0 - header_h + i * lh), line, fill=INK, font=fnt)
    for r, ((_label, tiles), lines) in enumerate(zip(rows, label_lines)):
        ry = y0 + r * cell_h
        ty = ry + pad + (slot_h - len(lines) * lh) // 2
        for i, line in enumerate(lines):
            draw.text((pad, ty + i * lh), line, fill=INK, font=fnt)
        for c, tile in enumerate(tiles):
            if tile is None:
                continue
            cx = x0 + c * cell_w
            bx, by = cx + (cell_w - slot_w) // 2, ry + pad
            if tile.image is None:
                draw.rectangle([bx, by, bx + slot_w - 1, by + slot_h - 1], fill=EMPTY)
            else:
                im = scaled[id(tile)]
                sheet.paste(im, (bx + (slot_w - im.size[0]) // 2, by + (slot_h - im.size[1]) // 2))
            for i, line in enumerate(tile.caption):
                tx = cx + (cell_w - text_width(fnt, line)) // 2
                draw.text((tx, by + slot_h + 2 + i * lh), line, fill=tile.colour, font=fnt)
    return sheet, {"cell": (cell_w, cell_h), "origin": (x0 + (cell_w - slot_w) // 2, y0 + pad),
                   "slot": (slot_w, slot_h)}


def loss_curves(panels, *, panel_size=(360, 240), title=""):
    """Loss curves as a PIL image: one panel per (panel_title, [(label, iters, values)]);
    log scale on the loss axis when every value is positive, linear otherwise."""
    from PIL import Image, ImageDraw

    fnt = font()
    lh = line_height(fnt)
    pw, ph = panel_size
    left, right, top, bottom = 62, 12, lh + 8, 2 * lh + 10
    legend_lines = max([len(curves) for _t, curves in panels] + [0])
    legend_h = min(legend_lines, 24) * lh + 6
    title_h = lh + 6 if title else 0
    width = max(1, len(panels)) * (pw + left + right)
    height = title_h + top + ph + bottom + legend_h
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((6, 4), title, fill=INK, font=fnt)
    for k, (ptitle, curves) in enumerate(panels):
        ox, oy = k * (pw + left + right) + left, title_h + top
        draw.text((ox, oy - lh - 2), ptitle, fill=INK, font=fnt)
        draw.rectangle([ox, oy, ox + pw, oy + ph], outline=FAINT)
        pts = [(float(i), float(v)) for _l, xs, ys in curves for i, v in zip(xs, ys) if math.isfinite(float(v))]
        if not pts:
            draw.text((ox + 8, oy + 8), "no data", fill=FAINT, font=fnt)
            continue
        log = all(v > 0 for _i, v in pts)
        tr = (lambda v: math.log10(v)) if log else (lambda v: v)
        xmax = max(max(i for i, _v in pts), 1.0)
        lo, hi = min(tr(v) for _i, v in pts), max(tr(v) for _i, v in pts)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        sx = lambda i: ox + i / xmax * pw
        sy = lambda v: oy + ph - (tr(v) - lo) / (hi - lo) * ph
        # axis ticks: the ends of each axis, and the powers of ten between on a log axis
        ticks = [10 ** e for e in range(math.ceil(lo), math.floor(hi) + 1)] if log else []
        if len(ticks) > 6:
            ticks = ticks[:: math.ceil(len(ticks) / 6)]
        if len(ticks) < 2:
            ticks = [10 ** lo, 10 ** hi] if log else [lo, hi]
        for t in ticks:
            y = sy(t)
            draw.line([ox - 3, y, ox, y], fill=FAINT)
            lab = f"{t:.2g}"
            draw.text((ox - 5 - text_width(fnt, lab), y - lh // 2), lab, fill=FAINT, font=fnt)
        for t in (0, int(xmax)):
            x = sx(t)
            draw.line([x, oy + ph, x, oy + ph + 3], fill=FAINT)
            draw.text((x - text_width(fnt, str(t)) // 2, oy + ph + 4), str(t), fill=FAINT, font=fnt)
        axis = "iteration" + ("   (loss on a log scale)" if log else "")
        draw.text((ox + (pw - text_width(fnt, axis)) // 2, oy + ph + 4 + lh), axis, fill=FAINT, font=fnt)
        for j, (label, xs, ys) in enumerate(curves):
            colour = PALETTE[j % len(PALETTE)]
            line = [(sx(float(i)), sy(float(v))) for i, v in zip(xs, ys) if math.isfinite(float(v))
                    and (not log or v > 0)]
            if len(line) > 1:
                draw.line(line, fill=colour, width=2)
            elif line:
                draw.ellipse([line[0][0] - 2, line[0][1] - 2, line[0][0] + 2, line[0][1] + 2], fill=colour)
            if j < 24:
                ly = oy + ph + bottom + j * lh
                draw.line([ox, ly + lh // 2, ox + 16, ly + lh // 2], fill=colour, width=3)
                draw.text((ox + 22, ly), label if j < 23 or len(curves) == 24 else f"... {len(curves) - 23} more",
                          fill=INK, font=fnt)
    return img


def fmt_loss(v):
    return "nan" if v is None or not math.isfinite(v) else f"{v:.3g}"


def fmt_seconds(s):
    return f"{s:.1f} s" if s < 100 else f"{s / 60:.1f} min"


def random_note(source, arch):
    """The line that says results come from random weights (None when they do not)."""
    if source == "random" or str(source).startswith("random"):
        return (f"RANDOM WEIGHTS: no pretrained {arch} found; these show what an untrained VGG keeps. "
                f"Fetch weights: python -m weights_tools fetch {arch}-caffe")
    return None
