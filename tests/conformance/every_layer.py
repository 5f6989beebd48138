"""Every layer class `keras.layers` exports, trained in a tiny model under
`SAM(SGD, rho=1e-6)` and under the same plain SGD, every variable compared.

No list of layers: the classes are found with `dir(keras.layers)`. For each,
the arguments its constructor requires are chosen by parameter name
(`MINIMAL_ARGUMENTS`, `DATA_ARGUMENTS`), and inputs are tried from `FLOATS`,
`INTEGERS` and `STRINGS` (TensorFlow only) with each call style (`layer(x)`,
`layer([x1, x2])`, `layer(x1, x2)`) until the layer builds and runs in
`Input -> layer -> mean over inner axes -> Dense`; an RNN cell runs inside
`keras.layers.RNN`. The Dense head gives every model something to train; the
layer's own weights train through it.

Variants a layer's constructor or API offers are cases of their own, found
the same way: `[stateful]` for a `stateful` argument (state Keras keeps in
untracked variables), `[int8]` / `[float8]` for a layer that overrides
`quantize` (scales, and float8's overwrite-with-gradient variables).

Each case ends in one status (`run_case`):
- "matches": after 2 steps, every variable of the model — tracked, untracked
  (found by walking the layers' attributes: a stateful RNN's `states`), and
  a wrapped torch module's parameters and buffers — equals plain Keras';
- "refused": keras_sam raised an error naming the layer;
- "documented": a difference by design, in `DOCUMENTED_DIFFERENCES` (which
  must still differ);
- "skipped": with a reason the code found (abstract, an input placeholder, a
  preprocessing layer Keras cannot run in a model on this backend, plain
  Keras' own step failing, a variant Keras does not support for the layer)
  or one of `CANNOT_BUILD`'s reasons;
- anything else raises: a difference, an error that does not name the
  layer, or a new layer the generic rules cannot build.

With KERAS_SAM_LAYERS_RECORD=FILE, test_every_layer.py appends each case's
status to FILE; `python -m tests.conformance.every_layer FILE...` turns the
three backends' records into docs/layers.md (scripts/layers_inventory.sh).
"""

import dataclasses
import inspect
import itertools
import json
import os
import re
import sys

import keras
import numpy as np
from keras import layers

import keras_sam

BACKEND = keras.backend.backend()
BATCH = 4
STEPS = 2
LEARNING_RATE = 0.01
RHO = 1e-6
ATOL = RTOL = 1e-4
# The perturbation moves each pass's gradient by about ρ·H: in a layer with a
# large curvature (an STFT over 1024 samples) that is above ATOL, while it
# stays a small fraction of the step. A dropped or extra update is not.
CHANGE_TOLERANCE = 0.01
SEED = 1234
VOCAB = 5
# Eager steps: this checks what a step does with state, which compiling does
# not change (JAX's trainer is functional either way), and a compiled step
# per layer would cost a trace or an XLA compile each. torch is eager anyway.
COMPILE_ARGS = {"tensorflow": {"run_eagerly": True}, "jax": {"run_eagerly": True},
                "torch": {}}[BACKEND]
QUANTIZATION_MODES = ("int8", "float8")


def _torch_linear():
    import torch

    return torch.nn.Sequential(torch.nn.Linear(6, 3), torch.nn.BatchNorm1d(3))


# Values for required constructor arguments, by parameter name; each is a list
# of candidates (factories, so every model gets fresh sublayers), tried in turn.
MINIMAL_ARGUMENTS = {
    "units": [3], "filters": [2], "kernel_size": [2], "rate": [0.5], "stddev": [0.5],
    "num_heads": [2], "key_dim": [2], "head_dim": [2], "num_query_heads": [2],
    "num_key_value_heads": [1], "input_dim": [VOCAB], "output_dim": [3],
    "equation": ["ab,bc->ac", "abc,cd->abd"], "output_shape": [3], "target_shape": [(-1,)],
    "dims": [(2, 1), (1,)], "n": [2], "height": [3], "width": [3], "factor": [0.2, 2],
    "height_factor": [0.2], "width_factor": [0.2], "scale": [0.5], "num_tokens": [VOCAB],
    "num_bins": [VOCAB], "axes": [-1], "max_number": [2], "activation": ["tanh"],
    "output_size": [2], "pool_size": [2],
    "function": [lambda: (lambda x: 2.0 * x)],
    "layer": [lambda: layers.Dense(3), lambda: layers.LSTM(2, return_sequences=True)],
    "layers": [lambda: [layers.RandomFlip(), layers.Rescaling(0.5)]],
    "cell": [lambda: layers.SimpleRNNCell(2)],
    "cells": [lambda: [layers.SimpleRNNCell(2), layers.LSTMCell(2)]],
    "module": [_torch_linear] if BACKEND == "torch" else [],
}
# Optional arguments whose default (None) leaves the layer unable to run until
# it learns them from data (`adapt`) or infers them: given, it runs as is. An
# optional `output_shape` is the full output shape (with the batch).
DATA_ARGUMENTS = {"mean": 0.5, "variance": 0.1, "bin_boundaries": [0.25, 0.5, 0.75],
                  "num_tokens": VOCAB, "output_shape": (BATCH, 3),
                  "output_sequence_length": 3}
STRING_VOCABULARY = ["a", "b", "c"]
INTEGER_VOCABULARY = [1, 2, 3]
# Layers the generic rules above cannot build, and why.
CANNOT_BUILD = {
    "TFSMLayer": "wraps a TensorFlow SavedModel, which needs files on disk",
    "JaxLayer": "wraps a JAX function with its own parameters: a model of its own",
    "FlaxLayer": "wraps a Flax module (Flax is not installed with keras_sam)",
}
if BACKEND != "torch":
    CANNOT_BUILD["TorchModuleWrapper"] = "wraps a torch module: the torch backend only"
# Where keras_sam's step differs from Keras' own by design, as docs/algorithms.md
# ("Conventions") says: the case must still differ, or the docs are out of date.
DOCUMENTED_DIFFERENCES = {
    ("SpectralNormalization", backend): (
        "Keras' own step writes W/σ into the wrapped kernel on this backend; "
        "keras_sam's stateless passes do not keep that write (as Keras' JAX step)"
    )
    for backend in ("tensorflow", "torch")
}


@dataclasses.dataclass(frozen=True)
class InputSpec:
    shape: tuple
    dtype: str = "float32"


FLOATS = [InputSpec((6,)), InputSpec((5, 3)), InputSpec((8, 8, 3)), InputSpec((4, 4, 4, 2)),
          InputSpec((2, 4, 4, 4, 2)),
          InputSpec((2, 32)),  # 32 channels: GroupNormalization's default groups
          InputSpec((1024, 1)), InputSpec((2048,))]  # signals as long as an STFT frame
INTEGERS = [InputSpec((6,), "int32"), InputSpec((1,), "int32")]
STRINGS = InputSpec((1,), "string")
CALL_STYLES = ("single", "list", "pair")


@dataclasses.dataclass(frozen=True)
class Case:
    name: str  # as exported by keras.layers
    cls: type
    variant: str = ""  # "", "stateful" or a quantization mode

    @property
    def id(self):
        return f"{self.name}[{self.variant}]" if self.variant else self.name


@dataclasses.dataclass(frozen=True)
class Recipe:
    arguments: tuple  # ((parameter name, candidate), ...)
    spec: InputSpec
    style: str


class Skip(Exception):
    """The case cannot run here, for the reason given."""


class CannotBuild(Exception):
    """The generic rules found no way to build the layer."""


# -- the cases ----------------------------------------------------------------------
def exported_layer_classes():
    """{name: class} for the Layer classes in `keras.layers`: each class once,
    under its own name where exported so (`Conv1D`, not `Convolution1D`)."""
    names = {}
    for name in sorted(dir(layers)):
        value = getattr(layers, name)
        if inspect.isclass(value) and issubclass(value, layers.Layer):
            names.setdefault(value, []).append(name)
    return {
        (cls.__name__ if cls.__name__ in exported else exported[0]): cls
        for cls, exported in names.items()
    }


def aliases():
    """{name: [other exported names of the same class]}."""
    by_class = {}
    for name in sorted(dir(layers)):
        by_class.setdefault(id(getattr(layers, name)), []).append(name)
    return {
        name: [other for other in by_class[id(cls)] if other != name]
        for name, cls in exported_layer_classes().items()
    }


def _parameters(cls):
    signature = inspect.signature(cls.__init__)
    return {
        name: p for name, p in list(signature.parameters.items())[1:]
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }


def _overrides_quantize(cls):
    return getattr(cls, "quantize", None) is not layers.Layer.quantize


def all_cases():
    """Every exported class, then its variants: `[stateful]` where the
    constructor takes `stateful`, a quantization mode where it overrides
    `quantize`."""
    cases = []
    for name, cls in sorted(exported_layer_classes().items()):
        cases.append(Case(name, cls))
        if "stateful" in _parameters(cls):
            cases.append(Case(name, cls, "stateful"))
        if _overrides_quantize(cls):
            cases.extend(Case(name, cls, mode) for mode in QUANTIZATION_MODES)
    return cases


def _is_preprocessing(cls):
    return cls.__module__.startswith("keras.src.layers.preprocessing")


def generic_skip_reason(case):
    """Why this case does not run at all, or None."""
    cls = case.cls
    if issubclass(cls, layers.InputLayer):
        return "an input placeholder, not a transformation to train"
    if cls.call is layers.Layer.call:
        return "abstract: a base class without a `call` of its own"
    return CANNOT_BUILD.get(case.name)


# -- building -----------------------------------------------------------------------
DATA_ARGUMENT_CANDIDATES = dict(
    {name: [value] for name, value in DATA_ARGUMENTS.items()},
    vocabulary=[STRING_VOCABULARY, INTEGER_VOCABULARY],
    output_shape=[None, DATA_ARGUMENTS["output_shape"]],  # None: inferred where it can be
)
INDEX_ARGUMENTS = ("input_dim", "num_tokens", "num_bins", "vocabulary")


def _argument_choices(cls):
    """Every combination of candidates for the required arguments (and for
    the optional ones that would need `adapt`), as tuples of (name, value)."""
    parameters = _parameters(cls)
    required = [name for name, p in parameters.items() if p.default is p.empty]
    missing = [name for name in required if not MINIMAL_ARGUMENTS.get(name)]
    if missing:
        raise CannotBuild(f"no minimal value for the required argument(s) {missing}")
    options = {name: MINIMAL_ARGUMENTS[name] for name in required}
    options.update({n: c for n, c in DATA_ARGUMENT_CANDIDATES.items()
                    if n in parameters and n not in options})
    names = list(options)
    return [tuple(zip(names, values)) for values in itertools.product(*options.values())]


def _input_specs(cls):
    strings = [STRINGS] if BACKEND == "tensorflow" else []
    if any(name in _parameters(cls) for name in INDEX_ARGUMENTS):
        return INTEGERS + strings + FLOATS
    return FLOATS + INTEGERS + strings


def _fresh(candidate):
    return candidate() if callable(candidate) else candidate


def _features(outputs):
    """The layer's first output as a float matrix for the Dense head: the
    mean over the axes between batch and channels (whose sizes may differ
    between training and inference: a random crop)."""
    features = keras.tree.flatten(outputs)[0]
    if not keras.backend.is_float_dtype(features.dtype):
        features = keras.ops.cast(features, "float32")
    if len(features.shape) > 2:
        features = keras.ops.mean(features, axis=tuple(range(1, len(features.shape) - 1)))
    if features.shape[-1] is None or features.shape[0] != BATCH:
        # (An image layer given a rank-3 batch takes it for one image.)
        raise ValueError(f"output of shape {features.shape}: no batch of {BATCH} features")
    return features


def build_model(case, recipe, quantize=True):
    """(model, layer): Input(s) -> the layer -> (mean) -> Dense(2)."""
    kwargs = {name: _fresh(candidate) for name, candidate in recipe.arguments}
    if case.variant == "stateful":
        kwargs["stateful"] = True
    layer = case.cls(**kwargs)
    # An RNN cell (it has a `state_size`) runs inside the RNN layer.
    is_cell = hasattr(layer, "state_size") and not isinstance(layer, layers.RNN)
    runs = layers.RNN(layer) if is_cell else layer
    count = 1 if recipe.style == "single" else 2
    inputs = [keras.Input(recipe.spec.shape, batch_size=BATCH, dtype=recipe.spec.dtype)
              for _ in range(count)]
    outputs = {"single": lambda: runs(inputs[0]), "list": lambda: runs(inputs),
               "pair": lambda: runs(*inputs)}[recipe.style]()
    head = layers.Dense(2, name="head")(_features(outputs))
    model = keras.Model(inputs[0] if count == 1 else inputs, head)
    if quantize and case.variant in QUANTIZATION_MODES:
        try:
            layer.quantize(case.variant)
        except (NotImplementedError, ValueError, TypeError) as error:
            raise Skip(f"Keras cannot quantize it to {case.variant}: {_first_line(error)}")
    return model, layer


def make_data(recipe):
    """(x, y) for STEPS batches, from a NumPy RNG seeded by the recipe."""
    rng = np.random.default_rng(SEED)
    count = 1 if recipe.style == "single" else 2
    shape = (STEPS * BATCH, *recipe.spec.shape)
    if recipe.spec.dtype == "int32":
        xs = [rng.integers(0, VOCAB, shape).astype("int32") for _ in range(count)]
    elif recipe.spec.dtype == "string":
        xs = [rng.choice(STRING_VOCABULARY + ["z"], shape) for _ in range(count)]
    else:
        xs = [rng.uniform(0.0, 1.0, shape).astype("float32") for _ in range(count)]
    y = rng.normal(size=(STEPS * BATCH, 2)).astype("float32")
    return (xs[0] if count == 1 else xs), y


def batch(data, step):
    return keras.tree.map_structure(lambda a: a[step * BATCH:(step + 1) * BATCH], data)


def _first_line(error):
    """The error's type and first telling line (past Keras' "Exception
    encountered when calling ..." preamble)."""
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", line).strip() for line in str(error).splitlines()]
    preamble = ("Exception encountered", "Arguments received", "•")
    lines = [line for line in lines if line and not line.startswith(preamble)]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def find_recipe(case):
    """The first arguments, input and call style with which the layer builds
    and runs forward in training mode."""
    errors = []  # (how far the candidate got, error)
    for arguments in _argument_choices(case.cls):
        for spec in _input_specs(case.cls):
            for style in CALL_STYLES:
                recipe, stage = Recipe(arguments, spec, style), 0
                try:
                    model, _ = build_model(case, recipe, quantize=False)
                    x, stage = batch(make_data(recipe)[0], 0), 1
                    model(x, training=True)
                    return recipe
                except Exception as error:  # noqa: BLE001 - any failure: next candidate
                    errors.append((stage, f"{spec.dtype}{spec.shape} {style}: "
                                          f"{_first_line(error)}"))
    furthest = max(errors, key=lambda e: e[0])[1]  # the first that built, if any
    if _is_preprocessing(case.cls) and BACKEND != "tensorflow":
        raise Skip(f"a preprocessing layer Keras cannot run in a {BACKEND} model "
                   f"({furthest})")
    raise CannotBuild(f"{case.id}: no candidate builds; the furthest: {furthest}")


# -- every variable a layer owns --------------------------------------------------
def _is_torch_module(value):
    return BACKEND == "torch" and type(value).__module__.startswith("torch") and hasattr(
        value, "named_buffers")


def owned_variables(model):
    """[(label, variable)]: every `keras.Variable` reachable from the model's
    layers through their attributes (and lists, tuples, dicts in them),
    tracked by Keras or not, and every parameter and buffer of a wrapped
    torch module; labelled by attribute path, in a deterministic order."""
    found, seen = [], set()

    def visit(value, label):
        if id(value) in seen:
            return
        if isinstance(value, keras.Variable):
            seen.add(id(value))
            found.append((label, value))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{label}[{i}]")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], f"{label}[{key!r}]")
        elif isinstance(value, (layers.Layer, keras.random.SeedGenerator)):
            seen.add(id(value))
            # Public attributes first, so that labels name them where they can.
            for key in sorted(vars(value), key=lambda k: (k.startswith("_"), k)):
                visit(vars(value)[key], f"{label}.{key}")
        elif _is_torch_module(value) and type(value).__name__ != "ParameterDict":
            # (A Keras layer's own ParameterDict holds its variables' values.)
            seen.add(id(value))
            tensors = itertools.chain(value.named_parameters(), value.named_buffers())
            found.extend((f"{label}.{name}", tensor) for name, tensor in tensors)

    visit(model, "model")
    return found


def _numpy(variable):
    if isinstance(variable, keras.Variable):
        return np.asarray(keras.ops.convert_to_numpy(variable.value))
    return variable.detach().cpu().numpy()


def copy_values(source, target):
    """Gives `target` (built by the same recipe) `source`'s variable values."""
    pairs = _pairs(owned_variables(source), owned_variables(target))
    for (_, from_variable), (_, to_variable) in pairs:
        value = _numpy(from_variable)
        if isinstance(to_variable, keras.Variable):
            to_variable.assign(value)
        else:
            import torch

            with torch.no_grad():
                to_variable.copy_(torch.as_tensor(value))


def _pairs(got, want):
    labels = ([label for label, _ in got], [label for label, _ in want])
    assert labels[0] == labels[1], f"the two models' variables differ: {labels}"
    return list(zip(got, want))


def differences(got_model, want_model, initial):
    """[(label, description)] of the variables where the two models differ:
    floats beyond ATOL + RTOL·|value| + CHANGE_TOLERANCE·(what training
    changed), anything else (seed states, counters, int8 kernels) in any way.
    `initial`: the values both started from."""
    found = []
    pairs = _pairs(owned_variables(got_model), owned_variables(want_model))
    for ((label, got), (_, want)), start in zip(pairs, initial):
        got, want = _numpy(got), _numpy(want)
        if got.shape != want.shape:
            found.append((label, f"shape {got.shape} against {want.shape}"))
        elif "float" in want.dtype.name:  # float8 and bfloat16 (ml_dtypes) too
            got, want = got.astype("float64"), want.astype("float64")
            change = np.nanmax(np.abs(want - start.astype("float64")), initial=0.0)
            atol = ATOL + CHANGE_TOLERANCE * change
            if not np.allclose(got, want, atol=atol, rtol=RTOL, equal_nan=True):
                found.append((label, f"max abs difference {np.nanmax(np.abs(got - want)):.3g}"))
        elif not np.array_equal(got, want):
            found.append((label, f"{got.ravel()[:4]} against {want.ravel()[:4]}"))
    return found


# -- the run ------------------------------------------------------------------------
def _train(model, optimizer, data, compile_args):
    model.compile(optimizer=optimizer, loss="mse", **compile_args)
    # The same global seed for both runs: a layer drawing from the backend's
    # global generator draws the same numbers in the first pass of each.
    keras.utils.set_random_seed(SEED)
    for step in range(STEPS):
        model.train_on_batch(*batch(data, step))


def _is_refusal(error, layer):
    """An error keras_sam raised itself (its innermost frame is in the
    package), naming the layer."""
    traceback = error.__traceback__
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    raised_here = "/keras_sam/" in traceback.tb_frame.f_code.co_filename.replace("\\", "/")
    text = str(error)
    return raised_here and (layer.name in text or type(layer).__name__ in text)


class PlainKerasFails(Exception):
    """Keras' own step fails on the model: nothing to compare with."""


def run_case(case):
    """("matches" | "refused" | "skipped", detail); raises AssertionError when
    keras_sam's variables differ from plain Keras', or its error does not
    name the layer, and CannotBuild for a layer the rules cannot build."""
    reason = generic_skip_reason(case)
    if reason:
        return "skipped", reason
    keras.utils.set_random_seed(SEED)  # the same recipe whatever ran before
    try:
        recipe = find_recipe(case)
        try:
            return _compare(case, recipe, COMPILE_ARGS)
        except PlainKerasFails:
            # Some Keras steps only work compiled (float8 on TensorFlow).
            return _compare(case, recipe, {})
    except Skip as skip:
        return "skipped", str(skip)
    except PlainKerasFails as error:
        return "skipped", f"plain Keras fails to train it on {BACKEND}: {error}"


def _compare(case, recipe, compile_args):
    data = make_data(recipe)
    keras.utils.set_random_seed(SEED)
    sam_model, sam_layer = build_model(case, recipe)
    plain_model, _ = build_model(case, recipe)
    copy_values(sam_model, plain_model)
    initial = [_numpy(variable) for _, variable in owned_variables(plain_model)]
    try:
        _train(plain_model, keras.optimizers.SGD(LEARNING_RATE), data, compile_args)
    except Exception as error:  # noqa: BLE001 - (the recipe ran forward: Keras' step)
        raise PlainKerasFails(_first_line(error)) from error
    try:
        optimizer = keras_sam.SAM(keras.optimizers.SGD(LEARNING_RATE), rho=RHO)
        _train(keras_sam.SAMModel(sam_model), optimizer, data, compile_args)
    except Exception as error:
        assert _is_refusal(error, sam_layer), (
            f"{case.id}: the sharpness-aware step failed, and not with keras_sam's error "
            f"naming the layer: {_first_line(error)}")
        return "refused", _first_line(error)
    found = differences(sam_model, plain_model, initial)
    documented = DOCUMENTED_DIFFERENCES.get((case.id, BACKEND))
    if documented:
        assert found, f"{case.id} now matches plain Keras: drop its documented difference"
        return "documented", documented
    assert not found, f"{case.id} differs from plain Keras: " + "; ".join(
        f"{label}: {description}" for label, description in found)
    return "matches", ""


def record(case, status, detail):
    """Appends the case's status to the JSON-lines file that
    KERAS_SAM_LAYERS_RECORD names, if set (scripts/layers_inventory.sh)."""
    path = os.environ.get("KERAS_SAM_LAYERS_RECORD")
    if path:
        with open(path, "a") as file:
            file.write(json.dumps([BACKEND, case.id, status, detail]) + "\n")


# -- the inventory (docs/layers.md) -------------------------------------------------
BACKENDS = ("tensorflow", "jax", "torch")
_HEADER = """# Every Keras layer

Generated by `bash scripts/layers_inventory.sh` (Keras {keras}); do not edit by hand.

Every layer class `keras.layers` exports is built in a tiny model (the layer,
then a `Dense` head) with minimal arguments, trained 2 steps with
`SAMModel(model)` under `SAM(SGD(...), rho=1e-6)`, and 2 steps with the same
SGD under plain Keras, from the same initial values on the same data. At this
ρ the two must agree: every variable of the model is compared — weights,
non-trainable variables, variables Keras does not track (a stateful RNN's
states), quantization scales, seed-generator states, and a wrapped torch
module's parameters and buffers. Variants get rows of their own:
`[stateful]` for RNNs, `[int8]` / `[float8]` for layers Keras can quantize.

- **matches**: keras_sam trains it exactly as plain Keras does.
- **refused**: keras_sam raises the error below, naming the layer, when you
  compile or fit a model that contains it.
- **documented**: differs from Keras' own step on this backend by design, as
  the reason below and docs/algorithms.md ("Conventions") say.
- **skipped**: not checked, for the reason below.
- **DIFFERS**: keras_sam trains it differently from plain Keras — a defect.
"""


def _cell(entry):
    return "—" if entry is None else entry[0] if entry[0] != "FAILS" else "**DIFFERS**"


def markdown(results):
    """docs/layers.md from {backend: {case id: [status, detail]}}."""
    names = aliases()
    ids = [case.id for case in all_cases()]
    lines = [_HEADER.format(keras=keras.__version__), "| Layer | TensorFlow | JAX | torch |",
             "|---" * (len(BACKENDS) + 1) + "|"]
    for case_id in ids:
        also = names.get(case_id, [])
        label = f"`{case_id}`" + (f" (also {', '.join(also)})" if also else "")
        lines.append(f"| {label} | " + " | ".join(
            _cell(results.get(b, {}).get(case_id)) for b in BACKENDS) + " |")
    for status, title in (("FAILS", "Differences"), ("documented", "Documented differences"),
                          ("refused", "Refused"), ("skipped", "Skipped")):
        rows = [(case_id, b, results[b][case_id][1]) for case_id in ids for b in BACKENDS
                if results.get(b, {}).get(case_id, [None])[0] == status]
        if rows:
            lines += ["", f"## {title}", ""]
            lines += [f"- `{case_id}` ({b}): {detail}" for case_id, b, detail in rows]
    return "\n".join(lines) + "\n"


def main(argv):
    if not argv:
        sys.exit("usage: python -m tests.conformance.every_layer RECORD.jsonl... > docs/layers.md")
    results = {}
    for path in argv:
        with open(path) as file:
            for backend, case_id, status, detail in map(json.loads, file):
                results.setdefault(backend, {})[case_id] = [status, detail]
    sys.stdout.write(markdown(results))


if __name__ == "__main__":
    main(sys.argv[1:])
