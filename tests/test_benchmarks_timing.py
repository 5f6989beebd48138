"""Smoke runs of the timing benchmarks (step_time, hvp_time) and of
eigenvector_quality on the current backend: they run and print real rows.

The numbers are not checked (timing belongs in the benchmarks, not in tests);
only that each script completes and reports finite, positive figures.
"""

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


def run(module, *args, timeout=300):
    """`python -m benchmarks.<module> args` on JAX, from the repository root."""
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", *args], env=env,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, f"{module} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def numbers(row):
    return [float(x) for x in re.findall(r"(?<![\w.])(\d+\.\d+)(?=×| |$)", row)]


@in_process_host_session("a smoke run on JAX in a process of its own")
def test_step_time_quick_core_suite_reports_sam_over_inner():
    out = run("step_time", "--quick", "--suite", "core", "--backends", "jax", "--threads", "1")
    rows = [line for line in out.splitlines() if line.startswith("| jax")]
    assert rows, out
    values = numbers(rows[0])
    assert values and all(math.isfinite(v) and v > 0 for v in values), rows[0]


@in_process_host_session("a smoke run on JAX in a process of its own")
def test_hvp_time_reports_hvp_over_gradient():
    out = run("hvp_time", "--repeats", "2", "--batch-size", "16", "--threads", "1",
              "--backends", "jax")
    # Lines such as "    hvp             84.5 ms   2.80x grad".
    rows = dict(re.findall(r"^\s+(grad|hvp)\s+([\d.]+) ms", out, flags=re.M))
    assert set(rows) == {"grad", "hvp"}, out
    assert all(math.isfinite(float(v)) and float(v) > 0 for v in rows.values()), out


@in_process_host_session("a smoke run on JAX in a process of its own")
@pytest.mark.skipif(not (DATA_DIR / "cifar10_train_part1.npz").is_file(),
                    reason=f"CIFAR-10 not in {DATA_DIR}")
def test_eigenvector_quality_quick_reports_cosines():
    out = run("eigenvector_quality", "--quick", "--backend", "jax")
    rows = [line for line in out.splitlines() if line.startswith("| amortized p=5")]
    assert rows, out
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    mean_cos = float(cells[3])
    assert 0.0 <= mean_cos <= 1.0, rows[0]


def test_interleaved_harness_rotates_the_order_and_counts_calls():
    """benchmarks/common.py's `time_interleaved`: which calls it makes, in which order."""
    from benchmarks import common

    order = []

    class Fake:
        def __init__(self, name):
            self.name, self.calls = name, 0

        def step(self):
            self.calls += 1
            order.append(self.name)
            return {"call": self.calls}

    runners = {name: Fake(name) for name in ("a", "b", "c")}
    seen = []
    times, logs, _ = common.time_interleaved(
        runners, ["a", "b", "c"], rounds=3,
        calls=lambda name, round_: 2 if name == "b" else 1, before_call=seen.append,
    )
    # Round r starts with the r-th name; "b" makes 2 calls in a row.
    assert order == ["a", "b", "b", "c", "b", "b", "c", "a", "c", "a", "b", "b"]
    assert seen == order
    assert {n: len(t) for n, t in times.items()} == {"a": 3, "b": 6, "c": 3}
    assert logs == {"a": {"call": 3}, "b": {"call": 6}, "c": {"call": 3}}
    stats = common.call_stats([0.004, 0.001, 0.002, 0.003])
    assert stats == {"median_ms": 2.5, "min_ms": 1.0, "p25_ms": 1.75, "p75_ms": 3.25, "n": 4}
