"""Every method on every zoo model equals an independent plain-Keras reference.

The package run: `SAMModel(model)` compiled with the method around
`SGD(0.05, momentum=0.9)`, trained with `train_on_batch` on `zoo.STEPS`
mini-batches. The reference (methods.reference_run): the unwrapped model's
own gradients (plain_keras.py: `tf.GradientTape`, `jax.grad` of
`stateless_call`, `torch.autograd`), the method's formula in float64 NumPy
(tests/reference.py), and a fresh Keras SGD applying the result. Every weight
of the model (BatchNorm statistics and Dropout seed state included) must agree
to 1e-5 after the first step and after the last.

Dropout: the zoo's Dropout layers are seeded, so their generator state is a
non-trainable variable; the package feeds every pass of a step the step's
non-trainable values and the reference assigns them before every pass, so
both draw the same mask, on every backend (torch included: a seeded Dropout
draws from its own generator, not from torch's global one). BatchNorm:
moving statistics come from the clean pass only, in both.

What runs. The 10 × 10 product of models and methods is cut into 10 Latin
diagonals — diagonal k pairs model i with method (i + k + 3) mod 10, in the
orders of zoo.ZOO and methods.METHODS — and each diagonal runs in one
(backend, compile mode):

    TensorFlow  eager (`run_eagerly=True`)  k = 0
                graph (`jit_compile=False`) k = 1
                XLA (`jit_compile=True`)    k = 2
    JAX         jit                         k = 3, 4, 5
    torch       eager                       k = 6, 7, 8
                compiled (`jit_compile=True`) k = 9

The offset 3 and the zoo's order give the two models slowest to compile
(mobilenet, then the RNNs) the methods with the fewest passes (SAM, ASAM,
2-step SAM, GSAM) in the compiled modes, diagonals 2-5.

So every compile mode runs every model once and every method once, every
backend runs every model and every method 3–4 times, and every (model,
method) pair runs once in all. JAX with `run_eagerly=True` is not run: it is
slower than jit compilation. test_cross_backend_zoo.py checks that the three
backends agree on every model.

The methods that pay less than two passes (methods.COST_METHODS: LookSAM,
sub-batch ascent) run beside the square: each on model k in the mode of
diagonal k, so on every model and in every mode once.
"""

import warnings

import keras
import numpy as np
import pytest

import keras_sam
from tests.conformance import methods, zoo
from tests.conformance.plain_keras import PlainKeras

BACKEND = keras.backend.backend()
TOLERANCE = 1e-5
MODELS = list(zoo.ZOO)
METHOD_NAMES = list(methods.METHODS)

COMPILE_ARGS = {
    "eager": {"run_eagerly": True},
    "graph": {"jit_compile": False},
    "xla": {"jit_compile": True},
    "jit": {"jit_compile": True},
    "torch_eager": {"jit_compile": False},
    "torch_compiled": {"jit_compile": True},
}
# backend -> [(compile mode, diagonal)]
DIAGONALS = {
    "tensorflow": [("eager", 0), ("graph", 1), ("xla", 2)],
    "jax": [("jit", 3), ("jit", 4), ("jit", 5)],
    "torch": [("torch_eager", 6), ("torch_eager", 7), ("torch_eager", 8), ("torch_compiled", 9)],
}
OFFSET = 3
RUNS = [
    (mode, model, METHOD_NAMES[(i + k + OFFSET) % len(METHOD_NAMES)])
    for mode, k in DIAGONALS[BACKEND]
    for i, model in enumerate(MODELS)
]

# The methods that trade passes for cost: model k in the mode of diagonal k,
# so every model and every mode runs once per method.
COST_RUNS = [
    (mode, MODELS[k], method) for mode, k in DIAGONALS[BACKEND] for method in methods.COST_METHODS
]

_references = {}
_reference_cases = {}


def dropout_rate(mode):
    # TF's stateless random ops draw other numbers under XLA than op by op, so
    # an XLA step and the eager reference cannot share a Dropout mask: XLA runs
    # without Dropout (that every pass of a step shares one mask is tested
    # in tests/training/test_models.py).
    return 0.0 if mode == "xla" else 0.2


def reference_case(model, dropout):
    """(case, PlainKeras) for the references on `model`: one per model and
    dropout rate, every variable reset to its initial value at each call, so
    that on JAX the plain-Keras passes are compiled once (`jax.jit`) for all
    the methods run on the model, rather than taken op by op for each."""
    key = (model, dropout)
    if key not in _reference_cases:
        case = zoo.ZOO[model](dropout=dropout)
        # `variables`, not `weights`: the Dropout layers' seed states too.
        initial = [np.array(keras.ops.convert_to_numpy(v.value)) for v in case.model.variables]
        plain = PlainKeras(case, compiled=BACKEND == "jax")
        _reference_cases[key] = case, plain, initial
    case, plain, initial = _reference_cases[key]
    for variable, value in zip(case.model.variables, initial):
        variable.assign(value)
    return case, plain


def reference_history(model, method, dropout=0.2):
    """Cached: the reference is the same for every compile mode."""
    key = (model, method, dropout)
    if key not in _references:
        case, plain = reference_case(model, dropout)
        _references[key] = methods.reference_run(case, method, plain)
    return _references[key]


def package_history(model, method, mode):
    case = zoo.ZOO[model](dropout=dropout_rate(mode))
    sam_model = keras_sam.SAMModel(case.model)
    sam_model.compile(
        optimizer=methods.lookup(method)[0](methods.inner_optimizer()),
        loss=case.loss,
        **COMPILE_ARGS[mode],
    )
    history = []
    for step in range(zoo.STEPS):
        logs = sam_model.train_on_batch(
            zoo.batch(case.x, step), zoo.batch(case.y, step), return_dict=True
        )
        assert int(logs["skipped_steps"]) == 0, f"step {step} was skipped"
        history.append([np.array(keras.ops.convert_to_numpy(v.value)) for v in case.model.weights])
    return history, [v.path for v in case.model.weights]


def _max_difference(xs, ys):
    return max(float(np.max(np.abs(np.asarray(x, "float64") - y))) for x, y in zip(xs, ys))


def check(model, method, mode):
    """Asserts the package's run equals the reference."""
    got, names = package_history(model, method, mode)
    want = reference_history(model, method, dropout_rate(mode))
    for step in (0, zoo.STEPS - 1):
        for name, a, b in zip(names, got[step], want[step]):
            np.testing.assert_allclose(
                a, b, atol=TOLERANCE, rtol=0,
                err_msg=f"{model} / {method} / {mode}: {name} after step {step + 1}",
            )
    # The method matters at the scale of the tolerance (the check can fail).
    plain = reference_history(model, None, dropout_rate(mode))
    assert _max_difference(want[-1], plain[-1]) > 100 * TOLERANCE


@pytest.mark.parametrize("mode,model,method", RUNS + COST_RUNS)
def test_method_equals_plain_keras_reference(mode, model, method):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check(model, method, mode)
    if mode == "torch_compiled":
        # The SAM step runs eagerly under torch.compile, with a warning that
        # says why — once per model.
        fallbacks = [w for w in caught if "runs eagerly" in str(w.message)]
        assert len(fallbacks) == 1, [str(w.message) for w in caught]
