"""SharpnessMonitor: curvature diagnostics in `fit`'s History."""

import math

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam import hessian
from keras_sam.callbacks import SharpnessMonitor

NAMES = ("lambda_max", "hessian_trace", "eigenvector_angle")


def data(n=64, d=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def mlp(d=6):
    return keras.Sequential([
        keras.Input((d,)),
        keras.layers.Dense(8, activation="tanh"),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(2),
    ])


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def direct(model, x, y, monitor):
    """The monitor's values, computed directly at the model's weights."""
    curvature = hessian.Curvature(model, x, y)
    value, vector = curvature.top_eigenvalue(monitor.max_iterations, monitor.tol, seed=monitor.seed)
    return {
        "lambda_max": value,
        "hessian_trace": curvature.trace(monitor.trace_samples, monitor.seed),
        "eigenvector_angle": curvature.gradient_eigenvector_angle(vector),
    }


@pytest.mark.parametrize("kind", ["sam", "plain"])
def test_monitor_logs_into_history(kind):
    x, y = data()
    if kind == "sam":
        model = keras_sam.SAMModel(mlp())
        optimizer = keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05)
        every, epochs = 2, 4
    else:
        model = mlp()
        optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
        every, epochs = 1, 2
    model.compile(optimizer=optimizer, loss=LOSS)
    model.build((None, 6))
    monitor = SharpnessMonitor((x[:32], y[:32]), every=every, max_iterations=30, trace_samples=5)
    before = direct(model, x[:32], y[:32], monitor)

    history = model.fit(x, y, batch_size=16, epochs=epochs, callbacks=[monitor], verbose=0)

    monitored = list(range(every - 1, epochs, every))
    assert monitor.history["epoch"] == monitored
    for name in NAMES:
        values = history.history[name]
        assert len(values) == len(monitored)
        assert all(math.isfinite(v) for v in values)
        assert values == monitor.history[name]
    assert all(0 <= a <= 180 for a in history.history["eigenvector_angle"])
    # Measured at the weights of the end of the epoch (JAX: synced from the
    # trainer's state), not at the initial ones: the last epoch's values are
    # those of the final weights.
    after = direct(model, x[:32], y[:32], monitor)
    for name in NAMES:
        assert history.history[name][-1] == pytest.approx(after[name], rel=1e-4, abs=1e-3)
    assert history.history["lambda_max"][0] != pytest.approx(before["lambda_max"], rel=1e-3)
    assert len(history.history["loss"]) == epochs


def test_monitor_options():
    x, y = data()
    model = mlp()
    model.compile(optimizer="sgd", loss=LOSS)
    monitor = SharpnessMonitor(
        [(x[:16], y[:16]), (x[16:32], y[16:32])],
        max_iterations=10, trace_samples=0, angle=False, warm_start=True, prefix="val_",
    )
    history = model.fit(x, y, batch_size=16, epochs=2, callbacks=[monitor], verbose=0)
    assert len(history.history["val_lambda_max"]) == 2
    assert "val_hessian_trace" not in history.history
    assert "val_eigenvector_angle" not in history.history
    assert monitor.eigenvector is not None
