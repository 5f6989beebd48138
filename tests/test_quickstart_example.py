"""examples/quickstart.py: a tiny run of the four methods, and its sharpness.

The tiny run compiles every method's step variants, so it runs on one backend,
the quickstart's default (TensorFlow): the methods themselves are tested on
every backend elsewhere. The figure is checked only where matplotlib is
installed (the `examples` extra installs it; the `test` extra does not).
"""

import importlib.util
import math
from pathlib import Path

import keras
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("quickstart_example", ROOT / "examples" / "quickstart.py")
quickstart = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(quickstart)

TINY = ["--epochs", "2", "--train-size", "64", "--batch-size", "32", "--png", ""]
one_backend = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the quickstart's tiny run: one backend (its default, TensorFlow) is enough",
)


@pytest.fixture(scope="module")
def tiny_run():
    return quickstart.main(TINY)


@one_backend
def test_four_methods_report_accuracy_alpha_sharpness_and_lambda(tiny_run):
    assert list(tiny_run) == ["SGD", "SAM", "XSAM", "X-SAM"]
    for name, record in tiny_run.items():
        assert 0.0 <= record["train_accuracy"] <= 1.0 and 0.0 <= record["test_accuracy"] <= 1.0
        assert math.isfinite(record["sharpness"]) and math.isfinite(record["lambda_max"]), name
        history = record["history"]
        assert len(history["lambda_max"]) == 2 and len(history["val_accuracy"]) == 2, name
        assert ("alpha" in history) == (name == "XSAM"), name
    # α* is a point of XSAM's grid 0, 0.1, ..., 2 (searched on each epoch's first batch).
    alpha = tiny_run["XSAM"]["alpha"]
    assert 0.0 <= alpha <= 2.0 and abs(alpha * 10 - round(alpha * 10)) < 1e-4
    table = quickstart.format_table(tiny_run, n_test=500)
    assert [line.split()[0] for line in table.splitlines()[1:5]] == ["SGD", "SAM", "XSAM", "X-SAM"]


def test_mean_sharpness_is_rho_times_gradient_norm_to_first_order():
    """L(θ + ρ ĝ) − L(θ) = ρ‖g‖ + O(ρ²): the quickstart's sharpness against
    the gradient norm computed independently (closed form, NumPy)."""
    from keras import ops

    x = np.random.default_rng(2).normal(size=(8, 3)).astype("float32")
    y = np.random.default_rng(3).normal(size=(8, 1)).astype("float32")
    model = keras.Sequential([keras.Input(shape=(3,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    kernel, bias = (ops.convert_to_numpy(v).astype("float64") for v in model.trainable_variables)
    residual = x @ kernel + bias - y  # loss = mean(residual²)
    grad = np.concatenate([(2 * x.T @ residual / 8).ravel(), 2 * residual.mean(0)])
    rho = 1e-3
    got = quickstart.mean_sharpness(model, x, y, rho, batch_size=8)
    assert got == pytest.approx(rho * np.linalg.norm(grad), rel=2e-2)


@one_backend
def test_figure_is_written(tiny_run, tmp_path):
    pytest.importorskip("matplotlib", reason="the figure needs matplotlib (the examples extra)")
    path = tmp_path / "quickstart.png"
    quickstart.plot(tiny_run, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
