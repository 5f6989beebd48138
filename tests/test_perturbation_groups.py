"""m-sharpness on one device: `perturbation_groups=G` against NumPy.

Each of the G contiguous groups of a batch ascends from its own gradient and
gets its own direction; the inner optimizer receives their mean.
"""

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import LOSS, NUM_CLASSES, fit_dense, sgd, softmax_data


def grouped(direction_fn, groups):
    """The reference direction of a batch: the mean over its groups'."""

    def batch_direction(xb, yb, params):
        n = len(xb) // groups
        parts = [
            direction_fn(reference.softmax_regression(xb[i * n:(i + 1) * n], yb[i * n:(i + 1) * n],
                                                      NUM_CLASSES), params)
            for i in range(groups)
        ]
        return [sum(ds) / groups for ds in zip(*parts)]

    return batch_direction


def reference_run(x, labels, weights, batch_size, epochs, batch_direction):
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    for xb, yb in batches(x.astype("float64"), labels, batch_size) * epochs:
        params = optimizer.step(params, batch_direction(xb, yb, params))
    return params


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("groups,steps,adaptive", [(2, 1, False), (4, 2, False), (2, 1, True)])
def test_grouped_sam_matches_numpy(groups, steps, adaptive, jit_compile):
    x, labels, weights = softmax_data()
    optimizer = keras_sam.SAM(sgd(), rho=0.3, steps=steps, adaptive=adaptive, eta=0.0,
                              adaptive_variables="all", perturbation_groups=groups)
    model, _ = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size=16,
                         epochs=2, jit_compile=jit_compile)
    want = reference_run(x, labels, weights, 16, 2, grouped(
        lambda f, p: reference.sam_direction(f, p, rho=0.3, steps=steps, adaptive=adaptive,
                                             eta=0.0), groups))
    weights_close(model.get_weights(), want, atol=1e-5)


def test_grouped_xsam_with_fixed_alpha_matches_numpy():
    x, labels, weights = softmax_data()
    optimizer = keras_sam.XSAM(sgd(), rho=0.3, alpha=0.6, steps=2, perturbation_groups=2)
    model, _ = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size=16,
                         epochs=2)
    want = reference_run(x, labels, weights, 16, 2, grouped(
        lambda f, p: reference.xsam_direction(f, p, rho=0.3, alpha=0.6, steps=2)[0], 2))
    weights_close(model.get_weights(), want, atol=1e-5)


def test_grouped_sam_with_plain_steps_matches_numpy():
    # every=2: the plain steps (the inner optimizer's own, on the whole batch)
    # run between grouped ones.
    x, labels, weights = softmax_data()
    optimizer = keras_sam.SAM(sgd(), rho=0.3, every=2, perturbation_groups=2)
    model, _ = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size=16,
                         epochs=2)
    sam = grouped(lambda f, p: reference.sam_direction(f, p, rho=0.3), 2)
    step = iter(range(10**6))

    def batch_direction(xb, yb, params):
        if next(step) % 2:
            return reference.softmax_regression(xb, yb, NUM_CLASSES)(params)[1]
        return sam(xb, yb, params)

    want = reference_run(x, labels, weights, 16, 2, batch_direction)
    weights_close(model.get_weights(), want, atol=1e-5)


def test_groups_differ_from_the_global_perturbation():
    # Guards the reference above against testing nothing: on these batches
    # the per-group ascent gives a different trajectory than the global one.
    x, labels, weights = softmax_data()
    global_ = reference_run(x, labels, weights, 16, 2, grouped(
        lambda f, p: reference.sam_direction(f, p, rho=0.3), 1))
    per_group = reference_run(x, labels, weights, 16, 2, grouped(
        lambda f, p: reference.sam_direction(f, p, rho=0.3), 2))
    assert max(np.max(np.abs(a - b)) for a, b in zip(global_, per_group)) > 1e-3


def test_one_group_is_the_default_step_exactly():
    x, labels, weights = softmax_data()
    default, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3), x, labels, weights, LOSS,
                           NUM_CLASSES, batch_size=16)
    one, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3, perturbation_groups=1), x, labels,
                       weights, LOSS, NUM_CLASSES, batch_size=16)
    replica, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3, perturbation_groups="replica"), x,
                           labels, weights, LOSS, NUM_CLASSES, batch_size=16)
    for a, b, c in zip(default.get_weights(), one.get_weights(), replica.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_grouped_step_batchnorm_statistics_loss_and_metrics():
    """Moving statistics: the groups' clean-pass updates averaged (as
    replicas' are); the logged loss and accuracy: the whole batch's."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 3)).astype("float32") * [1.0, 2.0, 0.5] + [0.5, -1.0, 2.0]
    labels = rng.integers(0, 2, size=16).astype("int32")
    inputs = keras.Input((3,))
    outputs = keras.layers.Dense(2)(keras.layers.BatchNormalization(momentum=0.9)(inputs))
    model = keras_sam.SAMModel(keras.Model(inputs, outputs))
    model.compile(
        optimizer=keras_sam.SAM(keras.optimizers.SGD(0.0), rho=0.1, perturbation_groups=2),
        loss=LOSS, metrics=["accuracy"],
    )
    logs = model.train_on_batch(x, labels, return_dict=True)
    bn = model.model.layers[1]
    halves = [x[:8].astype("float64"), x[8:].astype("float64")]
    want_mean = 0.1 * np.mean([h.mean(0) for h in halves], axis=0)
    want_var = 0.9 + 0.1 * np.mean([h.var(0) for h in halves], axis=0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_mean), want_mean,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(bn.moving_variance), want_var,
                               rtol=1e-5, atol=1e-6)
    # lr = 0: the weights are the initial ones, so the clean pass can be
    # recomputed group by group (batch statistics of each half).
    predictions = []
    for h in (x[:8], x[8:]):
        z = (h - h.mean(0)) / np.sqrt(h.var(0) + bn.epsilon)
        kernel, bias = (keras.ops.convert_to_numpy(w) for w in model.model.layers[-1].weights)
        predictions.append(z @ kernel + bias)
    logits = np.concatenate(predictions)
    shifted = logits - logits.max(1, keepdims=True)
    nll = -(shifted[np.arange(16), labels] - np.log(np.exp(shifted).sum(1)))
    np.testing.assert_allclose(logs["loss"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(logs["accuracy"], np.mean(logits.argmax(1) == labels), rtol=1e-6)


def grouped_unequal(direction_fn, groups):
    """Groups of ⌊iB/G⌋ … ⌊(i+1)B/G⌋, directions weighted by size / B."""

    def batch_direction(xb, yb, params):
        bounds = [(i * len(xb)) // groups for i in range(groups + 1)]
        total = None
        for a, b in zip(bounds[:-1], bounds[1:]):
            d = direction_fn(reference.softmax_regression(xb[a:b], yb[a:b], NUM_CLASSES), params)
            d = [(b - a) / len(xb) * di for di in d]
            total = d if total is None else [t + di for t, di in zip(total, d)]
        return total

    return batch_direction


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_last_partial_batch_gets_groups_weighted_by_size(jit_compile):
    # 20 examples in batches of 16: the first batch splits into groups of 5,
    # 5 and 6 examples, the last (4 examples) into 1, 1 and 2.
    x, labels, weights = softmax_data(n=20)
    optimizer = keras_sam.SAM(sgd(), rho=0.3, perturbation_groups=3)
    model, history = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size=16,
                               epochs=2, jit_compile=jit_compile)
    want = reference_run(x, labels, weights, 16, 2, grouped_unequal(
        lambda f, p: reference.sam_direction(f, p, rho=0.3), 3))
    weights_close(model.get_weights(), want, atol=1e-5)
    assert int(keras.ops.convert_to_numpy(model.optimizer.skipped_steps)) == 0


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_batch_smaller_than_the_groups_raises_or_skips(jit_compile):
    x, labels, weights = softmax_data(n=4)
    optimizer = keras_sam.SAM(sgd(), perturbation_groups=5)
    try:
        model, _ = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, batch_size=4,
                             jit_compile=jit_compile)
    except ValueError as error:
        assert "cannot make 5 perturbation groups" in str(error)
        return
    # Only where the step is traced with an unknown batch size (TF): an empty
    # group's loss is NaN, and the step is skipped and counted, not applied.
    assert keras.backend.backend() == "tensorflow"
    assert int(keras.ops.convert_to_numpy(model.optimizer.skipped_steps)) == 1
    weights_close(model.get_weights(), weights, atol=0)


def test_xsam_search_with_groups_raises_clearly():
    x, labels, weights = softmax_data()
    with pytest.raises(ValueError, match="perturbation_groups=1"):
        fit_dense(keras_sam.XSAM(sgd(), perturbation_groups=2), x, labels, weights, LOSS,
                  NUM_CLASSES, batch_size=16)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "replicas", None])
def test_bad_perturbation_groups_raise(value):
    with pytest.raises(ValueError, match="perturbation_groups"):
        keras_sam.SAM(sgd(), perturbation_groups=value)


def test_perturbation_groups_in_config():
    optimizer = keras_sam.WSAM(sgd(), perturbation_groups="replica")
    again = keras_sam.WSAM.from_config(optimizer.get_config())
    assert again.perturbation_groups == "replica"
    assert keras_sam.SAM.from_config(
        keras_sam.SAM(sgd(), perturbation_groups=4).get_config()
    ).perturbation_groups == 4
