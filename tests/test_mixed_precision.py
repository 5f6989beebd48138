"""Mixed precision: float16 with dynamic loss scaling, and bfloat16."""

import keras
import numpy as np
import pytest

import keras_sam
from tests.helpers import LOSS, classification_data, sequential_mlp


@pytest.fixture
def policy(request):
    keras.config.set_dtype_policy(request.param)
    yield request.param
    keras.config.set_dtype_policy("float32")


def compile_sam(policy_name, method):
    model = keras_sam.SAMModel(sequential_mlp())
    model.compile(optimizer=method(keras.optimizers.SGD(0.05, momentum=0.9)), loss=LOSS,
                  metrics=["accuracy"])
    return model


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"], indirect=True)
@pytest.mark.parametrize("method", [keras_sam.SAM, keras_sam.XSAM], ids=["SAM", "XSAM"])
def test_trains_with_finite_float32_weights(policy, method):
    x, y = classification_data()
    model = compile_sam(policy, method)
    if policy == "mixed_float16":  # compile wraps it for loss scaling
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert isinstance(model.optimizer.inner_optimizer, method)
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0)
    assert history.history["loss"][-1] < history.history["loss"][0]
    assert history.history["skipped_steps"][-1] == 0
    for variable in model.trainable_variables:
        assert variable.dtype == "float32"
        assert np.isfinite(variable.numpy()).all()
    assert np.isfinite(history.history["sharpness"]).all()


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_overflow_step_is_skipped_counted_and_halves_the_scale(policy):
    x, y = classification_data(n=32)
    model = compile_sam(policy, keras_sam.SAM)
    model.fit(x[:16], y[:16], batch_size=16, epochs=1, verbose=0)
    scale = float(model.optimizer.dynamic_scale.numpy())
    before = [v.numpy().copy() for v in model.trainable_variables + model.non_trainable_variables]
    overflow = x[16:] * 1e5  # finite inputs whose float16 activations overflow
    history = model.fit(overflow, y[16:], batch_size=16, epochs=1, verbose=0)
    assert history.history["skipped_steps"] == [1]
    for got, want in zip(model.trainable_variables + model.non_trainable_variables, before):
        np.testing.assert_array_equal(got.numpy(), want)
    assert float(model.optimizer.dynamic_scale.numpy()) == scale / 2
    assert np.isfinite(model.predict(x, verbose=0)).all()


@pytest.mark.parametrize("policy", ["mixed_float16"], indirect=True)
def test_loss_scale_grows_after_finite_steps(policy):
    x, y = classification_data(n=64)
    model = keras_sam.SAMModel(sequential_mlp())
    model.compile(optimizer=keras.optimizers.LossScaleOptimizer(
        keras_sam.SAM(keras.optimizers.SGD(0.01)), initial_scale=64.0, dynamic_growth_steps=2),
        loss=LOSS)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)  # 4 finite steps: two doublings
    assert float(model.optimizer.dynamic_scale.numpy()) == 256.0
    assert int(model.optimizer.iterations.numpy()) == 4


def test_loss_scale_optimizer_inside_is_refused_with_the_fix():
    inner = keras.optimizers.LossScaleOptimizer(keras.optimizers.SGD(0.1))
    with pytest.raises(ValueError, match="LossScaleOptimizer\\(SAM"):
        keras_sam.SAM(inner)
