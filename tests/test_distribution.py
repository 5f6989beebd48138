"""Data-parallel training on two CPU devices equals one device.

JAX: `keras.distribution.DataParallel` (XLA_FLAGS forces two host devices);
TensorFlow: `MirroredStrategy` over two logical CPUs. Keras has no
distribution for torch. The runs happen in `tests/distribution_run.py`, in a
subprocess per backend, because the device count is fixed when the backend
starts; so both run from one session (conftest.PROCESS_HOST).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import in_process_host_session

pytestmark = in_process_host_session("runs JAX and TensorFlow in subprocesses")
BACKENDS = ("jax", "tensorflow")

SCRIPT = os.path.join(os.path.dirname(__file__), "distribution_run.py")
METHODS = ("SAM", "SAM k=2 adaptive", "XSAM α=0.5", "XSAM search", "X-SAM", "GSAM",
           "WSAM decoupled", "SAM gated")
GLOBAL_ONLY = ("XSAM search", "SAM gated")  # state from the whole batch's gradients
CASES = [(m, "global") for m in METHODS] + [
    (m, "per-replica") for m in METHODS if m not in GLOBAL_ONLY
]


@pytest.fixture(scope="module", params=BACKENDS)
def results(request):
    env = dict(os.environ, KERAS_BACKEND=request.param)
    if request.param == "jax":
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2"
        ).strip()
    run = subprocess.run([sys.executable, SCRIPT], env=env, capture_output=True, text=True,
                         timeout=900)
    assert run.returncode == 0, run.stderr[-4000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    return {(r["method"], r["mode"]): r for r in lines}


def test_every_case_ran(results):
    assert sorted(results) == sorted(CASES)


@pytest.mark.parametrize("method,mode", CASES)
def test_data_parallel_equals_one_device(results, method, mode):
    r = results[(method, mode)]
    assert r["devices"] == [1, 2], r  # one device, then replicated on two
    assert r["moved"] > 1e-3, r  # training changed the weights
    assert r["weights"] <= 1e-5, r
    # BatchNorm's moving statistics come from the clean passes only.
    assert r["statistics"] <= 1e-5, r
    assert r["distributed"] == r["single"], r
    assert r["single"]["skipped_steps"] == 0 and r["single"]["iterations"] == 4, r
    if method == "XSAM search":
        assert r["single"]["searches"] == 2, r  # search_every=2 over 4 steps
    if method == "X-SAM":
        assert r["single"]["refreshes"] == 1, r  # refresh_every=2: at step 2 of 4
    assert abs(r["loss"][0] - r["loss"][1]) <= 1e-5, r
