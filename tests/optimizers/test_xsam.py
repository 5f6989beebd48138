"""XSAM against the NumPy reference, its special cases and its α search."""

import math

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam
from keras_sam.optimizers.base import Ascent
from keras_sam.optimizers.xsam import search_alpha
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import (
    fit_dense,
    LOSS,
    NUM_CLASSES,
    reference_run,
    regression_data,
    sgd,
    softmax_data,
    softmax_problem,
)




@pytest.mark.parametrize("steps", [1, 3])
def test_alpha_one_is_sam(steps):
    x, labels, weights = softmax_data()
    xsam, _ = fit_dense(keras_sam.XSAM(sgd(), rho=0.3, alpha=1.0, steps=steps),
                        x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3, steps=steps),
                       x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    weights_close(xsam.get_weights(), sam.get_weights(), atol=1e-6)


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("alpha, steps", [(0.0, 1), (0.6, 1), (1.7, 2), (0.0, 3)])
def test_fixed_alpha_matches_numpy(alpha, steps, jit_compile):
    x, labels, weights = softmax_data()
    model, history = fit_dense(
        keras_sam.XSAM(sgd(), rho=0.3, alpha=alpha, steps=steps), x, labels, weights, LOSS,
        NUM_CLASSES, 16, epochs=2, jit_compile=jit_compile,
    )
    want = reference_run(
        softmax_problem, x, labels, weights, 16, 2,
        lambda f, p: reference.xsam_direction(f, p, rho=0.3, alpha=alpha, steps=steps)[0],
    )
    weights_close(model.get_weights(), want, atol=1e-5)
    np.testing.assert_allclose(history.history["alpha"], alpha, atol=1e-7)
    assert int(model.optimizer.searches.numpy()) == 0


def test_alpha_zero_is_gradient_norm_along_the_displacement():
    # "SGD+": d = ‖g_k‖ · v0, checked on one step from the reference's pieces.
    x, labels, weights = softmax_data()
    model, _ = fit_dense(keras_sam.XSAM(sgd(), rho=0.3, alpha=0.0, steps=2), x[:16], labels[:16],
                         weights, LOSS, NUM_CLASSES, 16)
    problem = softmax_problem(x[:16].astype("float64"), labels[:16])
    params = [w.astype("float64") for w in weights]
    displacement, g = reference.ascent(problem, params, 0.3, steps=2)
    d = [reference.norm(g) * e / reference.norm(displacement) for e in displacement]
    want = reference.SGDMomentum(0.1, 0.9).step(params, d)
    weights_close(model.get_weights(), want, atol=1e-6)


def make_ascent(displacement, grads):
    displacement = [ops.convert_to_tensor(np.asarray(a, "float32")) for a in displacement]
    grads = [ops.convert_to_tensor(np.asarray(a, "float32")) for a in grads]
    zero = ops.convert_to_tensor(0.0)
    norm = ops.sqrt(sum(ops.sum(g * g) for g in grads))
    return Ascent(zero, None, grads, displacement, zero, grads, norm, [])


def xsam_direction(optimizer, displacement, grads):
    result = optimizer.direction(make_ascent(displacement, grads), None, None, "default")
    d, diagnostics = result.vector, result.diagnostics
    return [ops.convert_to_numpy(t) for t in d], diagnostics


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0, 1.7, 2.0])
def test_direction_norm_is_gradient_norm_for_every_alpha(alpha):
    rng = np.random.default_rng(3)
    displacement = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    grads = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    optimizer = keras_sam.XSAM(sgd(), alpha=alpha)
    optimizer.build([keras.Variable(np.zeros((4, 3))), keras.Variable(np.zeros(3))])
    d, _ = xsam_direction(optimizer, displacement, grads)
    np.testing.assert_allclose(reference.norm(d), reference.norm(grads), rtol=1e-5)
    v0 = [e / reference.norm(displacement) for e in displacement]
    v1 = [g / reference.norm(grads) for g in grads]
    psi = np.arccos(reference.dot(v0, v1))
    want = [reference.norm(grads) * v for v in reference.slerp(v0, v1, alpha, psi)]
    weights_close(d, want, atol=1e-5)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_parallel_v0_v1_fall_back_to_the_midpoint(sign):
    grads = [np.array([[3.0, 4.0]]), np.array([0.0])]
    optimizer = keras_sam.XSAM(sgd(), alpha=0.7)
    optimizer.build([keras.Variable(np.zeros((1, 2))), keras.Variable(np.zeros(1))])
    d, diagnostics = xsam_direction(optimizer, [sign * g for g in grads], grads)
    assert all(np.isfinite(t).all() for t in d)
    # (v0 + v1)/2: v1 itself when parallel, zero when antiparallel.
    want = [g * (1.0 + sign) / 2 for g in grads]
    weights_close(d, want, atol=1e-6)
    assert np.isfinite(ops.convert_to_numpy(diagnostics["psi"]))


def test_search_picks_the_first_maximum_on_ties():
    alphas = []

    def flat(alpha):
        alphas.append(alpha)
        return ops.convert_to_tensor(1.0)

    assert float(ops.convert_to_numpy(search_alpha(flat, 21, 0.1))) == 0.0

    def two_peaks(alpha):  # equal maxima at α = 0.5 and α = 1.5
        return -ops.minimum(ops.abs(alpha - 0.5), ops.abs(alpha - 1.5))

    np.testing.assert_allclose(ops.convert_to_numpy(search_alpha(two_peaks, 21, 0.1)), 0.5, atol=1e-6)

    def nan_then_peak(alpha):
        return ops.where(alpha < 0.25, float("nan"), -ops.abs(alpha - 1.2))

    np.testing.assert_allclose(ops.convert_to_numpy(search_alpha(nan_then_peak, 21, 0.1)), 1.2, atol=1e-6)


# A problem whose searched α* is interior and clear (checked below on the reference).
SEARCH = dict(rho=1.0, rho_max=0.5, alpha_delta=0.5, alpha_max=2.0)


def reference_dynamic_xsam(x, targets, weights, epochs, batch_size):
    grid = [i * SEARCH["alpha_delta"] for i in range(5)]
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    alpha, searched = 1.0, []
    for _ in range(epochs):
        for i, (xb, yb) in enumerate(batches(x.astype("float64"), targets.astype("float64"), batch_size)):
            problem = reference.linear_regression(xb, yb)
            if i == 0:
                d, alpha, losses = reference.xsam_direction(
                    problem, params, SEARCH["rho"], None, rho_max=SEARCH["rho_max"], grid=grid)
                top = np.sort(losses)
                searched.append((alpha, (top[-1] - top[-2]) / abs(top[-1])))
            else:
                d = reference.xsam_direction(problem, params, SEARCH["rho"], alpha)[0]
            params = optimizer.step(params, d)
    return params, searched


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_dynamic_search_matches_numpy_once_per_epoch(jit_compile):
    x, targets, weights = regression_data()
    x, targets = x[:20], targets[:20]
    want, searched = reference_dynamic_xsam(x, targets, weights, epochs=2, batch_size=10)
    # The reference problem is informative: interior maxima, clear of float32 noise.
    assert [a for a, _ in searched] == [1.0, 1.5]
    assert min(gap for _, gap in searched) > 1e-3
    model, history = fit_dense(
        keras_sam.XSAM(sgd(), **SEARCH), x, targets, weights, "mse", 1, 10, epochs=2,
        jit_compile=jit_compile,
    )
    weights_close(model.get_weights(), want, atol=1e-5)
    assert int(model.optimizer.searches.numpy()) == 2  # exactly once per epoch
    np.testing.assert_allclose(history.history["alpha"], [1.0, 1.5], atol=1e-6)


def test_search_every_n_steps():
    x, labels, weights = softmax_data()
    model, _ = fit_dense(keras_sam.XSAM(sgd(), search_every=2), x, labels, weights, LOSS,
                         NUM_CLASSES, 8, epochs=2)  # 12 steps: searches at 0, 2, …, 10
    assert int(model.optimizer.searches.numpy()) == 6


def test_alpha_and_search_count_survive_save_and_load(tmp_path):
    x, labels, weights = softmax_data()
    model, _ = fit_dense(keras_sam.XSAM(sgd(), rho=0.3, alpha_delta=0.5), x, labels, weights,
                         LOSS, NUM_CLASSES, 16, epochs=2)
    path = str(tmp_path / "xsam.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, keras_sam.XSAM)
    assert loaded.optimizer.alpha_delta == 0.5
    assert float(loaded.optimizer.alpha_value.numpy()) == float(model.optimizer.alpha_value.numpy())
    assert int(loaded.optimizer.searches.numpy()) == 2


def test_psi_is_logged_in_degrees():
    x, labels, weights = softmax_data()
    _, history = fit_dense(keras_sam.XSAM(sgd(), rho=0.3, alpha=1.0), x[:16], labels[:16],
                           weights, LOSS, NUM_CLASSES, 16)
    problem = softmax_problem(x[:16].astype("float64"), labels[:16])
    displacement, g = reference.ascent(problem, [w.astype("float64") for w in weights], 0.3)
    psi = math.degrees(math.acos(reference.dot(displacement, g) / (reference.norm(displacement) * reference.norm(g))))
    np.testing.assert_allclose(history.history["psi"][0], psi, atol=1e-3)


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"rho_max": 0.0}, "rho_max"),
        ({"alpha_max": -1.0}, "alpha_max"),
        ({"alpha_delta": 0.0}, "alpha_delta"),
        ({"alpha_delta": 3.0}, "alpha_delta"),
        ({"alpha": float("inf")}, "alpha"),
        ({"initial_alpha": float("nan")}, "initial_alpha"),
        ({"search_every": 0}, "search_every"),
        ({"rho": -1.0}, "rho"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        keras_sam.XSAM(sgd(), **kwargs)


def test_defaults_are_the_official_codes():
    xsam = keras_sam.XSAM(sgd())
    assert (xsam.rho, xsam.rho_max, xsam.alpha_max, xsam.alpha_delta, xsam.initial_alpha) == (
        0.15, 0.3, 2.0, 0.1, 1.0)
    assert xsam.grid_size == 21 and xsam.alpha is None
    restored = keras_sam.XSAM.from_config(xsam.get_config())
    assert restored.get_config()["rho_max"] == 0.3
