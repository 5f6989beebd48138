"""State no pass may drop (keras_sam/stateless.py), at a real ρ, against
by-hand references written with each backend's own autodiff
(tests/conformance/plain_keras.py):

- a stateful RNN's `states`, which Keras does not list among the model's
  variables: carried from the clean pass (on JAX, Keras' own step drops what
  `call` writes to them, and so does keras_sam);
- float8 training's `overwrite_with_gradient` variables: held fixed in every
  pass, kept out of the ascent, and assigned the clean pass' values by the
  inner optimizer — under every method, and in the Hessian toolkit;
- `keras.layers.TorchModuleWrapper` (torch): refused, naming the layer.
"""

import dataclasses

import keras
import numpy as np
import pytest

import keras_sam
from keras_sam.stateless import ModelVariables
from tests.conformance import methods
from tests.conformance.plain_keras import PlainKeras

BACKEND = keras.backend.backend()
RHO = 0.1
LEARNING_RATE = 0.1
BATCH = 8


@dataclasses.dataclass
class _Case:
    model: keras.Model
    loss_fn: object


def _mse(y, y_pred):
    y = keras.ops.convert_to_tensor(y, y_pred.dtype)
    return keras.ops.mean(keras.ops.square(keras.ops.subtract(y_pred, y)))


def _numpy(values):
    # stop_gradient: torch's eager reference leaves states that require grad.
    return [
        np.array(keras.ops.convert_to_numpy(keras.ops.stop_gradient(keras.ops.convert_to_tensor(v))),
                 dtype="float64")
        for v in values
    ]


def _copy_variables(source, target):
    for s, t in zip(source.variables, target.variables):
        t.assign(np.array(keras.ops.convert_to_numpy(s)))


def _sam_perturbed(params, grads, overwritten_mask):
    """θ + ρ g/‖g‖ over the parameters; overwritten variables unchanged."""
    norm = np.sqrt(sum(np.sum(g**2) for g, o in zip(grads, overwritten_mask) if not o))
    return [p if o else p + RHO * g / norm for p, g, o in zip(params, grads, overwritten_mask)]


def _reference_sam_step(plain, optimizer, x, y, untracked=()):
    """One SAM step by hand: clean pass, ascent over the parameters, perturbed
    pass from the same start state; the inner SGD gets the perturbed gradient
    (and, for overwritten variables, the clean pass' values)."""
    mask = [bool(v.overwrite_with_gradient) for v in plain.trainable]
    params, state = plain.current()
    start = _numpy(untracked)
    _, grads, new_state = plain.value_and_grad(params, state, x, y)
    after_clean = _numpy(untracked)
    for variable, value in zip(untracked, start):
        variable.assign(value)
    perturbed = _sam_perturbed(_numpy(params), _numpy(grads), mask)
    _, perturbed_grads, _ = plain.value_and_grad(perturbed, state, x, y)
    direction = [g0 if o else g1 for g0, g1, o in zip(grads, perturbed_grads, mask)]
    for variable, value in zip(untracked, after_clean):
        variable.assign(value)
    plain.assign(params, new_state)
    optimizer.apply(
        [keras.ops.convert_to_tensor(np.asarray(d, v.dtype)) for d, v in zip(direction, plain.trainable)],
        plain.trainable,
    )


class StatelessPlainKeras(PlainKeras):
    """PlainKeras whose passes go through `model.stateless_call` on every
    backend (TF's eager tape cannot differentiate float8 layers' custom
    gradients, which read variables)."""

    def value_and_grad(self, params, state, x, y):
        model = self.model
        params = [keras.ops.convert_to_tensor(p) for p in self._cast(params)]
        state = [keras.ops.convert_to_tensor(np.asarray(s)) for s in state]

        def loss_fn(values):
            y_pred, new_state = model.stateless_call(values, state, x, training=True)
            return self.loss_fn(y, y_pred), new_state

        if BACKEND == "jax":
            import jax

            (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        elif BACKEND == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                tape.watch(params)
                loss, new_state = loss_fn(params)
            grads = tape.gradient(loss, params)
        else:
            import torch

            leaves = [p.detach().requires_grad_(True) for p in params]
            with torch.enable_grad():
                loss, new_state = loss_fn(leaves)
                grads = torch.autograd.grad(loss, leaves)
        return float(keras.ops.convert_to_numpy(keras.ops.stop_gradient(loss))), _numpy(grads), _numpy(new_state)


def _train_beside_reference(model, plain, x, y, steps, untracked=()):
    """`steps` SAM steps of `SAMModel(model)` and of the by-hand reference
    (`plain`: a copy of the model), on the same batches."""
    sam_model = keras_sam.SAMModel(model)
    sam_model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(LEARNING_RATE), rho=RHO),
                      loss=_mse)
    optimizer = keras.optimizers.SGD(LEARNING_RATE)
    for i in range(steps):
        batch = slice(i * BATCH, (i + 1) * BATCH)
        sam_model.train_on_batch(x[batch], y[batch])
        _reference_sam_step(plain, optimizer, x[batch], y[batch], untracked)


def _assert_same_variables(got, want, atol):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        np.testing.assert_allclose(*_numpy([g, w]), atol=atol, rtol=0, err_msg=g.path)


# -- stateful RNN -----------------------------------------------------------------
def _stateful_rnn_model():
    inputs = keras.Input((4, 3), batch_size=BATCH)
    rnn = keras.layers.SimpleRNN(4, return_sequences=True, stateful=True, activation="tanh")
    return keras.Model(inputs, keras.layers.Dense(2)(rnn(inputs))), rnn


def _rnn_data():
    rng = np.random.default_rng(3)
    return rng.normal(size=(3 * BATCH, 4, 3)).astype("float32"), rng.normal(
        size=(3 * BATCH, 4, 2)
    ).astype("float32")


def test_stateful_rnn_states_advance_from_the_clean_pass():
    x, y = _rnn_data()
    model, rnn = _stateful_rnn_model()
    reference, reference_rnn = _stateful_rnn_model()
    _copy_variables(model, reference)
    _train_beside_reference(model, PlainKeras(_Case(reference, _mse)), x, y, 3,
                            reference_rnn.states)
    _assert_same_variables(model.variables, reference.variables, atol=2e-5)
    _assert_same_variables(rnn.states, reference_rnn.states, atol=2e-5)
    moved = np.abs(keras.ops.convert_to_numpy(rnn.states[0])).sum()
    # Keras' JAX step drops what `call` writes to untracked state; TF and
    # torch keep it.
    assert (moved == 0.0) if BACKEND == "jax" else (moved > 0.1)


def test_stateful_rnn_matches_plain_keras_through_fit():
    x, y = _rnn_data()
    runs = []
    for wrap in (False, True):
        keras.utils.set_random_seed(0)
        model, rnn = _stateful_rnn_model()
        optimizer = keras.optimizers.SGD(LEARNING_RATE)
        if wrap:
            model = keras_sam.SAMModel(model)
            optimizer = keras_sam.SAM(optimizer, rho=1e-7)
        model.compile(optimizer=optimizer, loss="mse")
        model.fit(x, y, batch_size=BATCH, epochs=2, shuffle=False, verbose=0)
        runs.append([keras.ops.convert_to_numpy(s) for s in rnn.states])
    for plain_state, sam_state in zip(*runs):
        np.testing.assert_allclose(sam_state, plain_state, atol=1e-5, rtol=0)


# -- float8 training ----------------------------------------------------------------
def _float8_model():
    keras.utils.set_random_seed(5)
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(8, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.quantize("float8")
    return model


def _float8_data():
    rng = np.random.default_rng(4)
    return rng.normal(size=(2 * BATCH, 6)).astype("float32"), rng.normal(
        size=(2 * BATCH, 2)
    ).astype("float32")


@pytest.mark.filterwarnings("ignore:Layer InputLayer does not have a `quantize`")
def test_float8_scales_stay_state_under_sam():
    x, y = _float8_data()
    model, reference = _float8_model(), _float8_model()
    _copy_variables(model, reference)
    overwritten = ModelVariables.of(model).overwritten
    assert overwritten, "float8 Dense layers mark their scales overwrite_with_gradient"
    _train_beside_reference(model, StatelessPlainKeras(_Case(reference, _mse)), x, y, 2)
    _assert_same_variables(model.variables, reference.variables, atol=2e-5)


@pytest.mark.filterwarnings("ignore:Layer InputLayer does not have a `quantize`")
@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_float8_scales_follow_plain_keras_under_every_method(method):
    """At learning rate 0 the parameters stay put, so the overwritten
    variables must take exactly plain Keras' values after each step."""
    x, y = _float8_data()
    runs = []
    for wrap in (False, True):
        model = _float8_model()
        optimizer = keras.optimizers.SGD(0.0)
        if wrap:
            model = keras_sam.SAMModel(model)
            optimizer = methods.METHODS[method][0](optimizer)
        model.compile(optimizer=optimizer, loss=_mse)
        for i in range(2):
            model.train_on_batch(x[i * BATCH:(i + 1) * BATCH], y[i * BATCH:(i + 1) * BATCH])
        runs.append(model)
    plain_model, sam_model = runs
    _assert_same_variables(sam_model.model.variables, plain_model.variables, atol=0)


@pytest.mark.filterwarnings("ignore:Layer InputLayer does not have a `quantize`")
def test_float8_curvature_spans_the_parameters_only():
    x, y = _float8_data()
    model = _float8_model()
    model.compile(optimizer="sgd", loss=_mse)
    variables = ModelVariables.of(model)
    curvature = keras_sam.hessian.Curvature(model, x, y)
    assert len(curvature.params) == len(variables.parameters)
    # The loss holds the overwritten variables at their values: its gradient
    # is plain Keras' over the parameters.
    training = keras_sam.hessian.Curvature(model, x, y, training=True)
    loss, grads = training.loss_and_gradient()
    plain = StatelessPlainKeras(_Case(model, _mse))
    params, state = plain.current()
    want_loss, want_grads, _ = plain.value_and_grad(params, state, x, y)
    want_grads = [g for g, v in zip(want_grads, variables.trainable) if not v.overwrite_with_gradient]
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    for got, expected in zip(_numpy(grads), want_grads):
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    rng = np.random.default_rng(0)
    vectors = [rng.normal(size=tuple(v.shape)).astype("float32") for v in variables.parameters]
    hv = _numpy(curvature.hvp(vectors))
    assert [h.shape for h in hv] == [tuple(v.shape) for v in variables.parameters]
    assert all(np.isfinite(h).all() for h in hv)


# -- torch modules ------------------------------------------------------------------
@pytest.mark.skipif(BACKEND != "torch", reason="TorchModuleWrapper is torch's")
def test_torch_module_wrapper_is_refused_by_name():
    import torch

    inputs = keras.Input((3,))
    wrapped = keras.layers.TorchModuleWrapper(
        torch.nn.Linear(3, 4), name="linear_module", output_shape=(None, 4)
    )
    model = keras_sam.SAMModel(keras.Model(inputs, keras.layers.Dense(2)(wrapped(inputs))))
    model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1)), loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 2), "float32")
    with pytest.raises(ValueError, match="TorchModuleWrapper.*'linear_module' \\(Linear\\)"):
        model.fit(x, y, verbose=0)
