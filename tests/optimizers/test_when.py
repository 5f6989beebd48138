"""The `when` policies: which steps are sharpness-aware. Host-side choices
(random switching, late phase by learning rate) against float64 NumPy
references of the training they choose, AE-SAM's in-step gate against a
reference of Jiang et al.'s rule, in every compile mode, the gate's plain and
climbing branches for every method, and the arguments."""

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.optimizers import when as policies
from tests import reference
from tests.conftest import BACKEND, batches, jit_modes, weights_close
from tests.helpers import LOSS, NUM_CLASSES, assert_raises_naming, fit_dense, sgd, softmax_data

RHO = 0.3
BATCH, EPOCHS = 8, 2  # 48 examples: 12 steps


def problem(xb, yb):
    return reference.softmax_regression(xb, yb, NUM_CLASSES)


def train_reference(choose, learning_rate=lambda t: 0.1, gate=None):
    """Float64 SGD(momentum 0.9) with SAM on the steps `choose(t)` (or, with
    `gate`, where `gate(t, ‖g‖²)` says) and the inner step on the others."""
    x, labels, weights = softmax_data()
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    chosen = []
    for t, (xb, yb) in enumerate(batches(x.astype("float64"), labels, BATCH) * EPOCHS):
        loss_and_grad = problem(xb, yb)
        _, g = loss_and_grad(params)
        sam = choose(t) if gate is None else gate(t, reference.norm(g) ** 2)
        chosen.append(sam)
        d = reference.sam_direction(loss_and_grad, params, RHO) if sam else g
        optimizer.learning_rate = learning_rate(t)
        params = optimizer.step(params, d)
    return params, chosen


def fit_sam(inner, when, jit_compile="auto", **kwargs):
    x, labels, weights = softmax_data()
    optimizer = keras_sam.SAM(inner, rho=RHO, when=when, **kwargs)
    model, _ = fit_dense(optimizer, x, labels, weights, LOSS, NUM_CLASSES, BATCH,
                         epochs=EPOCHS, jit_compile=jit_compile)
    return model


# -- host-side policies ------------------------------------------------------------
def test_random_switching_matches_numpy():
    policy = keras_sam.when.Random(p=0.5, seed=1)
    model = fit_sam(sgd(), policy)
    mask = policy.mask(np.arange(12), None)
    want, chosen = train_reference(lambda t: mask[t])
    assert 3 <= sum(chosen) <= 9  # both kinds of step ran
    weights_close(model.get_weights(), want, atol=1e-5)
    assert model.training_clock.sam_steps == sum(chosen)


def test_random_draws_are_fixed_by_seed_and_step():
    policy = keras_sam.when.Random(p=0.3, seed=7)
    steps = np.arange(20_000)
    mask = policy.mask(steps, None)
    # Binomial(20000, 0.3): mean 6000, sd 65.
    assert abs(mask.sum() - 6000) < 400
    np.testing.assert_array_equal(policy.mask(steps[123:456], None), mask[123:456])
    assert policy.count_between(100, 9000, None) == mask[100:9000].sum()
    other = keras_sam.when.Random(p=0.3, seed=8).mask(steps, None)
    assert 0.3 < np.mean(other != mask) < 0.5  # independent draws: 2·0.3·0.7 = 0.42
    # A schedule of p: p(t) = t / 20000 rises from 0 to 1.
    rising = keras_sam.when.Random(p=lambda t: t / 20_000, seed=7).mask(steps, None)
    assert rising[:2000].mean() < 0.2 and rising[-2000:].mean() > 0.8


def test_late_learning_rate_matches_numpy():
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=12)
    model = fit_sam(keras.optimizers.SGD(schedule, momentum=0.9),
                    keras_sam.when.LateLearningRate(fraction=0.4))

    def learning_rate(t):
        return 0.1 * 0.5 * (1 + np.cos(np.pi * min(t, 12) / 12))

    # lr_t ≤ 0.4 · 0.1 from t = 7 on (lr_6 = 0.05).
    want, chosen = train_reference(lambda t: learning_rate(t) <= 0.4 * 0.1, learning_rate)
    assert chosen == [False] * 7 + [True] * 5
    weights_close(model.get_weights(), want, atol=1e-5)


def test_late_learning_rate_peak_is_the_largest_so_far():
    # Warm-up to 0.1 at step 100, then cosine down: sharpness-aware once the
    # rate is ≤ half the peak reached so far, never during the warm-up.
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=900, warmup_target=0.1, warmup_steps=100)
    policy = keras_sam.when.LateLearningRate(0.5)
    optimizer = keras_sam.SAM(keras.optimizers.SGD(schedule), when=policy)

    class Clock:
        pass

    clock = Clock()
    clock.optimizer = optimizer
    steps = np.arange(1000)
    lr = np.where(steps < 100, 0.1 * steps / 100,
                  0.05 * (1 + np.cos(np.pi * np.minimum(steps - 100, 900) / 900)))
    peak = np.maximum.accumulate(lr)
    want = (lr <= 0.5 * peak) & (peak > 0)
    got = optimizer.step_policy.mask(steps, clock)
    off_boundary = steps != 550  # lr_550 = 0.05, half the peak, up to rounding
    np.testing.assert_array_equal(got[off_boundary], want[off_boundary])
    assert not got[:100].any() and got[-1] and 0.4 < got.mean() < 0.6


def test_policies_combine_with_start_and_every():
    optimizer = keras_sam.SAM(sgd(), every=2, when=keras_sam.when.Random(0.5, seed=3))
    steps = np.arange(100)
    want = (steps % 2 == 0) & keras_sam.when.Random(0.5, seed=3).mask(steps, None)
    np.testing.assert_array_equal(optimizer.step_policy.mask(steps, None), want)
    restored = keras_sam.SAM.from_config(optimizer.get_config())
    np.testing.assert_array_equal(restored.step_policy.mask(steps, None), want)
    assert restored.every == 2 and isinstance(restored.when, keras_sam.when.Random)


# -- AE-SAM's gate -----------------------------------------------------------------
def gate_reference(c, decay=0.9):
    """Jiang et al.'s rule in float64; returns gate(t, n) and its moments."""
    moments = {"mean": None, "variance": 0.0, "margins": []}

    def gate(t, n):
        if moments["mean"] is None:
            moments["mean"] = n
        else:
            moments["mean"] = decay * moments["mean"] + (1 - decay) * n
            moments["variance"] = (decay * moments["variance"]
                                   + (1 - decay) * (n - moments["mean"]) ** 2)
        threshold = moments["mean"] + c(t) * np.sqrt(moments["variance"])
        moments["margins"].append(abs(n - threshold) / n if t else 1.0)
        return n >= threshold

    return gate, moments


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("schedule", [False, True])
def test_gradient_norm_gate_matches_numpy(jit_compile, schedule):
    if schedule:  # the paper's c_t, linear from 1 to −1
        c = keras.optimizers.schedules.PolynomialDecay(1.0, 12, end_learning_rate=-1.0)
        c_at = lambda t: 1.0 - 2.0 * t / 12  # noqa: E731
    else:
        c, c_at = 0.0, (lambda t: 0.0)
    model = fit_sam(sgd(), keras_sam.when.GradientNormGate(c=c), jit_compile=jit_compile)
    gate, moments = gate_reference(c_at)
    want, chosen = train_reference(None, gate=gate)
    assert 2 <= sum(chosen) <= 10 and min(moments["margins"]) > 1e-3
    weights_close(model.get_weights(), want, atol=1e-5)
    policy = model.optimizer.when  # the optimizer's own copy, with its state
    got = [float(keras.ops.convert_to_numpy(v)) for v in policy.moments]
    np.testing.assert_allclose(got, [moments["mean"], moments["variance"]], rtol=1e-4)
    assert int(keras.ops.convert_to_numpy(policy.climbs)) == sum(chosen)


GATED_METHODS = {
    "SAM": lambda inner, **kw: keras_sam.SAM(inner, rho=RHO, **kw),
    "ASAM": lambda inner, **kw: keras_sam.ASAM(inner, rho=1.0, **kw),
    "SAM k=2": lambda inner, **kw: keras_sam.SAM(inner, rho=RHO, steps=2, **kw),
    "GSAM": lambda inner, **kw: keras_sam.GSAM(inner, rho=RHO, alpha=0.3, **kw),
    "WSAM": lambda inner, **kw: keras_sam.WSAM(inner, rho=RHO, **kw),
    "WSAM coupled": lambda inner, **kw: keras_sam.WSAM(inner, rho=RHO, decouple=False, **kw),
    "XSAM": lambda inner, **kw: keras_sam.XSAM(inner, rho=RHO, alpha=0.6, **kw),
}


@pytest.mark.parametrize("method", sorted(GATED_METHODS))
def test_gate_branches_are_the_method_and_the_inner_step(method):
    # c = −1e9: every step climbs, as the ungated method. c = 1e9: only the
    # first (which sets μ = n, σ = 0) does; the others are the inner
    # optimizer's own steps — the method with `every` beyond the run.
    make = GATED_METHODS[method]
    x, labels, weights = softmax_data()

    def run(**kwargs):
        model, _ = fit_dense(make(sgd(), **kwargs), x, labels, weights, LOSS, NUM_CLASSES,
                             BATCH, epochs=EPOCHS)
        return model.get_weights()

    gate = keras_sam.when.GradientNormGate
    weights_close(run(when=gate(c=-1e9)), run(), atol=1e-6)
    weights_close(run(when=gate(c=1e9)), run(every=1000), atol=1e-6)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras' torch trainer needs steps_per_execution=1")
def test_gate_runs_several_steps_per_execution():
    # Decided inside the step: no host choice, so `steps_per_execution` works.
    x, labels, weights = softmax_data()
    results = []
    for steps_per_execution in (1, 3):
        model = keras_sam.SAMModel(
            keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(NUM_CLASSES)]))
        model.set_weights(weights)
        model.compile(optimizer=keras_sam.SAM(sgd(), rho=RHO, when=keras_sam.when.GradientNormGate()),
                      loss=LOSS, steps_per_execution=steps_per_execution)
        model.fit(x, labels, batch_size=BATCH, epochs=EPOCHS, shuffle=False, verbose=0)
        results.append(model.get_weights())
    weights_close(results[1], results[0], atol=1e-6)


def test_gate_refuses_what_would_change_a_plain_step():
    gate = keras_sam.when.GradientNormGate()
    for kwargs in (dict(ascent_fraction=0.5), dict(perturbation_groups=2),
                   dict(eigen_correction=keras_sam.EigenCorrection())):
        with pytest.raises(ValueError, match="GradientNormGate"):
            keras_sam.SAM(sgd(), when=gate, **kwargs)
    with pytest.raises(ValueError, match="LookSAM"):
        keras_sam.LookSAM(sgd(), when=gate)
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        keras_sam.SAM(keras.optimizers.SGD(0.1, gradient_accumulation_steps=2), when=gate)


def test_arguments_are_checked():
    assert_raises_naming("p", keras_sam.when.Random, p=1.5)
    assert_raises_naming("seed", keras_sam.when.Random, seed=-1)
    assert_raises_naming("fraction", keras_sam.when.LateLearningRate, fraction=0.0)
    assert_raises_naming("decay", keras_sam.when.GradientNormGate, decay=1.0)
    assert_raises_naming("c", keras_sam.when.GradientNormGate, c=float("nan"))
    assert_raises_naming("every", keras_sam.when.Periodic, every=0)
    assert_raises_naming("start", keras_sam.when.Periodic, start=1.5)
    assert_raises_naming("when", keras_sam.SAM, sgd(), when="random")
    assert_raises_naming("policies", keras_sam.when.All,
                         [keras_sam.when.GradientNormGate(), keras_sam.when.GradientNormGate()])
    with pytest.raises(ValueError, match="LearningRateSchedule"):
        keras_sam.SAM(sgd(), when=keras_sam.when.LateLearningRate())


@pytest.mark.parametrize("policy", [
    policies.Periodic(every=3, start=0.25),
    policies.Random(p=keras.optimizers.schedules.ExponentialDecay(0.9, 100, 0.5), seed=4),
    policies.GradientNormGate(c=-0.5, decay=0.8),
    policies.All([policies.Random(0.7), policies.GradientNormGate()]),
])
def test_policies_survive_their_config(policy):
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(policy))
    assert type(restored) is type(policy) and repr(restored) == repr(policy)
