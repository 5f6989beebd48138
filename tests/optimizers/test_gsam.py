"""GSAM against the NumPy reference: constant ρ, ρ following the learning rate, α = 0 is SAM."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.keras_private import learning_rate_object
from keras_sam.optimizers.base import Ascent
from keras_sam.optimizers.gsam import learning_rate_bounds
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import (
    assert_raises_naming,
    fit_dense,
    LOSS,
    NUM_CLASSES,
    reference_run,
    regression_data,
    sgd,
    softmax_data,
    softmax_problem,
)

SCHEDULES = keras.optimizers.schedules



# Every compile mode of the backend for the default, the default mode for the variants.
@pytest.mark.parametrize("alpha, kwargs, jit_compile", [
    *[(0.4, {}, jit) for jit in jit_modes()],
    (0.9, {"steps": 2}, "auto"),
    (0.4, {"adaptive": True}, "auto"),
])
def test_gsam_softmax_regression_matches_numpy(alpha, kwargs, jit_compile):
    x, labels, weights = softmax_data()
    rho = 1.0 if kwargs.get("adaptive") else 0.3
    model, history = fit_dense(
        keras_sam.GSAM(sgd(), rho=rho, alpha=alpha, **kwargs), x, labels, weights, LOSS,
        NUM_CLASSES, 16, epochs=2, jit_compile=jit_compile,
    )
    ref_kwargs = dict(kwargs)
    if kwargs.get("adaptive"):
        ref_kwargs["scaled"] = [True, False]  # ASAM "weights": T = 1 on the bias
    want = reference_run(
        softmax_problem, x, labels, weights, 16, 2,
        lambda f, p: reference.gsam_direction(f, p, rho=rho, alpha=alpha, **ref_kwargs),
    )
    weights_close(model.get_weights(), want, atol=1e-5)
    np.testing.assert_allclose(history.history["rho"], rho, atol=1e-7)


def test_gsam_quadratic_matches_numpy():
    x, targets, weights = regression_data()
    model, _ = fit_dense(keras_sam.GSAM(sgd(), rho=0.2, alpha=0.5), x, targets, weights,
                         "mse", 1, batch_size=10, epochs=2)
    want = reference_run(
        reference.linear_regression, x, targets, weights, 10, 2,
        lambda f, p: reference.gsam_direction(f, p, rho=0.2, alpha=0.5),
    )
    weights_close(model.get_weights(), want, atol=1e-5)


def test_alpha_zero_is_sam():
    x, labels, weights = softmax_data()
    gsam, _ = fit_dense(keras_sam.GSAM(sgd(), rho=0.3, alpha=0.0),
                        x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3),
                       x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    weights_close(gsam.get_weights(), sam.get_weights(), atol=1e-6)


def test_reference_gsam_differs_from_sam():
    # Guards the reference tests against a decomposition that is a no-op.
    x, labels, weights = softmax_data()
    gsam = reference_run(softmax_problem, x, labels, weights, 16, 2,
                         lambda f, p: reference.gsam_direction(f, p, rho=0.3, alpha=0.4))
    sam = reference_run(softmax_problem, x, labels, weights, 16, 2,
                        lambda f, p: reference.sam_direction(f, p, rho=0.3))
    assert max(np.abs(a - b).max() for a, b in zip(gsam, sam)) > 1e-3


def test_removed_part_is_the_component_of_g0_orthogonal_to_g1():
    rng = np.random.default_rng(5)
    g0 = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    g1 = [rng.normal(size=(4, 3)), rng.normal(size=(3,))]
    optimizer = keras_sam.GSAM(sgd(), alpha=0.7)
    optimizer.build([keras.Variable(np.zeros((4, 3))), keras.Variable(np.zeros(3))])
    tensors = [keras.ops.convert_to_tensor(np.asarray(a, "float32")) for a in g0 + g1]
    g0_t, g1_t = tensors[:2], tensors[2:]
    g1_norm = keras.ops.convert_to_tensor(reference.norm(g1), "float32")
    ascent = Ascent(0.0, None, g0_t, g1_t, 0.0, g1_t, g1_norm, [])
    result = optimizer.direction(ascent, None, None, "default")
    d, updates = result.vector, result.state_updates
    d = [keras.ops.convert_to_numpy(t) for t in d]
    removed = [(b - x) / 0.7 for b, x in zip(g1, d)]  # g_⊥ = (g_1 − d)/α
    assert abs(reference.dot(removed, g1)) < 1e-5 * reference.norm(removed) * reference.norm(g1)
    projection = reference.dot(g0, g1) / reference.norm(g1) ** 2
    weights_close(removed, [a - projection * b for a, b in zip(g0, g1)], atol=1e-5)
    assert updates == []


# -- ρ following the learning rate -------------------------------------------------
def polynomial_lr(step):  # PolynomialDecay(0.1, 10, 0.01)
    return (0.1 - 0.01) * (1 - min(step, 10) / 10) + 0.01


def reference_rho_follows_lr(x, labels, weights, batch_size, epochs, alpha, rho_at):
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(polynomial_lr(0), 0.9)
    rhos = []
    for i, (xb, yb) in enumerate(batches(x.astype("float64"), labels, batch_size) * epochs):
        optimizer.learning_rate = polynomial_lr(i)
        rhos.append(rho_at(optimizer.learning_rate))
        d = reference.gsam_direction(softmax_problem(xb, yb), params, rho=rhos[-1], alpha=alpha)
        params = optimizer.step(params, d)
    return params, rhos


@pytest.mark.parametrize("bounds, jit_compile", [
    # lr_min = 0.01, lr_max = 0.1 read from the schedule
    *[({"rho": 0.3, "rho_min": 0.05}, jit) for jit in jit_modes()],
    ({"rho_max": 0.4, "rho_min": 0.0, "lr_min": 0.0, "lr_max": 0.2}, "auto"),
])
def test_rho_following_learning_rate_schedule_matches_numpy(bounds, jit_compile):
    x, labels, weights = softmax_data()
    inner = keras.optimizers.SGD(SCHEDULES.PolynomialDecay(0.1, 10, 0.01), momentum=0.9)
    gsam = keras_sam.GSAM(inner, alpha=0.4, **bounds)
    rho_max = bounds.get("rho_max", bounds.get("rho"))
    lr_min, lr_max = bounds.get("lr_min", 0.01), bounds.get("lr_max", 0.1)
    assert (gsam.rho_min, gsam.rho_max, gsam.lr_min, gsam.lr_max) == pytest.approx(
        (bounds["rho_min"], rho_max, lr_min, lr_max))
    model, history = fit_dense(gsam, x, labels, weights, LOSS, NUM_CLASSES, 8, epochs=2,
                               jit_compile=jit_compile)  # 12 steps
    want, rhos = reference_rho_follows_lr(
        x, labels, weights, 8, 2, 0.4,
        lambda lr: reference.gsam_rho(lr, bounds["rho_min"], rho_max, lr_min, lr_max))
    assert rhos[0] > rhos[9] + 0.05  # ρ_t really moves
    weights_close(model.get_weights(), want, atol=1e-5)
    # The logged ρ is the epoch mean of ρ_t.
    np.testing.assert_allclose(history.history["rho"], [np.mean(rhos[:6]), np.mean(rhos[6:])],
                               atol=1e-6)


def test_rho_follows_a_float_learning_rate_set_by_hand():
    inner = sgd()  # lr 0.1: lr_max = 0.1 is read from it, lr_min is given
    gsam = keras_sam.GSAM(inner, rho_max=0.2, rho_min=0.02, lr_min=0.0)
    gsam.build([keras.Variable(np.zeros(2))])
    for lr, want in [(0.1, 0.2), (0.05, 0.11), (0.0, 0.02), (0.2, 0.38)]:
        gsam.learning_rate = lr  # e.g. ReduceLROnPlateau
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(gsam.current_rho())), want,
                                   atol=1e-7)


def test_rho_following_learning_rate_is_clipped_at_zero():
    inner = keras.optimizers.SGD(SCHEDULES.PiecewiseConstantDecay([2], [0.1, 0.001]))
    gsam = keras_sam.GSAM(inner, rho_max=0.1, rho_min=0.0, lr_min=0.01)  # lr_max 0.1 read
    gsam.build([keras.Variable(np.zeros(2))])
    gsam.iterations.assign(5)  # lr 0.001 < lr_min: the line gives ρ < 0
    assert float(keras.ops.convert_to_numpy(gsam.current_rho())) == 0.0


LR_BOUNDS = [
    (0.1, (None, 0.1)),
    (SCHEDULES.CosineDecay(0.1, 100, alpha=0.1), (0.01, 0.1)),
    (SCHEDULES.CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10), (0.0, 0.2)),
    (SCHEDULES.PiecewiseConstantDecay([5, 10], [0.1, 0.02, 0.05]), (0.02, 0.1)),
    (SCHEDULES.PolynomialDecay(0.1, 10, 0.001), (0.001, 0.1)),
    (SCHEDULES.ExponentialDecay(0.1, 10, 0.5), (None, None)),
    (lambda: 0.1, (None, None)),
]


def test_learning_rate_bounds_read_from_the_inner_optimizer():
    # One test for all cases: the suite's per-test teardown costs more than a case.
    for learning_rate, bounds in LR_BOUNDS:
        got = learning_rate_bounds(keras.optimizers.SGD(learning_rate))
        for value, want in zip(got, bounds):
            assert value is None if want is None else value == pytest.approx(want), (
                learning_rate, got)


# -- arguments and serialization ---------------------------------------------------
BAD_HYPERPARAMETERS = [
    (0.1, {"alpha": -0.1}, "alpha"),
    (0.1, {"alpha": float("nan")}, "alpha"),
    (0.1, {"alpha": "big"}, "alpha"),
    (0.1, {"rho": 0.0}, "rho"),
    (0.1, {"rho_min": -0.1}, "rho_min"),
    (0.1, {"rho_max": 0.0, "rho_min": 0.0, "lr_min": 0.0}, "rho_max"),
    (0.1, {"rho_max": 0.1, "rho_min": 0.2, "lr_min": 0.0}, "rho_min"),
    (0.1, {"rho_max": 0.1}, "rho_min"),
    (0.1, {"lr_min": 0.0}, "lr_min"),
    (0.1, {"lr_max": 0.1}, "lr_max"),
    (0.1, {"rho_min": 0.01}, "lr_min"),  # a float lr gives lr_max only
    (SCHEDULES.ExponentialDecay(0.1, 10, 0.5), {"rho_min": 0.01, "lr_min": 0.0}, "lr_max"),
    (0.1, {"rho_min": 0.01, "lr_min": 0.1}, "lr_max"),  # lr_max == lr_min
    (0.1, {"rho_min": 0.01, "lr_min": 0.0, "lr_max": -1.0}, "lr_max"),
    (0.1, {"rho_min": 0.01, "lr_min": 0.2, "lr_max": 0.1}, "lr_max"),
    (0.1, {"rho": SCHEDULES.ExponentialDecay(0.1, 10, 0.5), "rho_min": 0.01, "lr_min": 0.0},
     "rho"),
]


def test_bad_hyperparameters_raise_naming_the_argument():
    for learning_rate, kwargs, argument in BAD_HYPERPARAMETERS:
        assert_raises_naming(argument, keras_sam.GSAM, keras.optimizers.SGD(learning_rate),
                             **kwargs)


@pytest.mark.parametrize("kwargs", [
    {"rho": 0.1, "alpha": 0.3, "steps": 2},
    {"rho_max": 0.2, "rho_min": 0.01, "alpha": 0.6, "adaptive": True},
], ids=["constant", "follows-lr"])
def test_config_round_trip(kwargs):
    inner = keras.optimizers.SGD(SCHEDULES.CosineDecay(0.1, 100), momentum=0.9)
    gsam = keras_sam.GSAM(inner, **kwargs)
    config = gsam.get_config()
    restored = keras_sam.GSAM.from_config(config)
    without_inner = lambda c: {k: v for k, v in c.items() if k != "optimizer"}
    assert without_inner(restored.get_config()) == without_inner(config)
    assert isinstance(learning_rate_object(restored.inner_optimizer), SCHEDULES.CosineDecay)
    attributes = ("rho", "alpha", "rho_min", "rho_max", "lr_min", "lr_max", "steps", "adaptive")
    assert [getattr(restored, a) for a in attributes] == [getattr(gsam, a) for a in attributes]
    assert restored.follows_learning_rate == ("rho_max" in kwargs)
    serialized = keras.saving.serialize_keras_object(gsam)
    assert isinstance(keras.saving.deserialize_keras_object(serialized), keras_sam.GSAM)


def test_hyperparameters_survive_save_and_load(tmp_path):
    x, labels, weights = softmax_data()
    inner = keras.optimizers.SGD(SCHEDULES.PolynomialDecay(0.1, 10, 0.01), momentum=0.9)
    model, _ = fit_dense(keras_sam.GSAM(inner, rho_max=0.3, rho_min=0.05, alpha=0.6),
                         x, labels, weights, LOSS, NUM_CLASSES, 16)
    path = str(tmp_path / "gsam.keras")
    model.save(path)
    loaded = keras.models.load_model(path).optimizer
    assert isinstance(loaded, keras_sam.GSAM)
    assert (loaded.alpha, loaded.rho_min, loaded.rho_max, loaded.lr_min, loaded.lr_max) == (
        0.6, 0.05, 0.3, 0.01, pytest.approx(0.1))
    assert int(loaded.iterations.numpy()) == 3
    np.testing.assert_allclose(float(keras.ops.convert_to_numpy(loaded.current_rho())),
                               reference.gsam_rho(polynomial_lr(3), 0.05, 0.3, 0.01, 0.1),
                               atol=1e-6)
