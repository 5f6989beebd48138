"""The step clock: when the periodic options act, read from the optimizer's
own counters, so that a run split into several `fit` calls, or resumed from a
saved model, trains exactly as one `fit`, with gradient accumulation too."""

import os

import keras
import numpy as np
import pytest

import keras_sam
from tests.conftest import weights_close
from tests.helpers import LOSS, NUM_CLASSES, softmax_data

BATCH = 8  # 48 examples: 6 batches an epoch
EPOCHS = 3


def inner(accumulation=None):
    return keras.optimizers.SGD(0.1, momentum=0.9, gradient_accumulation_steps=accumulation)


# Every periodic option. The periods are chosen so that a clock restarted at
# the split (after 12 batches, 6 updates under accumulation) would act on
# other steps.
PERIODIC = {
    "search_every": lambda opt: keras_sam.XSAM(opt, rho=0.3, alpha_delta=0.5, search_every=5),
    "search_each_epoch": lambda opt: keras_sam.XSAM(opt, rho=0.3, alpha_delta=0.5),
    "refresh": lambda opt: keras_sam.SAM(opt, rho=0.3, eigen_correction=keras_sam.EigenCorrection(
        alpha=0.5, every=2, power_iterations=1, warmup_iterations=3)),
    "every": lambda opt: keras_sam.SAM(opt, rho=0.3, every=4),
    "start_step": lambda opt: keras_sam.SAM(opt, rho=0.3, start=7),
    "start_fraction": lambda opt: keras_sam.SAM(opt, rho=0.3, start=0.4),
    "random": lambda opt: keras_sam.SAM(opt, rho=0.3, when=keras_sam.when.Random(0.5, seed=2)),
    "late_learning_rate": lambda opt: keras_sam.SAM(
        keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.1, 9), momentum=0.9,
                             gradient_accumulation_steps=opt.gradient_accumulation_steps),
        rho=0.3, when=keras_sam.when.LateLearningRate(0.6)),
    # In-step: its running moments are optimizer state.
    "gate": lambda opt: keras_sam.SAM(opt, rho=0.3, when=keras_sam.when.GradientNormGate()),
}


def model_for(optimizer):
    x, labels, weights = softmax_data()
    model = keras_sam.SAMModel(
        keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(NUM_CLASSES)])
    )
    model.set_weights(weights)
    model.compile(optimizer=optimizer, loss=LOSS)
    return model


def fit(model, batch_size=BATCH, **kwargs):
    x, labels, _ = softmax_data()
    return model.fit(x, labels, batch_size=batch_size, shuffle=False, verbose=0, **kwargs)


def counters(model):
    """The optimizer's periodic counters, besides its weights."""
    optimizer = model.optimizer
    found = {"iterations": optimizer.iterations}
    if hasattr(optimizer, "searches"):
        found["searches"] = optimizer.searches
    if optimizer.eigen_correction is not None:
        found["refreshes"] = optimizer.eigen_correction.refreshes
    if hasattr(optimizer.step_policy, "climbs"):
        found["gate_climbs"] = optimizer.step_policy.climbs
    return {name: int(keras.ops.convert_to_numpy(v)) for name, v in found.items()}


class StopAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            self.model.stop_training = True


RESUMED = (
    # fit, save, load, fit (initial_epoch=2): every option, under accumulation
    [(option, "saved", 2) for option in sorted(PERIODIC) if option != "gate"]
    # two fit calls on the same model
    + [(option, "split", 2) for option in ("every", "start_step", "start_fraction", "random")]
    + [("search_every", "saved", None), ("gate", "saved", None)]
)


@pytest.mark.parametrize("option, how, accumulation", RESUMED)
def test_resumed_training_equals_one_fit(option, how, accumulation, tmp_path):
    make = PERIODIC[option]
    uninterrupted = model_for(make(inner(accumulation)))
    fit(uninterrupted, epochs=EPOCHS)

    resumed = model_for(make(inner(accumulation)))
    fit(resumed, epochs=EPOCHS, callbacks=[StopAfter(2)])  # interrupted
    if how == "saved":
        path = os.path.join(tmp_path, "model.keras")
        resumed.save(path)
        resumed = keras.models.load_model(path)
    fit(resumed, epochs=EPOCHS, initial_epoch=2)

    assert counters(resumed) == counters(uninterrupted)
    weights_close(resumed.get_weights(), uninterrupted.get_weights(), atol=1e-6)
    # The option acted: its counter moved, or some steps were plain.
    if option.startswith("search"):
        assert counters(uninterrupted)["searches"] >= 2
    elif option == "refresh":
        assert counters(uninterrupted)["refreshes"] >= 2
    elif option == "gate":
        assert 2 <= counters(uninterrupted)["gate_climbs"] < counters(uninterrupted)["iterations"]
    else:
        assert 2 <= resumed.training_clock.sam_steps < counters(uninterrupted)["iterations"]


# `perturbation_groups=2` on a batch twice as large: the same examples per step.
GROUPED = {
    "every": dict(every=2),
    "start_step": dict(start=3),
    "start_fraction": dict(start=0.4),
    "random": dict(when=keras_sam.when.Random(0.5, seed=2)),
    # The refresh's examples lie in the first micro-batch (first group).
    "refresh": dict(eigen_correction=keras_sam.EigenCorrection(
        alpha=0.5, every=2, power_iterations=2, refresh_batch_size=4)),
}


@pytest.mark.parametrize("option", sorted(GROUPED))
def test_an_accumulated_step_is_one_update(option):
    # Under accumulation over k micro-batches a step is one update of the inner
    # optimizer: plain or sharpness-aware for all k, periodic work on the
    # first; training equals perturbation_groups=k on a k× batch.
    def make(accumulation, groups):
        return keras_sam.SAM(inner(accumulation), rho=0.3, perturbation_groups=groups,
                             **GROUPED[option])

    accumulated = model_for(make(2, 1))
    fit(accumulated, epochs=EPOCHS)
    grouped = model_for(make(None, 2))
    fit(grouped, batch_size=2 * BATCH, epochs=EPOCHS)
    assert counters(accumulated) == counters(grouped)
    weights_close(accumulated.get_weights(), grouped.get_weights(), atol=1e-6)


def test_a_skipped_step_is_not_a_step():
    # A non-finite step changes nothing, the optimizer's `iterations` included:
    # the next batch runs as the same step, in one `fit` as after a resume.
    x, labels, _ = softmax_data()
    x = x.copy()
    x[BATCH:2 * BATCH] = np.nan  # the second step of the first epoch

    def run(split):
        model = model_for(keras_sam.SAM(inner(), rho=0.3, every=2))
        for epochs in ((1, 2) if split else (2,)):
            model.fit(x, labels, batch_size=BATCH, shuffle=False, verbose=0,
                      initial_epoch=epochs - 1 if split else 0, epochs=epochs)
        return model

    uninterrupted, resumed = run(split=False), run(split=True)
    assert int(keras.ops.convert_to_numpy(uninterrupted.optimizer.skipped_steps)) == 2
    weights_close(resumed.get_weights(), uninterrupted.get_weights(), atol=1e-6)
