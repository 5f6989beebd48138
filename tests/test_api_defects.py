"""Small API defects: the inner optimizer argument, nested wrappers, files
that move between backends, and `jit_compile=True` on torch."""

import os
import subprocess
import sys
import textwrap
import warnings

import keras
import numpy as np
import pytest

import keras_sam
from tests.conftest import BACKEND

METHODS = (keras_sam.SAM, keras_sam.ASAM, keras_sam.GSAM, keras_sam.WSAM, keras_sam.XSAM,
           keras_sam.EigenCorrectedSAM, keras_sam.LookSAM)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("method", METHODS, ids=lambda m: m.__name__)
def test_missing_or_wrong_optimizer_is_a_value_error_naming_it(method):
    with pytest.raises(ValueError, match="`optimizer`"):
        method(learning_rate=0.1)
    with pytest.raises(ValueError, match="`optimizer`"):
        method()
    with pytest.raises(ValueError, match="`optimizer`"):
        method("sgd")


def _mlp():
    return keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                             keras.layers.Dense(2)])


def test_sharpness_aware_model_is_not_wrapped_again():
    with pytest.raises(ValueError, match="already sharpness-aware"):
        keras_sam.SAMModel(keras_sam.SAMModel(_mlp()))

    class Mixed(keras_sam.SharpnessAwareMixin, keras.Model):
        pass

    with pytest.raises(ValueError, match="already sharpness-aware"):
        inputs = keras.Input((3,))
        keras_sam.SAMModel(Mixed(inputs=inputs, outputs=keras.layers.Dense(2)(inputs)))


def test_inner_optimizer_is_saved_under_its_public_class():
    config = keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9)).get_config()["optimizer"]
    assert config["module"] == "keras.optimizers" and config["class_name"] == "SGD"
    # A file written on torch before: the torch-only class is read as the public one.
    config = dict(config, module="keras.src.backend.torch.optimizers.torch_sgd",
                  registered_name="SGD")
    restored = keras_sam.SAM.from_config({**keras_sam.SAM(keras.optimizers.SGD(0.1)).get_config(),
                                          "optimizer": config})
    assert isinstance(restored.inner_optimizer, keras.optimizers.SGD)
    assert restored.inner_optimizer.__class__ is type(keras.optimizers.SGD(0.1))
    assert abs(float(restored.inner_optimizer.momentum) - 0.9) < 1e-7


def _data():
    rng = np.random.default_rng(0)
    return rng.normal(size=(16, 3)).astype("float32"), (np.arange(16) % 2).astype("int32")


SAVE = """
import numpy as np, keras, keras_sam
keras.utils.set_random_seed(0)
x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"); y = np.arange(16) % 2
m = keras_sam.SAMModel(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]))
m.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9)),
          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
m.fit(x, y, batch_size=8, verbose=0)
m.save({path!r})
"""
LOAD_AND_FIT = """
import numpy as np, keras, keras_sam
x = np.random.default_rng(0).normal(size=(16, 3)).astype("float32"); y = np.arange(16) % 2
m = keras.saving.load_model({path!r})
before = m.get_weights()
m.fit(x, y, batch_size=8, verbose=0)
assert max(np.abs(a - b).max() for a, b in zip(m.get_weights(), before)) > 1e-4
print("trained", type(m.optimizer.inner_optimizer).__module__)
"""


def _run(backend, code):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.skipif(BACKEND != "torch", reason="saves on torch, then trains in a subprocess "
                    "per other backend: in the torch session only")
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_file_saved_on_torch_trains_on_other_backends_and_back(backend, tmp_path):
    path = str(tmp_path / "model.keras")
    exec(textwrap.dedent(SAVE.format(path=path)), {})
    assert "trained" in _run(backend, LOAD_AND_FIT.format(path=path))


# -- jit_compile=True on torch: the step runs eagerly, with one warning ---------------
TORCH_METHODS = {
    "SAM": lambda: keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9)),
    "XSAM": lambda: keras_sam.XSAM(keras.optimizers.SGD(0.1), alpha_delta=0.5),
    "X-SAM": lambda: keras_sam.EigenCorrectedSAM(keras.optimizers.SGD(0.1), refresh_every=2,
                                                 power_iterations=2),
}


def _fit(method, jit_compile, tmp_path=None):
    keras.utils.set_random_seed(0)
    model = keras_sam.SAMModel(_mlp())
    model.compile(optimizer=TORCH_METHODS[method](), jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    if tmp_path is not None:  # as loaded from a file saved with jit_compile=True (JAX's default)
        model.build((None, 3))
        model.save(tmp_path / "m.keras")
        model = keras.saving.load_model(tmp_path / "m.keras")
    x, y = _data()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(2):
            model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    eager_warnings = [w for w in caught if "runs eagerly" in str(w.message)]
    return model, eager_warnings


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile")
@pytest.mark.parametrize("method", sorted(TORCH_METHODS))
@pytest.mark.parametrize("loaded", [False, True], ids=["compiled", "loaded"])
def test_torch_jit_compile_runs_eagerly_with_one_warning(method, loaded, tmp_path):
    eager, none = _fit(method, jit_compile=False)
    assert none == []
    model, caught = _fit(method, jit_compile=True, tmp_path=tmp_path if loaded else None)
    assert len(caught) == 1 and "jit_compile=True" in str(caught[0].message)
    assert model.jit_compile is True
    for got, want in zip(model.get_weights(), eager.get_weights()):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
