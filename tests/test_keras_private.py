"""One test per private Keras member keras_sam uses (`keras_sam.keras_private`).

When a Keras release moves one of them, the test of that member fails here,
by name, while `import keras_sam` keeps working.
"""

import importlib
import pathlib
import re
import warnings

import keras
import numpy as np
import pytest
from keras import ops

from keras_sam import backend, keras_private
from tests.conftest import BACKEND

PACKAGE = pathlib.Path(keras_private.__file__).parent


def dense_model(call_takes_training=True, activity_regularizer=None):
    class Plain(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2, activity_regularizer=activity_regularizer)

        def call(self, x):
            return self.dense(x)

    class WithTraining(Plain):
        def call(self, x, training=None):
            return self.dense(x)

    model = WithTraining() if call_takes_training else Plain()
    model.build((None, 3))
    return model


def _private_methods(root):
    return {
        name for path in root.rglob("*.py")
        for name in re.findall(r"def (_(?!_)[a-z]\w*)", path.read_text())
    }


def test_only_keras_private_touches_keras_internals():
    """Every other module uses public Keras names (or this module)."""
    # keras_sam's own private methods (the step's protocol with the
    # optimizer), where Keras defines none of that name.
    own_members = _private_methods(PACKAGE) - _private_methods(pathlib.Path(keras.__file__).parent / "src")
    # `keras.src...`, or `name._member` where `name` is neither `self` nor
    # one of keras_sam's own modules.
    own = "|".join(sorted({"self", *(p.stem for p in PACKAGE.rglob("*.py"))}))
    private_access = re.compile(
        rf"keras\.src|\b(?!(?:{own})\b)[A-Za-z_]\w*\.(_(?!_)[a-z]\w*)"
        # ... or by name: `getattr(model, "_member")`.
        r"|\b(?:get|has|set|del)attr\([^,]+,\s*[\"'](_(?!_)[a-z]\w*)"
    )
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "keras_private.py":
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            found = [
                m for m in private_access.finditer(code)
                if (m.group(1) or m.group(2)) not in own_members
            ]
            if found and "keras_private." not in code:
                offenders.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert offenders == []


def test_a_missing_member_names_itself_at_use():
    with pytest.raises(keras_private.KerasInternalsChanged, match=r"keras\.src\.nowhere\.thing"):
        keras_private._member(["keras.src.nowhere"], "thing")
    with pytest.raises(keras_private.KerasInternalsChanged, match=r"Dense\._no_such_member"):
        keras_private._attribute(keras.layers.Dense(1), "_no_such_member")


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's AutoGraph")
def test_lookups_in_a_traced_step_leave_importlib_alone(monkeypatch):
    """AutoGraph converts what a `tf.function` calls: through
    `importlib.import_module`, it would warn that it cannot convert
    `_gcd_import` (once per process, so the test watches the calls)."""
    import tensorflow as tf

    traced_imports = []
    import_module = importlib.import_module

    def recording_import_module(name, package=None):
        if tf.inside_function():
            traced_imports.append(name)
        return import_module(name, package)

    monkeypatch.setattr(importlib, "import_module", recording_import_module)

    @tf.function
    def step(loss):
        with keras_private.tensorflow_moments_replaced_by(None):
            return keras_private.unscale_loss_for_distribution(loss)

    assert float(step(tf.constant(0.5))) == 0.5
    assert traced_imports == []


def test_unscale_loss_for_distribution():
    # Outside tf.distribute the loss is unchanged (tests/test_distribution.py
    # runs the step under two TF replicas, where it is scaled).
    loss = ops.convert_to_tensor(np.float32(0.75))
    assert float(ops.convert_to_numpy(keras_private.unscale_loss_for_distribution(loss))) == 0.75


def test_loss_tracker():
    model = dense_model()
    model.compile(optimizer="sgd", loss="mse")
    tracker = keras_private.loss_tracker(model)
    assert isinstance(tracker, keras.metrics.Mean) and tracker.name == "loss"
    tracker.update_state(2.0, sample_weight=3)
    tracker.update_state(6.0, sample_weight=1)
    # The tracker is the compiled model's `loss` metric.
    assert any(metric is tracker for metric in model.metrics)
    assert float(ops.convert_to_numpy(tracker.result())) == 3.0


def test_compile_loss():
    model = dense_model()
    assert keras_private.compile_loss(model) is None
    model.compile(optimizer="sgd", loss="mse")
    first = keras_private.compile_loss(model)
    y, y_pred = np.zeros((2, 2), "float32"), np.full((2, 2), 3.0, "float32")
    assert float(ops.convert_to_numpy(first(y, y_pred))) == 9.0
    # A new object for each compile: the curvature cache keys on it.
    model.compile(optimizer="sgd", loss="mae")
    second = keras_private.compile_loss(model)
    assert second is not first
    assert float(ops.convert_to_numpy(second(y, y_pred))) == 3.0


def test_call_has_training_arg():
    assert keras_private.call_has_training_arg(dense_model(call_takes_training=True)) is True
    assert keras_private.call_has_training_arg(dense_model(call_takes_training=False)) is False


def test_losses_override():
    model = dense_model(activity_regularizer=keras.regularizers.L2(1.0))
    x = np.ones((2, 3), "float32")
    values = [v.value for v in model.trainable_variables]
    _, _, losses = model.stateless_call(
        values, [v.value for v in model.non_trainable_variables], x, return_losses=True
    )
    assert len(losses) == 1
    with keras_private.losses_override(model, losses):
        assert model.losses == losses
    assert model.losses == []
    # Nothing to override: model.losses as it is.
    with keras_private.losses_override(model, []):
        assert model.losses == []


def test_clear_losses():
    model = dense_model(activity_regularizer=keras.regularizers.L2(1.0))
    model(np.ones((2, 3), "float32"))
    assert len(model.losses) == 1
    keras_private.clear_losses(model)
    assert model.losses == []


def test_stateless_call_function():
    plain = dense_model()
    assert keras_private.stateless_call_function(plain) == plain.call
    quantized = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    quantized.layers[0].quantize("int8")
    layer = quantized.layers[0]
    assert keras_private.stateless_call_function(layer) == layer.quantized_call
    with keras.RematScope(mode="full"):
        rematerialized = keras.layers.Dense(2)
    rematerialized.build((None, 3))
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(keras_private.stateless_call_function(rematerialized)(x)),
        ops.convert_to_numpy(rematerialized.call(x)), rtol=1e-6,
    )


def test_learning_rate_object():
    schedule = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10)
    assert keras_private.learning_rate_object(keras.optimizers.SGD(schedule)) is schedule
    constant = keras_private.learning_rate_object(keras.optimizers.SGD(0.25))
    assert isinstance(constant, keras.Variable)
    assert float(ops.convert_to_numpy(constant)) == 0.25


def test_micro_iterations():
    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = keras.optimizers.SGD(0.1, gradient_accumulation_steps=2)
    optimizer.build([variable])
    for _ in range(3):
        optimizer.apply([ops.ones(2)], [variable])
    assert int(ops.convert_to_numpy(keras_private.micro_iterations(optimizer))) == 3
    assert int(ops.convert_to_numpy(optimizer.iterations)) == 1  # updates applied


class _OptimizerWithState(keras.optimizers.SGD):
    def build(self, var_list):
        if self.built:
            return
        self.counter = self.add_variable(shape=(), dtype="int32", name="counter")
        self.held = [keras.Variable(1.0, name="held_in_a_list")]
        super().build(var_list)


def test_no_automatic_dependency_tracking():
    """Under the decorator, what `build` assigns is not tracked: a variable
    in a list attribute does not join the optimizer's variables (without it,
    it does); those made by `add_variable` are listed once."""

    class Untracked(_OptimizerWithState):
        build = keras_private.no_automatic_dependency_tracking(_OptimizerWithState.build)

    names = {}
    for cls in (_OptimizerWithState, Untracked):
        optimizer = cls(0.1)
        optimizer.build([keras.Variable(np.zeros(2, "float32"))])
        names[cls] = [v.name for v in optimizer.variables]
    assert names[Untracked].count("counter") == 1
    assert "held_in_a_list" not in names[Untracked]
    assert "held_in_a_list" in names[_OptimizerWithState]  # the test can fail
    assert Untracked.build.__name__ == "build"


def test_print_msg(capsys):
    keras.config.enable_interactive_logging()
    keras_private.print_msg("sharpness 1.5")
    assert capsys.readouterr().out == "sharpness 1.5\n"


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras' TensorFlow backend")
def test_tensorflow_moments_replaced_by():
    x = ops.convert_to_tensor(np.arange(6, dtype="float32").reshape(3, 2))

    def constant_moments(x, axes, keepdims):
        return ops.zeros((2,)), ops.ones((2,)) * 7.0

    with keras_private.tensorflow_moments_replaced_by(constant_moments) as replaced:
        assert replaced is True
        _, variance = ops.moments(x, axes=[0])
        np.testing.assert_array_equal(ops.convert_to_numpy(variance), [7.0, 7.0])
    # Restored on exit.
    _, variance = ops.moments(x, axes=[0])
    np.testing.assert_allclose(ops.convert_to_numpy(variance), [8 / 3, 8 / 3], rtol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="Keras' TensorFlow backend")
def test_hvp_without_the_moments_hook_warns_and_runs(monkeypatch):
    """Where Keras has moved `_compute_moments`, the HVP still runs (with
    Keras' own moments) and warns; the import never depended on it."""
    x = ops.convert_to_tensor(np.array([[0.0], [1.0], [3.0]], "float32"))
    v = [ops.ones((1,))]

    def variance_of_shifted(params):  # Var(x + θ) over the batch: ∂²/∂θ² = 0
        return ops.sum(ops.moments(x + params[0], axes=[0])[1])

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, exact = backend.hvp(variance_of_shifted, [ops.zeros((1,))], v)
    assert not [w for w in caught if "inexact second derivatives" in str(w.message)]
    monkeypatch.setattr(keras_private, "TENSORFLOW_MOMENTS_MODULES", ("keras_sam.nowhere",))
    with pytest.warns(RuntimeWarning, match="inexact second derivatives"):
        _, fallback = backend.hvp(variance_of_shifted, [ops.zeros((1,))], v)
    np.testing.assert_allclose(ops.convert_to_numpy(exact[0]), [0.0], atol=1e-6)
    # Keras' own moments: tf.nn.moments of TF 2.20-2.21 stops the gradient
    # through the mean (2·v instead of 0); tf-nightly 2.22's gives the exact 0.
    value = float(ops.convert_to_numpy(fallback[0])[0])
    assert value in (pytest.approx(0.0, abs=1e-6), pytest.approx(2.0, rel=1e-6))


def test_public_optimizer_config_maps_backend_classes_to_public_ones():
    config = keras.saving.serialize_keras_object(keras.optimizers.SGD(0.1))
    private = {**config, "module": "keras.src.backend.torch.optimizers.torch_sgd"}
    public = keras_private.public_optimizer_config(private)
    assert public["module"] == "keras.optimizers"
    restored = keras.saving.deserialize_keras_object(public)
    assert isinstance(restored, keras.optimizers.SGD)
    assert keras_private.public_optimizer_config(public) == public
