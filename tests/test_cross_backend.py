"""The same training gives the same weights on TensorFlow, JAX and PyTorch.

`cross_backend_run.py` trains a small MLP (Dense → BatchNormalization → Dense)
from NumPy-generated initial weights on NumPy-generated float32 data with
plain SGD, SAM, SAM with 3 ascent steps, and ASAM in both of its conventions,
plus a plain `keras.Sequential` fitted with the same SGD. It runs once per
backend, each in its own subprocess with KERAS_BACKEND set. Then:

- every method's final weights (BatchNorm moving statistics included) and
  per-epoch losses agree across the three backends to 1e-5;
- and agree to 1e-5 with a float64 NumPy implementation of the same network
  and methods (`cross_backend_run.reference_weights`), which catches a
  mistake shared by all backends;
- `SAMModel` compiled with the plain SGD gives exactly the weights of the
  plain Keras model trained by `model.fit`, on every backend;
- every sharpness-aware method ends away from plain SGD (the perturbation is
  not a no-op) and skipped no step.

The suite is run once per KERAS_BACKEND value, and this test covers all three
backends by itself, so it runs in one session only (conftest.PROCESS_HOST).
"""

import json

import numpy as np
import pytest

from tests import cross_backend_run as run
from tests.conftest import in_process_host_session
from tests.helpers import BACKENDS, TESTS, run_in_subprocess

TOLERANCE = 1e-5
pytestmark = in_process_host_session("runs all three backends in subprocesses")


def _run_backend(backend, out_dir):
    failure = run_in_subprocess(backend, TESTS / "cross_backend_run.py", out_dir)
    if failure is not None:
        return failure
    weights = dict(np.load(out_dir / f"{backend}.npz"))
    info = json.loads((out_dir / f"{backend}.json").read_text())
    return weights, info


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """backend -> (weights, info), or the failure message of its subprocess."""
    out_dir = tmp_path_factory.mktemp("cross_backend")
    # One after the other: on 2 cores, three concurrent processes are slower.
    return {backend: _run_backend(backend, out_dir) for backend in BACKENDS}


def _get(results, backend):
    result = results[backend]
    if isinstance(result, str):
        pytest.fail(f"KERAS_BACKEND={backend} subprocess {result}", pytrace=False)
    return result


def _final_weights(weights, method):
    n = len([k for k in weights if k.startswith(method + "/")])
    assert n == 8, f"{method}: expected 8 weight arrays, got {n}"
    return [weights[f"{method}/{i}"] for i in range(n)]


def _max_abs_diff(xs, ys):
    assert [x.shape for x in xs] == [y.shape for y in ys]
    return max(float(np.max(np.abs(x - y))) for x, y in zip(xs, ys))


@pytest.mark.parametrize("method", list(run.METHODS))
def test_same_weights_on_every_backend(results, method):
    reference_backend = BACKENDS[0]
    ref_weights, ref_info = _get(results, reference_backend)
    ref = _final_weights(ref_weights, method)
    for w in ref:
        assert w.dtype == np.float32
        assert np.all(np.isfinite(w))
    for backend in BACKENDS[1:]:
        weights, info = _get(results, backend)
        diff = _max_abs_diff(ref, _final_weights(weights, method))
        assert diff <= TOLERANCE, (
            f"{method}: final weights differ between {reference_backend} and "
            f"{backend} by {diff:.3g} (max abs)"
        )
        loss_diff = np.max(
            np.abs(np.subtract(ref_info[method]["loss"], info[method]["loss"]))
        )
        assert loss_diff <= TOLERANCE, (
            f"{method}: epoch losses differ between {reference_backend} and "
            f"{backend}: {ref_info[method]['loss']} vs {info[method]['loss']}"
        )


@pytest.mark.parametrize("method", run.REFERENCE_METHODS)
def test_matches_numpy_reference(results, method):
    reference = run.reference_weights(method)
    for backend in BACKENDS:
        weights, _ = _get(results, backend)
        diff = _max_abs_diff(reference, _final_weights(weights, method))
        assert diff <= TOLERANCE, (
            f"{method} on {backend}: final weights differ from the NumPy "
            f"reference by {diff:.3g} (max abs)"
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_sam_model_with_plain_optimizer_is_keras_fit(results, backend):
    weights, info = _get(results, backend)
    ours = _final_weights(weights, "sgd")
    keras_fit = _final_weights(weights, run.REFERENCE)
    # The same Keras train_step on the same values: bit-for-bit equal.
    for i, (a, b) in enumerate(zip(ours, keras_fit)):
        assert np.array_equal(a, b), (
            f"{backend}: SAMModel with plain SGD differs from keras.Sequential "
            f"fit in weight {i} ({info['sgd']['names'][i]}) by "
            f"{np.max(np.abs(a - b)):.3g}"
        )
    assert info["sgd"]["loss"] == info[run.REFERENCE]["loss"]
    # A plain optimizer adds no sharpness-aware logs.
    assert info["sgd"]["skipped_steps"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_sharpness_aware_methods_take_effect(results, backend):
    weights, info = _get(results, backend)
    sgd = _final_weights(weights, "sgd")
    finals = {m: _final_weights(weights, m) for m in run.METHODS}
    for method in run.METHODS:
        if method == "sgd":
            continue
        assert info[method]["skipped_steps"] == [0] * run.EPOCHS, method
        assert _max_abs_diff(finals[method], sgd) > 1e-3, (
            f"{backend}: {method} ended where plain SGD did"
        )
    # The variants differ from one another, too.
    assert _max_abs_diff(finals["sam_steps3"], finals["sam"]) > 1e-4
    assert _max_abs_diff(finals["asam_all"], finals["asam_weights"]) > 1e-4
    assert _max_abs_diff(finals["asam_weights"], finals["sam"]) > 1e-3
    assert _max_abs_diff(finals["xsam_search"], finals["sam"]) > 1e-4
