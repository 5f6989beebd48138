"""WSAM against the NumPy reference: coupled, decoupled (also under a learning-rate
schedule), gradient clipping; γ = 0.5 coupled is SAM, γ = 0 is the inner optimizer."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.keras_private import learning_rate_object
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import (
    assert_raises_naming,
    fit_dense,
    LOSS,
    NUM_CLASSES,
    regression_data,
    sgd,
    softmax_data,
    softmax_problem,
)

SCHEDULES = keras.optimizers.schedules



def reference_wsam(problem, x, y, weights, batch_size, epochs, lr_at=lambda i: 0.1, **kwargs):
    """WSAM with SGD(lr_at(i), momentum=0.9) at step i, float64."""
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(lr_at(0), 0.9)
    for i, (xb, yb) in enumerate(batches(x.astype("float64"), y, batch_size) * epochs):
        optimizer.learning_rate = lr_at(i)
        params = reference.wsam_step(problem(xb, yb), params, optimizer, **kwargs)
    return params


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("decouple", [False, True], ids=["coupled", "decoupled"])
def test_wsam_softmax_regression_matches_numpy(decouple, jit_compile):
    x, labels, weights = softmax_data()
    model, _ = fit_dense(
        keras_sam.WSAM(sgd(), rho=0.3, gamma=0.8, decouple=decouple), x, labels, weights, LOSS,
        NUM_CLASSES, 16, epochs=2, jit_compile=jit_compile,
    )
    want = reference_wsam(softmax_problem, x, labels, weights, 16, 2,
                          rho=0.3, gamma=0.8, decouple=decouple)
    weights_close(model.get_weights(), want, atol=1e-5)


@pytest.mark.parametrize("decouple", [False, True], ids=["coupled", "decoupled"])
def test_wsam_multistep_asam_quadratic_matches_numpy(decouple):
    # Default γ = 0.9 (w = 9), two ascent steps of ASAM's perturbation.
    x, targets, weights = regression_data()
    model, _ = fit_dense(
        keras_sam.WSAM(sgd(), rho=0.3, steps=2, adaptive=True, decouple=decouple),
        x, targets, weights, "mse", 1, batch_size=10, epochs=2,
    )
    want = reference_wsam(reference.linear_regression, x, targets, weights, 10, 2,
                          rho=0.3, gamma=0.9, decouple=decouple, steps=2, adaptive=True,
                          scaled=[True, False])
    weights_close(model.get_weights(), want, atol=1e-5)


def test_coupled_with_unit_weight_is_sam():
    x, labels, weights = softmax_data()
    wsam, _ = fit_dense(keras_sam.WSAM(sgd(), rho=0.3, gamma=0.5, decouple=False),
                        x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3), x, labels, weights, LOSS, NUM_CLASSES, 16,
                       epochs=2)
    weights_close(wsam.get_weights(), sam.get_weights(), atol=1e-6)


def test_decoupled_with_zero_weight_is_the_inner_optimizer():
    x, labels, weights = softmax_data()
    wsam, _ = fit_dense(keras_sam.WSAM(sgd(), rho=0.3, gamma=0.0), x, labels, weights, LOSS,
                        NUM_CLASSES, 16, epochs=2)
    plain, _ = fit_dense(sgd(), x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2)
    weights_close(wsam.get_weights(), plain.get_weights(), atol=1e-6)


def test_reference_modes_differ():
    # Guards the tests against a decoupled step that is the coupled one (or SAM).
    x, labels, weights = softmax_data()
    run = lambda **kw: reference_wsam(softmax_problem, x, labels, weights, 16, 2, rho=0.3,
                                      gamma=0.8, **kw)
    coupled, decoupled = run(decouple=False), run(decouple=True)
    assert max(np.abs(a - b).max() for a, b in zip(coupled, decoupled)) > 1e-3


def piecewise_lr(step):  # PiecewiseConstantDecay([3, 7], [0.1, 0.05, 0.02])
    return 0.1 if step <= 3 else 0.05 if step <= 7 else 0.02


@pytest.mark.parametrize("decouple, jit_compile", [
    (False, "auto"), *[(True, jit) for jit in jit_modes()],
])
def test_wsam_with_learning_rate_schedule_matches_numpy(decouple, jit_compile):
    # The decoupled term's step size is the schedule's lr at the current step.
    x, labels, weights = softmax_data()
    inner = keras.optimizers.SGD(SCHEDULES.PiecewiseConstantDecay([3, 7], [0.1, 0.05, 0.02]),
                                 momentum=0.9)
    model, _ = fit_dense(keras_sam.WSAM(inner, rho=0.3, gamma=0.8, decouple=decouple),
                         x, labels, weights, LOSS, NUM_CLASSES, 8, epochs=2,
                         jit_compile=jit_compile)  # 12 steps
    want = reference_wsam(softmax_problem, x, labels, weights, 8, 2, lr_at=piecewise_lr,
                          rho=0.3, gamma=0.8, decouple=decouple)
    weights_close(model.get_weights(), want, atol=1e-5)
    constant_lr = reference_wsam(softmax_problem, x, labels, weights, 8, 2,
                                 rho=0.3, gamma=0.8, decouple=decouple)
    assert max(np.abs(a - b).max() for a, b in zip(want, constant_lr)) > 1e-3


@pytest.mark.parametrize("decouple", [False, True], ids=["coupled", "decoupled"])
def test_clip_norm_matches_numpy(decouple):
    x, labels, weights = softmax_data()
    clip_norm = 0.5
    # The clipping is active: the clean and perturbed gradients' norms exceed it at first.
    problem = softmax_problem(x[:16].astype("float64"), labels[:16])
    params = [w.astype("float64") for w in weights]
    assert reference.norm(problem(params)[1]) > clip_norm
    assert reference.norm(reference.sam_direction(problem, params, rho=0.3)) > clip_norm
    model, _ = fit_dense(
        keras_sam.WSAM(sgd(), rho=0.3, gamma=0.8, decouple=decouple, clip_norm=clip_norm),
        x, labels, weights, LOSS, NUM_CLASSES, 16, epochs=2,
    )
    want = reference_wsam(softmax_problem, x, labels, weights, 16, 2,
                          rho=0.3, gamma=0.8, decouple=decouple, clip_norm=clip_norm)
    weights_close(model.get_weights(), want, atol=1e-5)
    unclipped = reference_wsam(softmax_problem, x, labels, weights, 16, 2,
                               rho=0.3, gamma=0.8, decouple=decouple)
    assert max(np.abs(a - b).max() for a, b in zip(want, unclipped)) > 1e-3


BAD_HYPERPARAMETERS = [
    ({"gamma": 1.0}, "gamma"),
    ({"gamma": 1.5}, "gamma"),
    ({"gamma": -0.1}, "gamma"),
    ({"gamma": float("nan")}, "gamma"),
    ({"gamma": "high"}, "gamma"),
    ({"decouple": "yes"}, "decouple"),
    ({"clip_norm": 0.0}, "clip_norm"),
    ({"clip_norm": -1.0}, "clip_norm"),
    ({"clip_norm": float("inf")}, "clip_norm"),
    ({"rho": -0.1}, "rho"),
    ({"learning_rate": 0.1}, "learning_rate"),
]


def test_bad_hyperparameters_raise_naming_the_argument():
    for kwargs, argument in BAD_HYPERPARAMETERS:
        assert_raises_naming(argument, keras_sam.WSAM, sgd(), **kwargs)
    accumulating = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    assert_raises_naming("gradient_accumulation_steps", keras_sam.WSAM, accumulating)
    keras_sam.WSAM(accumulating, decouple=False)  # coupled is fine


def test_config_round_trip():
    inner = keras.optimizers.SGD(SCHEDULES.CosineDecay(0.1, 100), momentum=0.9)
    for kwargs in ({"rho": 0.1, "gamma": 0.7, "decouple": False, "steps": 2},
                   {"gamma": 0.95, "clip_norm": 1.0, "adaptive": True}):
        wsam = keras_sam.WSAM(inner, **kwargs)
        restored = keras_sam.WSAM.from_config(wsam.get_config())
        attributes = ("rho", "gamma", "weight", "decouple", "clip_norm", "steps", "adaptive")
        assert [getattr(restored, a) for a in attributes] == [getattr(wsam, a) for a in attributes]
        assert isinstance(learning_rate_object(restored.inner_optimizer), SCHEDULES.CosineDecay)
        serialized = keras.saving.serialize_keras_object(wsam)
        assert isinstance(keras.saving.deserialize_keras_object(serialized), keras_sam.WSAM)


def test_hyperparameters_survive_save_and_load(tmp_path):
    x, labels, weights = softmax_data()
    model, _ = fit_dense(keras_sam.WSAM(sgd(), rho=0.2, gamma=0.75, decouple=False, clip_norm=2.0),
                         x, labels, weights, LOSS, NUM_CLASSES, 16)
    path = str(tmp_path / "wsam.keras")
    model.save(path)
    loaded = keras.models.load_model(path).optimizer
    assert isinstance(loaded, keras_sam.WSAM)
    assert (loaded.rho, loaded.gamma, loaded.weight, loaded.decouple, loaded.clip_norm) == (
        0.2, 0.75, 3.0, False, 2.0)
    assert int(loaded.iterations.numpy()) == 3


def test_decoupled_wsam_refuses_the_eigen_correction():
    with pytest.raises(ValueError, match="eigen_correction"):
        keras_sam.WSAM(keras.optimizers.SGD(0.1), eigen_correction=keras_sam.EigenCorrection())
    keras_sam.WSAM(keras.optimizers.SGD(0.1), decouple=False,
                   eigen_correction=keras_sam.EigenCorrection())
