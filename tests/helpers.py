"""What several test modules share: small problems to train, and running a
script under each backend.

Test modules import these from here, never from one another.
"""

import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches

# -- small problems -----------------------------------------------------------
NUM_CLASSES = 3
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def softmax_problem(xb, yb):
    """The NumPy reference problem of `softmax_data`'s batches."""
    return reference.softmax_regression(xb, yb, NUM_CLASSES)


def softmax_data(seed=0, n=48, d=5):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=n).astype("int32")
    w = (0.5 * rng.normal(size=(d, NUM_CLASSES))).astype("float32")
    b = (0.1 * rng.normal(size=(NUM_CLASSES,))).astype("float32")
    return x, labels, [w, b]


def regression_data(seed=1, n=40, d=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    targets = (x @ rng.normal(size=(d, 1)) + 0.3).astype("float32")
    w = (0.2 * rng.normal(size=(d, 1))).astype("float32")
    b = np.zeros((1,), "float32")
    return x, targets, [w, b]


def classification_data(n=64, d=6, seed=0):
    """Two linearly separable classes."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype("float32")
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype("int32")
    return x, y


def sequential_mlp(d=6, batchnorm=True, dropout=0.0):
    layers = [keras.Input((d,)), keras.layers.Dense(8, activation="relu")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization())
    if dropout:
        layers.append(keras.layers.Dropout(dropout))
    layers.append(keras.layers.Dense(2))
    return keras.Sequential(layers)


def sgd():
    return keras.optimizers.SGD(0.1, momentum=0.9)


def fit_dense(optimizer, x, y, weights, loss, units, batch_size, epochs=1, jit_compile="auto"):
    model = keras_sam.SAMModel(
        keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(units)])
    )
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss=loss, jit_compile=jit_compile)
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, shuffle=False, verbose=0)
    return model, history


def reference_run(problem, x, y, weights, batch_size, epochs, direction_fn, lr=0.1, momentum=0.9):
    """`fit_dense` with `sgd()`, in float64 NumPy (`tests/reference.py`)."""
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(lr, momentum)
    data = batches(x.astype("float64"), y, batch_size) * epochs
    return reference.train(problem, params, data, direction_fn, optimizer)


# -- assertions -----------------------------------------------------------------
def assert_raises_naming(argument, cls, *args, **kwargs):
    """`cls(*args, **kwargs)` raises a ValueError that names `argument`."""
    try:
        cls(*args, **kwargs)
    except ValueError as error:
        assert f"`{argument}`" in str(error), (kwargs, str(error))
    else:
        pytest.fail(f"no ValueError for {kwargs}")


# -- scripts under each backend -------------------------------------------------
TESTS = Path(__file__).resolve().parent
BACKENDS = ("tensorflow", "jax", "torch")


def run_in_subprocess(backend, script, out_dir):
    """Runs `script OUT_DIR` with KERAS_BACKEND=backend: None, or why it failed."""
    env = dict(os.environ)
    env["KERAS_BACKEND"] = backend
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    env["PYTHONPATH"] = os.pathsep.join(
        [str(TESTS.parent)] + [p for p in [env.get("PYTHONPATH")] if p]
    )
    try:
        proc = subprocess.run(
            [sys.executable, str(script), str(out_dir)],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired as error:
        return f"timed out after {error.timeout} s; stderr:\n{error.stderr}"
    if proc.returncode != 0:
        return (
            f"exited with code {proc.returncode}; stderr:\n{proc.stderr[-10000:]}"
            f"\nstdout:\n{proc.stdout[-2000:]}"
        )
    return None
