"""scripts/bench.py runs end to end on a small image and prints what it claims to."""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "scripts"))
import bench  # noqa: E402


def _row(out, size):
    rows = [line for line in out.splitlines() if line.strip().startswith(f"{size} |")]
    assert len(rows) == 1, out
    return [c.strip() for c in rows[0].split("|")]


@pytest.mark.torch
def test_bench_in_process_prints_times_and_gradient_distances(capsys):
    pytest.importorskip("torch")
    bench.main(["--sizes", "40", "--repeats", "1", "--warmup", "0", "--in-process"])
    cells = _row(capsys.readouterr().out, 40)
    ours, theirs, ratio = float(cells[1]), float(cells[2]), float(cells[3])
    assert ours > 0 and theirs > 0
    # the ratio of the unrounded times; the times are printed to 1 ms, the ratio to 0.01
    assert (ours - 5e-4) / (theirs + 5e-4) - 5e-3 <= ratio <= (ours + 5e-4) / (theirs - 5e-4) + 5e-3
    assert cells[4] == cells[5] == "-"  # one process: no peaks of its own
    loss, grad, ours64, torch64, grad_norm = (float(c) for c in cells[6:11])
    # both float32 gradients near the float64 one (no ReLU near-ties at this size and seed)
    assert loss < 1e-5 and grad < 1e-4 and ours64 < 1e-4 and torch64 < 1e-4 and 0 < grad_norm < 1e-4


def test_bench_without_torch_prints_our_time_and_peak(capsys):
    bench.main(["--sizes", "40", "--repeats", "1", "--warmup", "0", "--no-torch"])
    cells = _row(capsys.readouterr().out, 40)
    assert float(cells[1]) > 0 and cells[2] == "-" and float(cells[4]) > 50  # MB of a worker
