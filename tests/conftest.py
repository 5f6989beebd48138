import faulthandler
import os
import signal

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# tests/run_all_backends.py sends SIGUSR1 to a pytest process past its
# deadline: every thread's stack goes to the file it names (pytest captures
# stderr), which it prints.
if os.environ.get("KERAS_SAM_STACKS_FILE"):
    _stacks = open(os.environ["KERAS_SAM_STACKS_FILE"], "w")
    faulthandler.register(signal.SIGUSR1, file=_stacks, all_threads=True)

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()

# Tests that start their own processes (all three backends, or a benchmark on
# JAX) run in one of the three sessions only: torch's, the shortest otherwise.
PROCESS_HOST = "torch"


def in_process_host_session(what):
    """Skip mark: `what` runs in the KERAS_BACKEND=PROCESS_HOST session only."""
    return pytest.mark.skipif(
        BACKEND != PROCESS_HOST,
        reason=f"{what}: runs in the KERAS_BACKEND={PROCESS_HOST} session only",
    )


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    keras.backend.clear_session()


def jit_modes():
    """`jit_compile` values worth testing on this backend."""
    if BACKEND == "tensorflow":
        return [False, True]
    if BACKEND == "jax":
        return [True]
    return [False]  # torch.compile on CPU is slower than eager and not our default.


def batches(x, y, batch_size):
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def weights_close(model_weights, reference, atol):
    for got, want in zip(model_weights, reference):
        np.testing.assert_allclose(got, want, atol=atol, rtol=0)
