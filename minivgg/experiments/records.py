"""The tables an experiment writes: CSV files (atomically), PNG files, and the
summary of a run's loss history."""

import csv
import math

def atomic_write(path, write):
    """``write(tmp)`` then rename to ``path`` (minivgg.image.atomic_write)."""
    from ..image import atomic_write as aw

    return aw(path, write)


def write_csv(path, columns, rows):
    """Write ``rows`` (dicts) with a header of ``columns``, atomically."""

    def write(tmp):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
            w.writeheader()
            for row in rows:
                w.writerow({k: _csv_value(row.get(k)) for k in columns})

    return atomic_write(path, write)


def _csv_value(v):
    if v is None:
        return ""
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else str(v)
    if isinstance(v, (tuple, list)):
        return "+".join(map(str, v))
    return v


def read_csv(path):
    """Rows of a CSV as dicts ([] when the file is missing or unreadable)."""
    try:
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    except (OSError, csv.Error, UnicodeDecodeError):
        return []


def save_png(path, pil_image):
    """Save a PIL image as PNG, atomically."""
    return atomic_write(path, lambda tmp: pil_image.save(tmp, format="PNG", optimize=True))


def loss_summary(history):
    """The final row's loss terms (NaN when there is none) and the number of updates."""
    last = history[-1] if history else {}
    return {"iterations": int(last.get("iter", 0)) if history else 0,
            "total": float(last.get("total", float("nan"))), "content": float(last.get("content", float("nan"))),
            "style": float(last.get("style", float("nan"))), "tv": float(last.get("tv", float("nan")))}
