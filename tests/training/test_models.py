"""SAMModel and SharpnessAwareMixin: the step's conventions and the Keras API."""

import os

import keras
import numpy as np
import pytest

import keras_sam
from tests import reference
from tests.conftest import weights_close
from tests.helpers import (
    LOSS,
    NUM_CLASSES,
    classification_data,
    reference_run,
    sequential_mlp,
    sgd,
    softmax_data,
)


def functional_mlp(d=6):
    inputs = keras.Input((d,))
    h = keras.layers.Dense(8, activation="relu")(inputs)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inputs, keras.layers.Dense(2)(h))


class SubclassedMLP(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.hidden = keras.layers.Dense(8, activation="relu")
        self.norm = keras.layers.BatchNormalization()
        self.out = keras.layers.Dense(2)

    def call(self, x, training=False):
        return self.out(self.norm(self.hidden(x), training=training))


class MixinMLP(keras_sam.SharpnessAwareMixin, SubclassedMLP):
    pass


def compile_sam(model, **kwargs):
    model.compile(
        optimizer=keras_sam.SAM(sgd(), rho=0.1, **kwargs), loss=LOSS, metrics=["accuracy"]
    )
    return model


@pytest.mark.parametrize("kind", ["sequential", "functional", "subclassed"])
def test_any_keras_model_trains(kind):
    x, y = classification_data()
    inner = {"sequential": sequential_mlp, "functional": functional_mlp,
             "subclassed": SubclassedMLP}[kind]()
    model = compile_sam(keras_sam.SAMModel(inner))
    history = model.fit(x, y, batch_size=16, epochs=8, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["accuracy"][-1] > 0.8
    assert all(np.isfinite(w).all() for w in model.get_weights())
    np.testing.assert_allclose(model.predict(x, verbose=0), inner.predict(x, verbose=0), atol=1e-6)
    logs = model.evaluate(x, y, verbose=0, return_dict=True)
    assert set(logs) == {"loss", "accuracy"}  # no training diagnostics in evaluation


def test_mixin_equals_wrapper():
    x, y = classification_data()
    results = []
    for model in (MixinMLP(), keras_sam.SAMModel(SubclassedMLP())):
        model(x[:1])
        model.set_weights([np.random.default_rng(i).normal(size=w.shape).astype("float32") * 0.3
                           if "moving" not in v.path else w
                           for i, (v, w) in enumerate(zip(model.weights, model.get_weights()))])
        compile_sam(model).fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        results.append(model.get_weights())
    weights_close(results[0], results[1], atol=1e-6)


def test_plain_keras_model_with_sam_raises_how_to_fix():
    x, y = classification_data()
    model = compile_sam(sequential_mlp())
    with pytest.raises(ValueError, match="SAMModel"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0)


def test_batchnorm_statistics_come_from_the_clean_pass_only():
    x, y = classification_data(n=16)
    model = compile_sam(keras_sam.SAMModel(sequential_mlp()), steps=2)
    clean = sequential_mlp()
    clean.set_weights(model.get_weights())
    clean(x, training=True)  # one clean forward pass updates the moving statistics once
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    bn = model.model.layers[1]
    np.testing.assert_allclose(bn.moving_mean.numpy(), clean.layers[1].moving_mean.numpy(), atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), clean.layers[1].moving_variance.numpy(), atol=1e-6)
    assert np.abs(bn.moving_mean.numpy()).max() > 1e-4  # the statistics did move


def test_dropout_mask_is_shared_by_the_passes_and_drawn_once_per_step():
    x, y = classification_data(n=32)
    inner = sequential_mlp(batchnorm=False, dropout=0.5)
    model = keras_sam.SAMModel(inner)
    model.compile(optimizer=keras_sam.SAM(sgd(), rho=1e-5), loss=LOSS)
    seed_state = [v for v in model.non_trainable_variables if "seed" in v.path]
    before = [np.array(v.numpy()) for v in seed_state]
    history = model.fit(x, y, batch_size=32, epochs=1, verbose=0)
    # A tiny ρ with the same mask gives g_1 ≈ g_0; a fresh mask would not.
    assert history.history["grad_cosine"][0] > 0.999
    reference_model = sequential_mlp(batchnorm=False, dropout=0.5)
    reference_model.set_weights(inner.get_weights())
    for v, value in zip([w for w in reference_model.non_trainable_variables if "seed" in w.path], before):
        v.assign(value)
    reference_model(x, training=True)  # one training forward pass
    for got, want in zip(seed_state, reference_model.non_trainable_variables):
        np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_regularization_losses_enter_every_pass():
    l2 = 0.05
    x, labels, weights = softmax_data()
    model = keras_sam.SAMModel(keras.Sequential([
        keras.Input((x.shape[1],)),
        keras.layers.Dense(NUM_CLASSES, kernel_regularizer=keras.regularizers.L2(l2)),
    ]))
    model.set_weights(weights)
    model.compile(optimizer=keras_sam.SAM(sgd(), rho=0.3), loss=LOSS)
    model.fit(x, labels, batch_size=16, epochs=2, shuffle=False, verbose=0)

    def problem(xb, yb):
        base = reference.softmax_regression(xb, yb, NUM_CLASSES)

        def loss_and_grad(params):
            loss, (gw, gb) = base(params)
            return loss + l2 * np.sum(params[0] ** 2), [gw + 2 * l2 * params[0], gb]

        return loss_and_grad

    want = reference_run(problem, x, labels, weights, 16, 2,
                         lambda f, p: reference.sam_direction(f, p, rho=0.3))
    weights_close(model.get_weights(), want, atol=1e-5)


def _state(model):
    """Every variable of the model and its optimizer but the skip counter."""
    variables = model.variables + [
        v for v in model.optimizer.variables if v is not model.optimizer.skipped_steps
    ]
    return [np.array(v.numpy()) for v in variables]


def test_nan_batch_is_skipped_and_counted():
    x, y = classification_data(n=48)
    x[16:32] = np.nan  # the second batch is poisoned in every pass
    model = compile_sam(keras_sam.SAMModel(sequential_mlp()))
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    before = _state(model)
    history = model.fit(x[16:32], y[16:32], batch_size=16, epochs=1, verbose=0)
    for got, want in zip(_state(model), before):
        np.testing.assert_array_equal(got, want)
    assert history.history["skipped_steps"] == [1]
    assert int(model.optimizer.skipped_steps.numpy()) == 1
    history = model.fit(x[32:], y[32:], batch_size=16, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [1]
    assert all(np.isfinite(w).all() for w in model.get_weights())


class LogBarrier(keras.layers.Layer):
    """Output -log(1 - w): finite at w = 0.9, NaN once a step of ρ pushes w past 1."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(), initializer=keras.initializers.Constant(0.9))

    def call(self, x):
        return x * 0.0 - keras.ops.log(1.0 - self.w)


def test_non_finite_perturbed_pass_alone_skips_the_step():
    model = keras_sam.SAMModel(keras.Sequential([keras.Input((1,)), LogBarrier()]))
    model.compile(optimizer=keras_sam.SAM(sgd(), rho=0.5), loss="mae")
    x = np.ones((4, 1), "float32")
    y = np.zeros((4, 1), "float32")
    history = model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])  # the clean pass was fine
    assert history.history["skipped_steps"] == [1]
    np.testing.assert_allclose(model.get_weights()[0], 0.9, atol=1e-7)
    assert int(model.optimizer.iterations.numpy()) == 0


@pytest.mark.parametrize("kind", ["sequential", "functional"])
def test_save_load_continue_equals_uninterrupted(kind, tmp_path):
    x, y = classification_data()
    build = {"sequential": sequential_mlp, "functional": functional_mlp}[kind]

    def fresh():
        keras.utils.set_random_seed(7)
        return compile_sam(keras_sam.SAMModel(build()), steps=2)

    uninterrupted = fresh()
    uninterrupted.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)

    interrupted = fresh()
    interrupted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    path = os.path.join(tmp_path, "model.keras")
    interrupted.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, keras_sam.SAMModel)
    assert isinstance(loaded.optimizer, keras_sam.SAM) and loaded.optimizer.steps == 2
    assert int(loaded.optimizer.iterations.numpy()) == 4
    loaded.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    weights_close(loaded.get_weights(), uninterrupted.get_weights(), atol=1e-6)


def test_learning_rate_callbacks_reach_the_inner_optimizer():
    x, y = classification_data()
    inner = sgd()
    model = keras_sam.SAMModel(sequential_mlp())
    model.compile(optimizer=keras_sam.SAM(inner), loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=2, verbose=0,
              callbacks=[keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))])
    np.testing.assert_allclose(float(inner.learning_rate), 0.05, rtol=1e-6)
    assert int(inner.iterations.numpy()) == 8


def test_adam_with_schedule_and_weight_decay_trains():
    x, y = classification_data()
    inner = keras.optimizers.AdamW(keras.optimizers.schedules.ExponentialDecay(1e-2, 10, 0.5),
                                   weight_decay=0.01, global_clipnorm=1.0)
    model = keras_sam.SAMModel(sequential_mlp())
    model.compile(optimizer=keras_sam.ASAM(inner), loss=LOSS, metrics=["accuracy"])
    history = model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert all(np.isfinite(w).all() for w in model.get_weights())


@pytest.mark.parametrize("method", ["SAM", "XSAM"])
def test_run_eagerly_equals_the_compiled_step(method):
    # XSAM has two step variants (its search), SAM one: both must run eagerly
    # (on TF the logs once carried a variable, which eager `fit` cannot return).
    x, y = classification_data()
    weights = []
    for run_eagerly in (False, True):
        keras.utils.set_random_seed(1)
        model = keras_sam.SAMModel(sequential_mlp())
        model.compile(
            optimizer=getattr(keras_sam, method)(sgd(), rho=0.1), loss=LOSS,
            run_eagerly=run_eagerly,
        )
        history = model.fit(x, y, batch_size=16, epochs=2, shuffle=False, verbose=0)
        assert history.history["skipped_steps"][-1] == 0
        weights.append([np.asarray(w) for w in model.get_weights()])
    weights_close(weights[1], weights[0], atol=1e-6)
