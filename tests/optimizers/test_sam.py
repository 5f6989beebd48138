"""SAM and multi-step SAM against the NumPy reference, and the wrapper's contract."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.keras_private import learning_rate_object
from tests import reference
from tests.conftest import jit_modes, weights_close
from tests.helpers import (
    NUM_CLASSES,
    fit_dense,
    reference_run,
    regression_data,
    sgd,
    softmax_data,
)


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("steps", [1, 3])
def test_sam_softmax_regression_matches_numpy(steps, jit_compile):
    x, labels, weights = softmax_data()
    model, _ = fit_dense(
        keras_sam.SAM(sgd(), rho=0.3, steps=steps), x, labels, weights,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        NUM_CLASSES, batch_size=16, epochs=2, jit_compile=jit_compile,
    )
    want = reference_run(
        lambda xb, yb: reference.softmax_regression(xb, yb, NUM_CLASSES),
        x, labels, weights, 16, 2,
        lambda f, p: reference.sam_direction(f, p, rho=0.3, steps=steps),
    )
    weights_close(model.get_weights(), want, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2])
def test_sam_quadratic_matches_numpy(steps):
    x, targets, weights = regression_data()
    model, _ = fit_dense(
        keras_sam.SAM(sgd(), rho=0.2, steps=steps), x, targets, weights,
        "mse", 1, batch_size=10, epochs=2,
    )
    want = reference_run(
        reference.linear_regression, x, targets, weights, 10, 2,
        lambda f, p: reference.sam_direction(f, p, rho=0.2, steps=steps),
    )
    weights_close(model.get_weights(), want, atol=1e-5)


def test_sam_differs_from_plain_sgd():
    # Guards the test above against a reference that is SGD in disguise.
    x, labels, weights = softmax_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3), x, labels, weights, loss, NUM_CLASSES, 16)
    plain, _ = fit_dense(sgd(), x, labels, weights, loss, NUM_CLASSES, 16)
    assert max(np.abs(a - b).max() for a, b in zip(sam.get_weights(), plain.get_weights())) > 1e-3


def test_plain_optimizer_trains_like_keras():
    x, labels, weights = softmax_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    wrapped, _ = fit_dense(sgd(), x, labels, weights, loss, NUM_CLASSES, 16, epochs=2)
    plain = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(NUM_CLASSES)])
    plain.set_weights(weights)
    plain.compile(optimizer=sgd(), loss=loss)
    plain.fit(x, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)
    weights_close(wrapped.get_weights(), plain.get_weights(), atol=1e-6)


def test_zero_gradient_gives_a_finite_step():
    # All-zero inputs and weights with an MSE target equal to the output: g = 0.
    x = np.zeros((8, 3), "float32")
    y = np.zeros((8, 1), "float32")
    model, history = fit_dense(
        keras_sam.SAM(sgd()), x, y, [np.zeros((3, 1), "float32"), np.zeros((1,), "float32")],
        "mse", 1, batch_size=4,
    )
    for w in model.get_weights():
        np.testing.assert_array_equal(w, 0.0)
    assert history.history["skipped_steps"][-1] == 0
    assert np.isfinite(history.history["grad_cosine"][-1])


def test_diagnostics_are_logged_and_match_definition():
    x, labels, weights = softmax_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _, history = fit_dense(
        keras_sam.SAM(sgd(), rho=0.3), x[:16], labels[:16], weights, loss, NUM_CLASSES, 16
    )
    problem = reference.softmax_regression(x[:16].astype("float64"), labels[:16], NUM_CLASSES)
    params = [w.astype("float64") for w in weights]
    loss0, g0 = problem(params)
    e = [g * 0.3 / reference.norm(g0) for g in g0]
    loss1, g1 = problem([p + ei for p, ei in zip(params, e)])
    np.testing.assert_allclose(history.history["sharpness"][0], loss1 - loss0, atol=1e-6)
    cos = reference.dot(g0, g1) / (reference.norm(g0) * reference.norm(g1))
    np.testing.assert_allclose(history.history["grad_cosine"][0], cos, atol=1e-6)
    # The reported loss is the clean one.
    np.testing.assert_allclose(history.history["loss"][0], loss0, atol=1e-6)


def test_diagnostics_can_be_switched_off():
    x, labels, weights = softmax_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    _, history = fit_dense(
        keras_sam.SAM(sgd(), diagnostics=False), x, labels, weights, loss, NUM_CLASSES, 16
    )
    assert "sharpness" not in history.history
    assert "grad_cosine" not in history.history
    assert "skipped_steps" in history.history


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"rho": 0.0}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": "big"}, "rho"),
        ({"steps": 0}, "steps"),
        ({"steps": 1.5}, "steps"),
        ({"eta": -1.0}, "eta"),
        ({"adaptive_variables": "some"}, "adaptive_variables"),
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"clipnorm": 1.0}, "clipnorm"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        keras_sam.SAM(sgd(), **kwargs)


@pytest.mark.parametrize(
    "optimizer", ["sgd", keras.optimizers.SGD, None, 0.1], ids=["str", "class", "none", "float"]
)
def test_non_optimizer_is_rejected(optimizer):
    with pytest.raises(ValueError, match="optimizer"):
        keras_sam.SAM(optimizer)


def test_nested_sharpness_aware_optimizer_is_rejected():
    with pytest.raises(ValueError, match="optimizer"):
        keras_sam.SAM(keras_sam.SAM(sgd()))


def test_config_round_trip_nests_the_inner_optimizer():
    inner = keras.optimizers.AdamW(
        keras.optimizers.schedules.CosineDecay(0.01, 100), weight_decay=0.05, clipnorm=1.0
    )
    sam = keras_sam.SAM(inner, rho=0.1, steps=2, diagnostics=False)
    config = sam.get_config()
    restored = keras_sam.SAM.from_config(config)
    assert isinstance(restored.inner_optimizer, keras.optimizers.AdamW)
    schedule = learning_rate_object(restored.inner_optimizer)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    assert schedule.get_config() == learning_rate_object(inner).get_config()
    assert restored.inner_optimizer.clipnorm == 1.0
    assert restored.inner_optimizer.weight_decay == 0.05
    assert (restored.rho, restored.steps, restored.diagnostics) == (0.1, 2, False)
    serialized = keras.saving.serialize_keras_object(sam)
    assert isinstance(keras.saving.deserialize_keras_object(serialized), keras_sam.SAM)


def test_learning_rate_and_iterations_are_the_inner_optimizers():
    inner = sgd()
    sam = keras_sam.SAM(inner)
    sam.learning_rate = 0.01
    np.testing.assert_allclose(float(inner.learning_rate), 0.01)
    assert sam.iterations is inner.iterations
