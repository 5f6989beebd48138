import faulthandler
import gc
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

if BACKEND == "jax":
    # Many tests compile the same small programs (same model, same method,
    # new Python objects): JAX's compilation cache, in a directory of this
    # process' own that starts empty, serves the second compile of the same
    # program (a third less CPU for the JAX session). Identical programs give
    # identical executables, so no result depends on it.
    import atexit
    import shutil
    import tempfile

    import jax

    _jax_cache = tempfile.mkdtemp(prefix="keras_sam_jax_cache_")
    atexit.register(shutil.rmtree, _jax_cache, ignore_errors=True)
    jax.config.update("jax_compilation_cache_dir", _jax_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

# Tests that start their own processes (all three backends, or a benchmark on
# JAX) run in one of the three sessions only: torch's, the shortest otherwise.
PROCESS_HOST = "torch"
COLLECT_EVERY = 20


def in_process_host_session(what):
    """Skip mark: `what` runs in the KERAS_BACKEND=PROCESS_HOST session only."""
    return pytest.mark.skipif(
        BACKEND != PROCESS_HOST,
        reason=f"{what}: runs in the KERAS_BACKEND={PROCESS_HOST} session only",
    )


_tests_since_collection = [0]


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(1234)
    yield
    # Keras' global state is reset after every test, but a full garbage
    # collection (`clear_session`'s default) costs a quarter of a second on
    # TensorFlow's object graph: it runs every COLLECT_EVERY tests instead.
    keras.backend.clear_session(free_memory=False)
    _tests_since_collection[0] += 1
    if _tests_since_collection[0] >= COLLECT_EVERY:
        _tests_since_collection[0] = 0
        gc.collect()


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
