"""The --quick modes of the benchmark modules (generalization, sharpness, study, frontier), end to end.

Each runs in a subprocess with KERAS_BACKEND=jax (the benchmarks start their
own processes), so these tests run once in the three-backend suite, in the
session of conftest.PROCESS_HOST; skipped on the others. Skipped too without the local CIFAR-10 copy
(../shared/data next to the repository). The PNG checks need matplotlib (the
`benchmarks` extra).
"""

import importlib.util
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import in_process_host_session

ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = ROOT.parent / "shared" / "data"
DATA_FILES = ("cifar10_train_part1.npz", "cifar10_test.npz")

pytestmark = [
    in_process_host_session("the benchmarks start their own processes"),
    pytest.mark.skipif(not all((DATA_DIR / f).is_file() for f in DATA_FILES),
                       reason=f"CIFAR-10 .npz files not in {DATA_DIR}"),
]


def run_benchmark(module, *args, timeout=120):
    """`python -m benchmarks.<module> --quick args`, from the repository root."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--quick", *args],
        env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def table_rows(text, first_cell):
    """Cells of the markdown table rows whose first cell is `first_cell`."""
    rows = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == first_cell:
            rows.append(cells)
    return rows


def test_generalization_quick(tmp_path):
    results = tmp_path / "runs.jsonl"
    out = run_benchmark("generalization", "--results", str(results))
    # One row per quick method, with a finite test accuracy in (0, 100] %.
    for label in ("SGD", "SAM"):
        (row,) = table_rows(out, label)
        accuracy = float(row[3].split("±")[0])
        assert 0.0 < accuracy <= 100.0 and math.isfinite(accuracy), row
        assert math.isfinite(float(row[4].split("±")[0]))  # test loss
        train_accuracy = float(row[5].split("±")[0])
        assert 0.0 <= train_accuracy <= 100.0, row
        assert row[2] == "1"  # one seed
    # The comparisons: a verdict where both sides ran.
    (row,) = table_rows(out, "SGD < SAM")
    assert row[1] in ("yes", "no") and re.match(r"[+-]\d+\.\d\d$", row[2]), row
    for claim in ("SAM < XSAM", "SAM < X-SAM"):
        (row,) = table_rows(out, claim)
        assert row[1] == "not measured"  # not among the quick methods
    # The results file: one JSON line per run; --report rebuilds the same table.
    assert len(results.read_text().splitlines()) == 2
    report = subprocess.run(
        [sys.executable, "-m", "benchmarks.generalization", "--report", str(results)],
        capture_output=True, text=True, timeout=60, check=True, cwd=ROOT,
    ).stdout
    assert table_rows(report, "SAM") == table_rows(out, "SAM")


def test_sharpness_quick(tmp_path):
    out = run_benchmark("sharpness", "--out-dir", str(tmp_path))
    # (a) Training loss and λ_max before training (epoch 0) and after each of the
    # 2 epochs, for the quick runs SAM and XSAM.
    assert "| epoch | SAM train loss | SAM λ_max | XSAM train loss | XSAM λ_max |" in out
    for epoch in ("0", "1", "2"):
        row = table_rows(out, epoch)[0]
        values = [float(c) for c in row[1:]]
        assert len(values) == 4 and all(math.isfinite(v) for v in values), row
        assert values[0] > 0 and values[2] > 0, row  # the training losses
    # (b) SAM's angle samples: 250 images / batch 32 = 7 steps per epoch, one every 2 steps.
    (summary,) = [r for r in table_rows(out, "7") if len(r) == 8]
    assert 0.0 <= float(summary[1]) <= 180.0 and 0.0 <= float(summary[5]) <= 1.0
    # (c) α* per epoch, on XSAM's grid 0, 0.1, ..., 2.
    alpha_rows = [r for r in table_rows(out, "1") + table_rows(out, "2") if len(r) == 4]
    assert len(alpha_rows) == 2
    for row in alpha_rows:
        alpha = float(row[1])
        assert 0.0 <= alpha <= 2.0 and abs(alpha * 10 - round(alpha * 10)) < 1e-6, row

    pytest.importorskip("matplotlib")
    for name in ("sharpness_lambda_max.png", "sharpness_angle_histogram.png",
                 "sharpness_xsam_alpha.png"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000, name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_study_quick(tmp_path):
    """benchmarks/study.py: dynamic XSAM (two epochs on 500 MNIST images), its mechanism
    probe checked against the optimizer's own α search, the report, and resuming (a second
    call runs nothing)."""
    if not (DATA_DIR / "mnist.npz").is_file():
        pytest.skip(f"mnist.npz not in {DATA_DIR}")
    results = tmp_path / "runs.jsonl"
    args = ("xsam", "--rhos", "0.1", "--configs", "XSAM ρ=0.1", "--results", str(results),
            "--out-dir", str(tmp_path))
    out = run_benchmark("study", *args, timeout=300)
    (row,) = table_rows(out, "0.1")
    assert row[1].startswith("—") and row[2].startswith("—"), row  # SGD+ and SAM not run
    assert 0.0 < float(row[3].split()[0]) <= 100.0, row  # XSAM's test accuracy, %
    assert len(results.read_text().splitlines()) == 1
    # The probe re-evaluates XSAM's grid on each search batch: its argmax is the optimizer's α*.
    match = re.search(r"equals the optimizer's α\* in (\d+) of (\d+) searches", out)
    assert match and match.group(1) == match.group(2) == "2", out[-3000:]
    (mechanism,) = [r for r in table_rows(out, "all ρ") if r[1].startswith("α = 1")]
    assert int(mechanism[2]) == 2 * 3  # 2 epochs × 3 probed later batches
    again = run_benchmark("study", *args)
    assert len(results.read_text().splitlines()) == 1 and table_rows(again, "0.1") == [row]


def test_frontier_quick(tmp_path):
    """benchmarks/frontier.py: regime (a) for SGD, SAM and AE-SAM (a few seconds on 500
    MNIST images), the report with gains against SGD and cost ratios, and resuming."""
    if not (DATA_DIR / "mnist.npz").is_file():
        pytest.skip(f"mnist.npz not in {DATA_DIR}")
    args = ("a-cheap", "--methods", "sgd,sam,ae-sam", "--out-dir", str(tmp_path))
    run_benchmark("frontier", *args, timeout=300)
    report = (tmp_path / "report.md").read_text()
    rows = {name: table_rows(report, name)[0] for name in ("SGD", "SAM", "AE-SAM")}
    for row in rows.values():
        assert 0.0 < float(row[2]) <= 100.0, row  # test accuracy, %
    sgd, sam = float(rows["SGD"][2]), float(rows["SAM"][2])
    assert abs(float(rows["SAM"][4]) - (sam - sgd)) <= 0.011, rows["SAM"]  # gain, pp
    assert rows["SGD"][8].startswith("1.00×"), rows["SGD"]  # the cost baseline
    # The plot needs matplotlib (the `benchmarks` extra, not the test one); without it the
    # report says so instead of naming a file.
    if importlib.util.find_spec("matplotlib") is None:
        assert "Plot: none (matplotlib missing" in report, report[-500:]
    else:
        assert (tmp_path / "frontier.png").is_file()
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    assert len(lines) == 3
    run_benchmark("frontier", *args)  # finished runs are read back, not rerun
    assert (tmp_path / "a.jsonl").read_text().splitlines() == lines
