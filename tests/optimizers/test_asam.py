"""ASAM, both conventions, against the NumPy reference."""

import keras
import numpy as np
import pytest

import keras_sam
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

CONVENTIONS = {
    # SamsungLabs' official ASAM: T = |θ| + η on the kernel, T = 1 on the bias.
    "samsung": (dict(eta=0.01, adaptive_variables="weights"), [True, False]),
    # davda54/sam and pytorch-optimizer: η = 0, every variable scaled.
    "davda54": (dict(eta=0.0, adaptive_variables="all"), [True, True]),
}


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_asam_softmax_regression_matches_numpy(convention, jit_compile):
    kwargs, scaled = CONVENTIONS[convention]
    x, labels, weights = softmax_data()
    model, _ = fit_dense(
        keras_sam.ASAM(sgd(), rho=0.5, **kwargs), x, labels, weights,
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        NUM_CLASSES, batch_size=16, epochs=2, jit_compile=jit_compile,
    )
    want = reference_run(
        lambda xb, yb: reference.softmax_regression(xb, yb, NUM_CLASSES),
        x, labels, weights, 16, 2,
        lambda f, p: reference.sam_direction(
            f, p, rho=0.5, adaptive=True, eta=kwargs["eta"], scaled=scaled
        ),
    )
    weights_close(model.get_weights(), want, atol=1e-5)


@pytest.mark.parametrize("convention", sorted(CONVENTIONS))
def test_multistep_asam_quadratic_matches_numpy(convention):
    kwargs, scaled = CONVENTIONS[convention]
    x, targets, weights = regression_data()
    weights[1] = np.full((1,), 0.5, "float32")  # a non-zero bias makes the conventions differ
    model, _ = fit_dense(
        keras_sam.SAM(sgd(), rho=0.4, steps=2, adaptive=True, **kwargs),
        x, targets, weights, "mse", 1, batch_size=10, epochs=2,
    )
    want = reference_run(
        reference.linear_regression, x, targets, weights, 10, 2,
        lambda f, p: reference.sam_direction(
            f, p, rho=0.4, steps=2, adaptive=True, eta=kwargs["eta"], scaled=scaled
        ),
    )
    weights_close(model.get_weights(), want, atol=1e-5)


def test_conventions_give_different_updates():
    x, labels, weights = softmax_data()
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    results = [
        fit_dense(keras_sam.ASAM(sgd(), **CONVENTIONS[c][0]), x, labels, weights, loss,
                  NUM_CLASSES, 16)[0].get_weights()
        for c in sorted(CONVENTIONS)
    ]
    assert max(np.abs(a - b).max() for a, b in zip(*results)) > 1e-4


def test_asam_is_sam_adaptive_by_name():
    asam = keras_sam.ASAM(sgd())
    assert (asam.adaptive, asam.rho, asam.eta, asam.adaptive_variables) == (True, 0.5, 0.01, "weights")
    restored = keras_sam.ASAM.from_config(asam.get_config())
    assert isinstance(restored, keras_sam.ASAM) and restored.adaptive
    with pytest.raises(ValueError, match="adaptive"):
        keras_sam.ASAM(sgd(), adaptive=False)


def test_batchnorm_gamma_is_a_weight_and_beta_a_bias():
    model = keras.Sequential(
        [keras.Input((3,)), keras.layers.Dense(2), keras.layers.BatchNormalization()]
    )
    asam = keras_sam.ASAM(sgd())
    asam.build(model.trainable_variables)
    names = [v.name for v in model.trainable_variables]
    assert dict(zip(names, asam._scaled_by_weight)) == {
        "kernel": True, "bias": False, "gamma": True, "beta": False,
    }
