"""Every layer class Keras exports, trained 2 steps under `SAM(SGD, rho=1e-6)`
through `SAMModel` and 2 plain Keras steps with the same SGD, from the same
initial values on the same data: every variable the model owns (tracked or
not, see every_layer.owned_variables) must agree, or keras_sam must refuse the
layer with an error that names it, or the case is skipped for a reason the
code states. A layer Keras adds later shows up here as a new test id, and
fails by name if it differs or if the generic rules cannot build it.

The inventory of docs/layers.md is generated from the same cases:
`bash scripts/layers_inventory.sh`.
"""

import pytest

from tests.conformance import every_layer

CASES = every_layer.all_cases()


def test_the_enumeration_finds_the_layers_keras_exports():
    names = {case.name for case in CASES}
    # Not a list of what to test: a check that dir(keras.layers) is read
    # (one class of each family).
    for expected in ("Dense", "Bidirectional", "TimeDistributed", "RandomFlip", "LSTM",
                     "MultiHeadAttention", "BatchNormalization", "Normalization"):
        assert expected in names
    assert "Convolution2D" not in names  # an alias of Conv2D: one case per class
    assert {"SimpleRNN[stateful]", "Dense[float8]", "Dense[int8]", "EinsumDense[float8]",
            "EinsumDense[int8]"} <= {case.id for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_layer_trains_as_under_plain_keras(case):
    try:
        status, detail = every_layer.run_case(case)
    except (AssertionError, every_layer.CannotBuild) as error:
        every_layer.record(case, "FAILS", str(error).splitlines()[0])
        raise
    every_layer.record(case, status, detail)
    if status == "skipped":
        pytest.skip(detail)
    assert status in ("matches", "refused", "documented"), (status, detail)
