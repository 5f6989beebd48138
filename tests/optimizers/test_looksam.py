"""LookSAM against a float64 NumPy reference of Liu et al.'s Algorithm 1
(tests/reference.py), through `train_on_batch`, `fit` and save/load/resume,
its cost in passes, and its arguments."""

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import (
    LOSS,
    NUM_CLASSES,
    assert_raises_naming,
    fit_dense,
    sgd,
    softmax_data,
)

TOLERANCE = 1e-5
RHO, K, ALPHA = 0.3, 3, 0.7
BATCH, STEPS = 8, 6  # look at t = 0 and 3, reuse at 1, 2, 4 and 5
FEATURES, HIDDEN = 5, 6
BN_MOMENTUM = 0.8  # the moving statistics move visibly in 6 steps


def mlp_data(batchnorm, seed=0):
    """x, labels and the initial weights in `model.get_weights()` order."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH * STEPS, FEATURES)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=BATCH * STEPS).astype("int32")
    weights = [rng.normal(scale=0.6, size=(FEATURES, HIDDEN)), rng.normal(scale=0.1, size=HIDDEN)]
    if batchnorm:
        weights += [rng.uniform(0.8, 1.2, HIDDEN), rng.normal(scale=0.1, size=HIDDEN),
                    rng.normal(scale=0.1, size=HIDDEN), rng.uniform(0.5, 1.5, HIDDEN)]
    weights += [rng.normal(scale=0.6, size=(HIDDEN, NUM_CLASSES)),
                rng.normal(scale=0.1, size=NUM_CLASSES)]
    return x, labels, [w.astype("float32") for w in weights]


def mlp_model(batchnorm, weights):
    layers = [keras.Input((FEATURES,)), keras.layers.Dense(HIDDEN, activation="tanh")]
    if batchnorm:
        layers.append(keras.layers.BatchNormalization(momentum=BN_MOMENTUM))
    model = keras_sam.SAMModel(keras.Sequential(layers + [keras.layers.Dense(NUM_CLASSES)]))
    model.set_weights(weights)
    return model


def train(model, x, labels, how, steps=STEPS):
    """`steps` steps on the first batches: one `fit` epoch, or `train_on_batch`."""
    if how == "fit":
        n = steps * BATCH
        model.fit(x[:n], labels[:n], batch_size=BATCH, shuffle=False, verbose=0)
    else:
        for xb, yb in batches(x, labels, BATCH)[:steps]:
            model.train_on_batch(xb, yb)
    return model


def compiled_run(optimizer, batchnorm, how, jit_compile="auto", **compile_kwargs):
    x, labels, weights = mlp_data(batchnorm)
    model = mlp_model(batchnorm, weights)
    model.compile(optimizer=optimizer, loss=LOSS, jit_compile=jit_compile, **compile_kwargs)
    return train(model, x, labels, how)


def reference_weights(batchnorm, method, steps=STEPS):
    """`method` (a reference.LookSAM) with Keras' SGD(0.1, momentum=0.9), in
    float64: the weights in `model.get_weights()` order after `steps` steps."""
    x, labels, weights = mlp_data(batchnorm)
    weights = [w.astype("float64") for w in weights]
    moving = weights[4:6] if batchnorm else []
    params = weights[:4] + weights[6:] if batchnorm else weights
    optimizer = reference.SGDMomentum(0.1, 0.9)
    for xb, yb in batches(x.astype("float64"), labels, BATCH)[:steps]:
        if batchnorm:  # the clean pass' batch statistics, at θ before the step
            stats = reference.mlp_batch_statistics(params, xb)
            moving = [BN_MOMENTUM * m + (1 - BN_MOMENTUM) * s for m, s in zip(moving, stats)]
        problem = reference.mlp(xb, yb, NUM_CLASSES, batchnorm)
        params = optimizer.step(params, method.direction(problem, params))
    return params[:4] + moving + params[4:] if batchnorm else params


def max_difference(xs, ys):
    return max(float(np.max(np.abs(np.asarray(a, "float64") - b))) for a, b in zip(xs, ys))


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("how", ["train_on_batch", "fit"])
@pytest.mark.parametrize("batchnorm", [False, True], ids=["mlp", "batchnorm"])
def test_matches_numpy(batchnorm, how, jit_compile):
    model = compiled_run(keras_sam.LookSAM(sgd(), rho=RHO, k=K, alpha=ALPHA), batchnorm, how,
                         jit_compile)
    got = model.get_weights()
    want = reference_weights(batchnorm, reference.LookSAM(RHO, K, ALPHA))
    weights_close(got, want, atol=TOLERANCE)
    assert int(model.optimizer.skipped_steps.numpy()) == 0
    # The reuse of g_v matters at the scale of the tolerance.
    without_reuse = reference_weights(batchnorm, reference.LookSAM(RHO, K, ALPHA, reuse=False))
    assert max_difference(got, without_reuse) > 100 * TOLERANCE


def test_k_one_is_sam():
    x, labels, weights = softmax_data()
    looksam, _ = fit_dense(keras_sam.LookSAM(sgd(), rho=0.3, k=1), x, labels, weights, LOSS,
                           NUM_CLASSES, 16, epochs=2)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3), x, labels, weights, LOSS, NUM_CLASSES, 16,
                       epochs=2)
    weights_close(looksam.get_weights(), sam.get_weights(), atol=1e-6)


def test_alpha_zero_is_sam_every_k_steps():
    x, labels, weights = softmax_data()
    looksam, _ = fit_dense(keras_sam.LookSAM(sgd(), rho=0.3, k=2, alpha=0.0), x, labels, weights,
                           LOSS, NUM_CLASSES, 8)
    sam, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.3, every=2), x, labels, weights, LOSS,
                       NUM_CLASSES, 8)
    weights_close(looksam.get_weights(), sam.get_weights(), atol=1e-6)


def test_reuse_before_the_first_look_is_the_inner_step():
    # start=1, k=2: step 0 is plain, step 1 reuses g_v = 0 (d = g), step 2 looks.
    x, labels, weights = softmax_data()
    optimizer = keras_sam.LookSAM(sgd(), rho=0.3, k=2, start=1)
    looksam, history = fit_dense(optimizer, x[:16], labels[:16], weights, LOSS, NUM_CLASSES, 8)
    plain, _ = fit_dense(sgd(), x[:16], labels[:16], weights, LOSS, NUM_CLASSES, 8)
    weights_close(looksam.get_weights(), plain.get_weights(), atol=1e-6)
    assert history.history["skipped_steps"][-1] == 0
    assert all(not np.any(v.numpy()) for v in optimizer.gv)


def test_zero_gradient_gives_a_finite_step():
    # g = 0 on a look step (g_v = g_s = 0), then on a reuse step with g_v = 0.
    x, y = np.zeros((8, 3), "float32"), np.zeros((8, 1), "float32")
    weights = [np.zeros((3, 1), "float32"), np.zeros((1,), "float32")]
    model, history = fit_dense(keras_sam.LookSAM(sgd(), k=2), x, y, weights, "mse", 1, 4)
    for w in model.get_weights():
        np.testing.assert_array_equal(w, 0.0)
    assert history.history["skipped_steps"][-1] == 0


class CountCalls(keras.layers.Layer):
    """Identity that counts its (eager) calls: one per forward pass."""

    calls = 0

    def call(self, inputs):
        CountCalls.calls += 1
        return inputs


def test_a_reuse_step_costs_one_pass():
    x, labels, weights = mlp_data(batchnorm=False)
    inner = keras.Sequential([keras.Input((FEATURES,)), CountCalls(),
                              keras.layers.Dense(HIDDEN, activation="tanh"),
                              keras.layers.Dense(NUM_CLASSES)])
    model = keras_sam.SAMModel(inner)
    model.set_weights(weights)
    model.compile(optimizer=keras_sam.LookSAM(sgd(), k=K), loss=LOSS, run_eagerly=True)
    calls = []
    for xb, yb in batches(x, labels, BATCH):
        CountCalls.calls = 0
        model.train_on_batch(xb, yb)
        calls.append(CountCalls.calls)
    # From the second step on (the first also builds the step): 2 passes on
    # look steps (t = 3), 1 on reuse steps — (1 + 1/k) per step.
    assert calls[1:] == [1, 1, 2, 1, 1]


def test_save_load_resume_equals_the_uninterrupted_run(tmp_path):
    x, labels, weights = mlp_data(batchnorm=True)

    def compiled(model):
        model.compile(optimizer=keras_sam.LookSAM(sgd(), rho=RHO, k=K, alpha=ALPHA), loss=LOSS)
        return model

    uninterrupted = train(compiled(mlp_model(True, weights)), x, labels, "fit")
    first = train(compiled(mlp_model(True, weights)), x, labels, "fit", steps=4)
    path = str(tmp_path / "looksam.keras")
    first.save(path)
    rest_x, rest_labels = x[4 * BATCH:], labels[4 * BATCH:]

    resumed = keras.models.load_model(path)
    assert isinstance(resumed.optimizer, keras_sam.LookSAM)
    assert int(resumed.optimizer.iterations.numpy()) == 4
    weights_close([v.numpy() for v in resumed.optimizer.gv],
                  [v.numpy() for v in first.optimizer.gv], atol=0)
    train(resumed, rest_x, rest_labels, "fit", steps=2)  # t = 4, 5: reuse the saved g_v
    weights_close(resumed.get_weights(), uninterrupted.get_weights(), atol=TOLERANCE)

    # The saved g_v matters: resumed without it, the run differs.
    forgetful = keras.models.load_model(path)
    for v in forgetful.optimizer.gv:
        v.assign(np.zeros(v.shape, v.dtype))
    train(forgetful, rest_x, rest_labels, "fit", steps=2)
    assert max_difference(forgetful.get_weights(), uninterrupted.get_weights()) > 100 * TOLERANCE


def test_perturbation_groups_are_refused_on_the_look_step():
    x, labels, weights = mlp_data(batchnorm=False)
    model = mlp_model(False, weights)
    model.compile(optimizer=keras_sam.LookSAM(sgd(), perturbation_groups=2), loss=LOSS)
    with pytest.raises(ValueError, match="perturbation_groups"):
        train(model, x, labels, "train_on_batch", steps=1)


def test_gradient_accumulation_is_refused():
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        keras_sam.LookSAM(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2))


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"k": 0}, "k"),
        ({"k": 2.5}, "k"),
        ({"k": True}, "k"),
        ({"k": "5"}, "k"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": float("nan")}, "alpha"),
        ({"alpha": None}, "alpha"),
        ({"rho": -1.0}, "rho"),
    ],
)
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, argument):
    assert_raises_naming(argument, keras_sam.LookSAM, sgd(), **kwargs)


def test_config_round_trip_and_defaults():
    looksam = keras_sam.LookSAM(sgd())
    assert (looksam.rho, looksam.k, looksam.alpha) == (0.05, 5, 0.7)
    custom = keras_sam.LookSAM(keras.optimizers.Adam(0.01), rho=0.1, k=3, alpha=0.5, every=2)
    restored = keras_sam.LookSAM.from_config(custom.get_config())
    assert (restored.rho, restored.k, restored.alpha, restored.every) == (0.1, 3, 0.5, 2)
    assert isinstance(restored.inner_optimizer, keras.optimizers.Adam)
    assert restored.get_config() == custom.get_config()
    serialized = keras.saving.serialize_keras_object(custom)
    assert isinstance(keras.saving.deserialize_keras_object(serialized), keras_sam.LookSAM)
