"""`python -m benchmarks.peers --quick` for the current KERAS_BACKEND, end to end.

keras_sam's SAM step against the backend's peer on the same model and batch:
optax's `contrib.sam` on JAX, pytorch-optimizer's `SAM` on torch (benchmark-only
extras, not installed in CI: the test skips there), a hand-written two-tape
step on TensorFlow (no extra package: it runs wherever TensorFlow does). The
timing rows must hold finite positive step times, and both implementations
must have computed the same first update (the weight-agreement column); the
peak-memory row finite sizes.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import keras
import pytest

ROOT = Path(__file__).resolve().parents[1]
BACKEND = keras.backend.backend()
PEER_MODULE = {"jax": "optax", "torch": "pytorch_optimizer", "tensorflow": "tensorflow"}[BACKEND]
ROWS = {"tensorflow": ("XLA", "graph"), "jax": ("jit",), "torch": ("eager",)}[BACKEND]
AGREEMENT = re.compile(r"^(\d\.\de[+-]\d\d) ✓ \((\d\.\de[+-]\d\d)\)$")


def table_rows(text, first_cell_prefix):
    """Cells of the markdown table rows whose first cell starts with the prefix."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith(first_cell_prefix):
            rows.append(cells)
    return rows


def positive(cell):
    value = float(cell)
    assert math.isfinite(value) and value > 0, cell
    return value


def test_peers_quick():
    pytest.importorskip(PEER_MODULE)
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.peers", "--quick", f"--backends={BACKEND}"],
        env=env, capture_output=True, text=True, timeout=480, cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"peers.py failed:\n{out[-3000:]}\n{proc.stderr[-4000:]}"
    assert "## keras_sam SAM vs peers (quick)" in out
    assert "- versions: keras " in out and "- machine: " in out

    # Timing: one row per jit mode, both step times finite and positive, the ratio theirs.
    rows = {row[1]: row for row in table_rows(out, f"{BACKEND} ")}
    assert set(rows) == set(ROWS), out
    for jit, row in rows.items():
        assert len(row) == 10, row
        ours, peer = positive(row[3]), positive(row[4])
        ratio = float(row[5].split("×")[0])
        assert ratio == pytest.approx(ours / peer, abs=0.006), row
        # The same first update from the same weights and batch: the weights
        # agree (float32 rounding) while the update itself is ~1e-2.
        match = AGREEMENT.match(row[8])
        assert match, row
        difference, update = float(match.group(1)), float(match.group(2))
        assert difference <= 1e-5 and update > 1e-4, row
        bn = float(row[9])
        if BACKEND == "torch":
            # pytorch-optimizer's usual loop updates BatchNorm statistics on both passes.
            assert bn > 1e-4, row
        else:
            assert bn <= 1e-5, row
    assert f"- {BACKEND}: " in out  # the peer's note (what differs by design)

    # Peak memory: inner, keras_sam SAM, peer, and both ratios.
    (row,) = [r for r in table_rows(out, BACKEND) if len(r) == 7]
    sizes = [float(c) for c in row[2:5]]
    assert all(math.isfinite(s) and s >= 0 for s in sizes), row
    assert sizes[1] > 0, row  # the SAM step allocates something
    for cell in row[5:7]:
        assert math.isfinite(float(cell.rstrip("×"))), row


def test_profile_peers_quick():
    """`python -m benchmarks.profile_peers --quick --skip-memory`: the torch time profile."""
    if BACKEND != "torch":
        pytest.skip("profile_peers.py profiles the torch step")
    pytest.importorskip("pytorch_optimizer")
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.profile_peers", "--quick",
         "--skip-memory"],
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"), capture_output=True, text=True,
        timeout=180, cwd=ROOT,
    )
    out = proc.stdout
    assert proc.returncode == 0, f"profile_peers.py failed:\n{out[-3000:]}\n{proc.stderr[-4000:]}"
    assert "## Profile: keras_sam SAM vs pytorch_optimizer.SAM on torch (quick)" in out
    # The category table: from its header to the first blank line.
    table = out[out.index("| category | keras_sam ms/step"):].split("\n\n")[0]
    rows = {r[0]: r for r in table_rows(table, "")[2:]}
    categories = ["conv forward", "conv backward", "BatchNorm forward", "BatchNorm backward",
                  "Python/framework (wall − ops)"]
    for name in categories + ["**wall (profiled step)**"]:
        assert name in rows, out
    wall = [positive(c) for c in rows["**wall (profiled step)**"][1:3]]
    for side in (1, 2):  # the categories and the Python time add up to the wall time
        parts = sum(float(r[side]) for name, r in rows.items()
                    if not name.startswith(("**", "↳", "all ops", "wall,")))
        assert parts == pytest.approx(wall[side - 1], rel=0.05), out
    for name in categories[:4]:  # both steps run the model's convolutions and BatchNorm
        assert positive(rows[name][1]) and positive(rows[name][2])
