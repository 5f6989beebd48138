import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

BACKEND = keras.backend.backend()


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
