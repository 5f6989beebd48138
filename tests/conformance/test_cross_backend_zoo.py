"""Every zoo model trains to the same weights on TensorFlow, JAX and torch.

cross_backend_zoo_run.py trains each zoo model (Dropout rate 0) with one
method — model i with method i + 5 (mod 10), so every method is used once — from the same
NumPy weights on the same data, once per backend in its own subprocess
(TensorFlow graph, JAX jit, torch eager). Every weight after the first and
the last step agrees across the backends to 1e-5. It runs all three backends
by itself, so in one session only (conftest.PROCESS_HOST).
"""

import numpy as np
import pytest

from tests.conformance import cross_backend_zoo_run as run
from tests.conftest import in_process_host_session
from tests.helpers import BACKENDS, TESTS, run_in_subprocess

TOLERANCE = 1e-5

pytestmark = in_process_host_session("runs all three backends in subprocesses")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("cross_backend_zoo")
    script = TESTS / "conformance" / "cross_backend_zoo_run.py"
    results = {}
    for backend in BACKENDS:
        failure = run_in_subprocess(backend, script, out_dir)
        results[backend] = failure or dict(np.load(out_dir / f"{backend}.npz"))
    return results


@pytest.mark.parametrize("model,method", run.pairs())
def test_same_weights_on_every_backend(results, model, method):
    for backend, result in results.items():
        if isinstance(result, str):
            pytest.fail(f"KERAS_BACKEND={backend} subprocess {result}", pytrace=False)
    reference = results[BACKENDS[0]]
    keys = sorted(k for k in reference if k.startswith(model + "/"))
    assert keys, f"{model}: no weights saved"
    for backend in BACKENDS[1:]:
        for key in keys:
            np.testing.assert_allclose(
                results[backend][key], reference[key], atol=TOLERANCE, rtol=0,
                err_msg=f"{model} / {method}: {key} on {backend} vs {BACKENDS[0]}",
            )
