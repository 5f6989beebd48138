"""Sub-batch ascent (`ascent_fraction`, keras_sam/optimizers/ascent.py) against
a float64 NumPy reference of its rule (Brock et al. 2021; Bahri et al. 2022):
the clean pass and the ascent on the first ⌈f·B⌉ examples, the last pass (at
θ + e) on the whole batch; the clean pass' BatchNorm statistics, loss and
metrics are the ones kept and logged."""

import math

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import LOSS, NUM_CLASSES, assert_raises_naming, sgd

TOLERANCE = 1e-5
RHO = 0.3
BATCH, STEPS = 10, 4
FEATURES, HIDDEN = 5, 6
BN_MOMENTUM = 0.8


def _data(seed=2):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH * STEPS, FEATURES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=BATCH * STEPS).astype("int32")
    weights = [rng.normal(scale=0.6, size=(FEATURES, HIDDEN)), rng.normal(scale=0.1, size=HIDDEN),
               rng.uniform(0.8, 1.2, HIDDEN), rng.normal(scale=0.1, size=HIDDEN),
               rng.normal(scale=0.1, size=HIDDEN), rng.uniform(0.5, 1.5, HIDDEN),
               rng.normal(scale=0.6, size=(HIDDEN, NUM_CLASSES)),
               rng.normal(scale=0.1, size=NUM_CLASSES)]
    return x, labels, [w.astype("float32") for w in weights]


def _model(weights):
    model = keras_sam.SAMModel(keras.Sequential([
        keras.Input((FEATURES,)),
        keras.layers.Dense(HIDDEN, activation="tanh"),
        keras.layers.BatchNormalization(momentum=BN_MOMENTUM),
        keras.layers.Dense(NUM_CLASSES),
    ]))
    model.set_weights(weights)
    return model


def _sub_batch_ascent(sub, whole, params, rho, steps):
    """(g_0 on the sub-batch at θ, g_k on the whole batch at θ_k)."""
    _, g0 = sub(params)
    g, point = g0, params
    for i in range(steps):
        scale = (rho / steps) / (reference.norm(g) + reference.EPS)
        point = [p + scale * gi for p, gi in zip(point, g)]
        _, g = (whole if i == steps - 1 else sub)(point)
    return g0, g


def _gsam(g0, g1, alpha):
    n0, n1 = reference.norm(g0), reference.norm(g1)
    cos = reference.dot(g0, g1) / (n0 * n1 + reference.EPS)
    return [b - alpha * (a - cos * n0 * b / (n1 + reference.EPS)) for a, b in zip(g0, g1)]


def _reference(fraction, steps=1, gsam_alpha=None):
    """The weights (model order) after STEPS steps, and the clean losses."""
    x, labels, weights = _data()
    weights = [w.astype("float64") for w in weights]
    params, moving = weights[:4] + weights[6:], weights[4:6]
    optimizer, losses = reference.SGDMomentum(0.1, 0.9), []
    count = math.ceil(fraction * BATCH)
    for xb, yb in batches(x.astype("float64"), labels, BATCH):
        sub = reference.mlp(xb[:count], yb[:count], NUM_CLASSES, batchnorm=True)
        whole = reference.mlp(xb, yb, NUM_CLASSES, batchnorm=True)
        stats = reference.mlp_batch_statistics(params, xb[:count])
        moving = [BN_MOMENTUM * m + (1 - BN_MOMENTUM) * s for m, s in zip(moving, stats)]
        losses.append(sub(params)[0])
        g0, g1 = _sub_batch_ascent(sub, whole, params, RHO, steps)
        params = optimizer.step(params, g1 if gsam_alpha is None else _gsam(g0, g1, gsam_alpha))
    return params[:4] + moving + params[4:], losses


def _run(optimizer, jit_compile="auto"):
    x, labels, weights = _data()
    model = _model(weights)
    model.compile(optimizer=optimizer, loss=LOSS, jit_compile=jit_compile)
    losses = [
        float(model.train_on_batch(xb, yb, return_dict=True)["loss"])
        for xb, yb in batches(x, labels, BATCH)
    ]
    return model, losses


def _max_difference(xs, ys):
    return max(float(np.max(np.abs(np.asarray(a, "float64") - b))) for a, b in zip(xs, ys))


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("fraction", [0.5, 0.25])
def test_sam_on_a_sub_batch_matches_numpy(fraction, jit_compile):
    model, losses = _run(keras_sam.SAM(sgd(), rho=RHO, ascent_fraction=fraction), jit_compile)
    want, want_losses = _reference(fraction)
    weights_close(model.get_weights(), want, atol=TOLERANCE)
    # The logged loss is the clean pass' on the first examples.
    np.testing.assert_allclose(losses, want_losses, atol=1e-5)
    # The whole-batch ascent differs at the scale of the tolerance.
    assert _max_difference(model.get_weights(), _reference(1.0)[0]) > 100 * TOLERANCE


def test_multi_step_and_gsam_take_the_fraction():
    model, _ = _run(keras_sam.SAM(sgd(), rho=RHO, steps=2, ascent_fraction=0.5))
    weights_close(model.get_weights(), _reference(0.5, steps=2)[0], atol=TOLERANCE)
    model, _ = _run(keras_sam.GSAM(sgd(), rho=RHO, alpha=0.4, ascent_fraction=0.5))
    weights_close(model.get_weights(), _reference(0.5, gsam_alpha=0.4)[0], atol=TOLERANCE)


def test_fraction_one_is_the_whole_batch():
    model, _ = _run(keras_sam.SAM(sgd(), rho=RHO, ascent_fraction=1.0))
    weights_close(model.get_weights(), _reference(1.0)[0], atol=TOLERANCE)


def test_plain_steps_of_every_run_on_the_whole_batch():
    """`every=2`: steps 1 and 3 are the inner optimizer's own, on all B."""
    model, _ = _run(keras_sam.SAM(sgd(), rho=RHO, every=2, ascent_fraction=0.5))
    x, labels, weights = _data()
    weights = [w.astype("float64") for w in weights]
    params, moving = weights[:4] + weights[6:], weights[4:6]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    for step, (xb, yb) in enumerate(batches(x.astype("float64"), labels, BATCH)):
        whole = reference.mlp(xb, yb, NUM_CLASSES, batchnorm=True)
        seen = xb[:BATCH // 2] if step % 2 == 0 else xb
        stats = reference.mlp_batch_statistics(params, seen)
        moving = [BN_MOMENTUM * m + (1 - BN_MOMENTUM) * s for m, s in zip(moving, stats)]
        if step % 2:
            direction = whole(params)[1]
        else:
            sub = reference.mlp(xb[:BATCH // 2], yb[:BATCH // 2], NUM_CLASSES, batchnorm=True)
            direction = _sub_batch_ascent(sub, whole, params, RHO, 1)[1]
        params = optimizer.step(params, direction)
    weights_close(model.get_weights(), params[:4] + moving + params[4:], atol=TOLERANCE)


def test_fraction_survives_the_config_and_bad_values_are_refused():
    optimizer = keras_sam.XSAM(sgd(), ascent_fraction=0.25)
    assert keras_sam.XSAM.from_config(optimizer.get_config()).ascent_fraction == 0.25
    for bad in (0.0, 1.5, -0.1, "half", True):
        assert_raises_naming("ascent_fraction", keras_sam.SAM, sgd(), ascent_fraction=bad)


def test_groups_and_a_fraction_are_refused():
    x, labels, weights = _data()
    model = _model(weights)
    model.compile(optimizer=keras_sam.SAM(sgd(), ascent_fraction=0.5, perturbation_groups=2),
                  loss=LOSS)
    with pytest.raises(ValueError, match="ascent_fraction=0.5 and perturbation_groups=2"):
        model.train_on_batch(x[:BATCH], labels[:BATCH])
