"""Smoke test of an installed keras_sam (run by check_build.sh, once per backend).

Checks that keras_sam is imported from the installation (not a source tree),
that its version is the distribution's, and that SAM trains a tiny model:
finite loss, weights changed, no skipped step.
"""

import os
import pathlib
import sys
from importlib import metadata

import keras
import numpy as np

import keras_sam


def main():
    location = pathlib.Path(keras_sam.__file__).resolve()
    assert "site-packages" in location.parts, f"keras_sam imported from {location}"
    assert keras_sam.__version__ == metadata.version("keras-sam"), (
        keras_sam.__version__, metadata.version("keras-sam"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32")
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(2)])
    model = keras_sam.SAMModel(inner)
    model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1), rho=0.05),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in model.get_weights()]
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0)
    loss = history.history["loss"][-1]
    assert np.isfinite(loss), loss
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights()))
    assert history.history["skipped_steps"][-1] == 0
    print(f"smoke {os.environ.get('KERAS_BACKEND')}: keras_sam {keras_sam.__version__} "
          f"(keras {keras.__version__}) from {location.parent}, loss {loss:.4f}: ok")


if __name__ == "__main__":
    sys.exit(main())
