"""The wrapper's schedules: ρ schedules, late-phase start and every-k SAM."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import (
    fit_dense,
    LOSS,
    NUM_CLASSES,
    sgd,
    softmax_data,
)



def reference_schedule(x, labels, weights, batch_size, epochs, rho_at, sam_at):
    """SGD+momentum where step i is SAM with ρ = rho_at(i) if sam_at(i), else plain."""
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    data = batches(x.astype("float64"), labels, batch_size) * epochs
    for i, (xb, yb) in enumerate(data):
        problem = reference.softmax_regression(xb, yb, NUM_CLASSES)
        d = (reference.sam_direction(problem, params, rho=rho_at(i)) if sam_at(i)
             else problem(params)[1])
        params = optimizer.step(params, d)
    return params


def run(optimizer, epochs=2, batch_size=8, jit_compile="auto"):
    x, labels, weights = softmax_data()
    model, history = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size,
                               epochs=epochs, jit_compile=jit_compile)
    return model, history, (x, labels, weights)


def test_rho_schedule_matches_numpy():
    schedule = keras.optimizers.schedules.PiecewiseConstantDecay([3], [0.3, 0.1])
    model, _, (x, labels, weights) = run(keras_sam.SAM(sgd(), rho=schedule))
    want = reference_schedule(x, labels, weights, 8, 2,
                              rho_at=lambda i: 0.3 if i <= 3 else 0.1, sam_at=lambda i: True)
    weights_close(model.get_weights(), want, atol=1e-5)


@pytest.mark.parametrize("rho, expected", [
    (keras.optimizers.schedules.PolynomialDecay(0.2, 10, 0.0), {0: 0.2, 5: 0.1, 10: 0.0, 20: 0.0}),
    (lambda step: 0.01 * keras.ops.cast(step, "float32"), {0: 0.0, 3: 0.03, 7: 0.07}),
    (lambda step: 0.1 - 0.05 * keras.ops.cast(step, "float32"), {0: 0.1, 1: 0.05, 4: 0.0}),
], ids=["schedule", "callable", "negative-clipped"])
def test_rho_schedule_values_at_given_steps(rho, expected):
    sam = keras_sam.SAM(sgd(), rho=rho)
    sam.build([keras.Variable(np.zeros(2))])
    for step, want in expected.items():
        sam.iterations.assign(step)
        np.testing.assert_allclose(float(keras.ops.convert_to_numpy(sam.current_rho())), want, atol=1e-7)


def test_rho_schedule_survives_config_and_save(tmp_path):
    schedule = keras.optimizers.schedules.ExponentialDecay(0.1, 10, 0.5)
    model, _, _ = run(keras_sam.SAM(sgd(), rho=schedule), epochs=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    rho = keras.models.load_model(path).optimizer.rho
    assert isinstance(rho, keras.optimizers.schedules.ExponentialDecay)
    assert rho.get_config() == schedule.get_config()


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_every_k_runs_one_sharpness_aware_step_in_k(jit_compile):
    # 12 steps, every=3: SAM on steps 0, 3, 6, 9; the inner optimizer's step otherwise.
    model, history, (x, labels, weights) = run(keras_sam.SAM(sgd(), rho=0.3, every=3),
                                               jit_compile=jit_compile)
    want = reference_schedule(x, labels, weights, 8, 2, rho_at=lambda i: 0.3,
                              sam_at=lambda i: i % 3 == 0)
    weights_close(model.get_weights(), want, atol=1e-5)
    assert model.training_clock.sam_steps == 4
    assert int(model.optimizer.iterations.numpy()) == 12


def test_every_k_plain_steps_equal_the_inner_optimizer():
    # A ρ so small that SAM ≈ SGD would hide a bug; a large ρ and every=2 make
    # the plain steps' share visible.
    model, _, (x, labels, weights) = run(keras_sam.SAM(sgd(), rho=1.0, every=2), epochs=1)
    sam_everywhere = reference_schedule(x, labels, weights, 8, 1, rho_at=lambda i: 1.0,
                                        sam_at=lambda i: True)
    want = reference_schedule(x, labels, weights, 8, 1, rho_at=lambda i: 1.0,
                              sam_at=lambda i: i % 2 == 0)
    weights_close(model.get_weights(), want, atol=1e-5)
    assert max(np.abs(a - b).max() for a, b in zip(want, sam_everywhere)) > 1e-3


def test_late_phase_start_as_step_and_as_fraction():
    model, history, (x, labels, weights) = run(keras_sam.SAM(sgd(), rho=0.3, start=5))
    want = reference_schedule(x, labels, weights, 8, 2, rho_at=lambda i: 0.3,
                              sam_at=lambda i: i >= 5)
    weights_close(model.get_weights(), want, atol=1e-5)
    # The first epoch (steps 0–5) has one sharpness-aware step to average over.
    assert np.isfinite(history.history["sharpness"]).all()

    model, _, _ = run(keras_sam.SAM(sgd(), rho=0.3, start=0.75))  # 12 steps: from step 9 on
    assert model.training_clock.sam_steps == 3


def test_start_fraction_without_fit_length_raises():
    x, labels, weights = softmax_data()
    model = keras_sam.SAMModel(keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)]))
    model.compile(optimizer=keras_sam.SAM(sgd(), start=0.5), loss=LOSS)
    with pytest.raises(ValueError, match="start"):
        model.train_on_batch(x[:8], labels[:8])


def test_xsam_searches_on_the_first_sharpness_aware_step_of_each_epoch():
    model, _, _ = run(keras_sam.XSAM(sgd(), every=4, alpha_delta=0.5))  # 6 steps an epoch
    assert int(model.optimizer.searches.numpy()) == 2


@pytest.mark.parametrize("kwargs, argument", [
    ({"start": -1}, "start"), ({"start": 1.5}, "start"), ({"start": "late"}, "start"),
    ({"every": 0}, "every"), ({"every": 2.5}, "every"),
    ({"rho": lambda step: -1.0}, "rho"),
])
def test_bad_schedule_arguments_raise(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        keras_sam.SAM(sgd(), **kwargs)


def test_steps_per_execution_with_variants_raises_clearly():
    x, labels, _ = softmax_data()
    model = keras_sam.SAMModel(keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(3)]))
    model.compile(optimizer=keras_sam.SAM(sgd(), every=2), loss=LOSS, steps_per_execution=2)
    with pytest.raises(ValueError, match="steps_per_execution"):
        model.fit(x, labels, batch_size=8, epochs=1, verbose=0)
