"""The inner optimizer's own options act on the final direction d."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches, weights_close
from tests.helpers import (
    fit_dense,
    LOSS,
    NUM_CLASSES,
    softmax_data,
)



def clip_global(xs, c):
    n = reference.norm(xs)
    return [x * min(1.0, c / n) for x in xs] if n > c else xs


@pytest.mark.parametrize("clip", ["global_clipnorm", "clipvalue"])
def test_clipping_applies_to_the_final_direction(clip):
    x, labels, weights = softmax_data()
    limit = 0.05
    inner = keras.optimizers.SGD(0.1, momentum=0.9, **{clip: limit})
    model, _ = fit_dense(keras_sam.SAM(inner, rho=0.3), x, labels, weights, LOSS, NUM_CLASSES, 16)
    params = [w.astype("float64") for w in weights]
    sgd = reference.SGDMomentum(0.1, 0.9)
    clipped_any = False
    for xb, yb in batches(x.astype("float64"), labels, 16):
        d = reference.sam_direction(reference.softmax_regression(xb, yb, NUM_CLASSES), params, rho=0.3)
        c = clip_global(d, limit) if clip == "global_clipnorm" else [np.clip(g, -limit, limit) for g in d]
        clipped_any |= max(np.abs(a - b).max() for a, b in zip(c, d)) > 1e-6
        params = sgd.step(params, c)
    assert clipped_any  # the test exercises clipping
    weights_close(model.get_weights(), params, atol=1e-5)


def test_gradient_accumulation_averages_micro_batch_sam_directions():
    # Documented mode: each micro-batch runs its own ascent; the inner optimizer
    # accumulates the k directions and steps with their mean every k steps.
    x, labels, weights = softmax_data()
    inner = keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=3)
    model, _ = fit_dense(keras_sam.SAM(inner, rho=0.3), x, labels, weights, LOSS, NUM_CLASSES, 8)
    params = [w.astype("float64") for w in weights]
    sgd = reference.SGDMomentum(0.1, 0.9)
    pending = []
    for xb, yb in batches(x.astype("float64"), labels, 8):
        pending.append(reference.sam_direction(
            reference.softmax_regression(xb, yb, NUM_CLASSES), params, rho=0.3))
        if len(pending) == 3:
            params = sgd.step(params, [sum(ds) / 3 for ds in zip(*pending)])
            pending = []
    weights_close(model.get_weights(), params, atol=1e-5)


@pytest.mark.parametrize("method", ["SAM", "XSAM"])
def test_accumulating_k_micro_batches_equals_k_perturbation_groups(method):
    # k micro-batches accumulated = one batch k× as large cut into k
    # perturbation groups: both ascend per micro-batch / group and average.
    x, labels, weights = softmax_data()

    def make(groups, accumulation):
        inner = keras.optimizers.SGD(0.1, momentum=0.9,
                                     gradient_accumulation_steps=accumulation)
        if method == "XSAM":
            return keras_sam.XSAM(inner, rho=0.3, alpha=0.4, steps=2, perturbation_groups=groups)
        return keras_sam.SAM(inner, rho=0.3, perturbation_groups=groups)

    accumulated, _ = fit_dense(make(1, 3), x, labels, weights, LOSS, NUM_CLASSES, 8)
    grouped, _ = fit_dense(make(3, None), x, labels, weights, LOSS, NUM_CLASSES, 24)
    weights_close(accumulated.get_weights(), grouped.get_weights(), atol=1e-6)
    moved = max(np.abs(a - b).max() for a, b in zip(grouped.get_weights(), weights))
    assert moved > 1e-2
