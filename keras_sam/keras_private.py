"""Every private member of Keras that keras_sam uses, in one place.

Keras moves its internals between releases. Each access here is one small
function that looks the member up when it is used (never when keras_sam is
imported), and has its own test in `tests/test_keras_private.py`: when a Keras
release moves a member, that test names it, `import keras_sam` still works, and
the feature that needs it raises `KerasInternalsChanged` saying what is
missing.

Public Keras names are used everywhere else (`keras.utils.unpack_x_y_sample_weight`,
`keras.StatelessScope`, `Optimizer.variables`, ...). Supported: Keras 3.10 to
the current release, and keras-nightly.
"""

import contextlib
import functools
import sys

import keras


class KerasInternalsChanged(ImportError):
    """A private Keras member keras_sam relies on is not where it was."""


def _module_with(module_names, name):
    """The first of the modules `module_names` that has `name`, or None."""
    for module_name in module_names:
        # The builtin `__import__`, not `importlib.import_module`: these
        # lookups also run while TensorFlow traces a step, and AutoGraph runs
        # builtins as they are but tries to convert importlib's Python code
        # (warning "could not transform <function _gcd_import>").
        try:
            __import__(module_name)
        except ImportError:
            continue
        module = sys.modules[module_name]
        if hasattr(module, name):
            return module
    return None


def _member(module_names, name):
    """`name` from the first of `module_names` that has it."""
    module = _module_with(module_names, name)
    if module is None:
        raise KerasInternalsChanged(
            _missing_message(f"{' or '.join(module_names)}.{name}")
        )
    return getattr(module, name)


def _attribute(obj, name):
    """`obj.name`, a private attribute of a Keras object."""
    try:
        return getattr(obj, name)
    except AttributeError:
        raise KerasInternalsChanged(
            _missing_message(f"{type(obj).__name__}.{name}")
        ) from None


def _missing_message(what):
    return (
        f"keras_sam needs the private Keras member `{what}`, which Keras "
        f"{keras.__version__} does not have. keras_sam supports Keras 3.10 to "
        "3.15 and is checked against keras-nightly; please report this with "
        "your Keras version."
    )


# -- losses and the trainer ------------------------------------------------------
def unscale_loss_for_distribution(loss):
    """The loss times the `tf.distribute` replica count (identity elsewhere).

    Keras scales each replica's loss by 1/replicas so that summed gradients
    are the global batch's; the sharpness-aware step works with a share's own
    mean loss, as Keras' trainers do. `keras.src.losses.loss`, Keras 3.10+.
    """
    return _member(["keras.src.losses.loss"], "unscale_loss_for_distribution")(loss)


def loss_tracker(model):
    """The compiled model's `Mean` metric behind the `loss` log.

    Keras' own `train_step` updates it; so does the sharpness-aware step.
    `Trainer._loss_tracker`, Keras 3.10+.
    """
    return _attribute(model, "_loss_tracker")


def compile_loss(model):
    """The loss object `model.compile` made (None before `compile`).

    Each `compile` makes a new one, so it tells whether the loss changed since
    something was built for it. `Trainer._compile_loss`, Keras 3.10+.
    """
    return _attribute(model, "_compile_loss")


def call_has_training_arg(model):
    """Whether `model.call` takes `training` (as the trainers check before
    passing it to `stateless_call`). `Layer._call_has_training_arg`, Keras 3.10+.
    """
    return _attribute(model, "_call_has_training_arg")


def clear_losses(layer):
    """Forgets the losses `layer` and its sublayers kept from their previous
    call, and their ids, as `Layer.__call__` does on entry. `stateless_call`
    runs `call` directly: a new loss tensor that happens to reuse a stale id
    would be dropped. `Layer._clear_losses`, Keras 3.10+."""
    _attribute(layer, "_clear_losses")()


def stateless_call_function(layer):
    """The function `Layer.stateless_call` runs inside its scope: the
    layer's `quantized_call` if it is quantized, its `call` rematerialized if
    it has a remat mode, else its `call`. `Layer._remat_mode`, Keras 3.10+.
    """
    if layer.dtype_policy.quantization_mode is not None:
        call = layer.quantized_call
    else:
        call = layer.call
    if _attribute(layer, "_remat_mode") is None:
        return call
    return lambda *args, **kwargs: layer.rematerialized_call(call, *args, **kwargs)(
        *args, **kwargs
    )


@contextlib.contextmanager
def losses_override(model, losses):
    """While active, `model.losses` is `losses` (the activity-regularizer
    losses a `stateless_call` returned), so that `stateless_compute_loss` adds
    them, as in the JAX trainer. `Layer._losses_override`, Keras 3.10+.
    """
    if not losses:
        yield
        return
    _attribute(model, "_losses_override").clear()
    model._losses_override = losses
    try:
        yield
    finally:
        model._losses_override.clear()


# -- optimizers -------------------------------------------------------------------
def learning_rate_object(optimizer):
    """The learning rate as the optimizer was given it: a float variable, a
    `LearningRateSchedule` or a callable (the public `learning_rate` is the
    current value only). `BaseOptimizer._learning_rate`, Keras 3.10+.
    """
    return _attribute(optimizer, "_learning_rate")


def micro_iterations(optimizer):
    """The optimizer's step counter, micro-batches included: under
    `gradient_accumulation_steps=k` the public `iterations` is this count
    floor-divided by k, and an update is applied when it reaches a multiple
    of k; without accumulation the two are equal (saved with the optimizer).
    `BaseOptimizer._iterations`, Keras 3.10+.
    """
    return _attribute(optimizer, "_iterations")


def no_automatic_dependency_tracking(method):
    """Decorator: while `method` runs, attributes it assigns (variables, lists)
    are not tracked as the object's own, as in `LossScaleOptimizer.build`
    (its variables are listed once, by `add_variable`).
    `keras.src.utils.tracking.no_automatic_dependency_tracking`, Keras 3.10+.
    """

    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        keras_decorator = _member(
            ["keras.src.utils.tracking"], "no_automatic_dependency_tracking"
        )
        return keras_decorator(method)(*args, **kwargs)

    return wrapper


# -- output -----------------------------------------------------------------------
def print_msg(message):
    """Prints a line to stdout, or to absl logging when Keras' interactive
    logging is off (as Keras' own callbacks do).
    `keras.src.utils.io_utils.print_msg`, Keras 3.10+.
    """
    _member(["keras.src.utils.io_utils"], "print_msg")(message)


# -- the TensorFlow backend ------------------------------------------------------
# Where Keras' TF backend keeps `_compute_moments`, the function its
# `ops.moments` (and so BatchNormalization) calls: `nn` up to Keras 3.15,
# `ops.nn` in keras-nightly 3.16.
TENSORFLOW_MOMENTS_MODULES = (
    "keras.src.backend.tensorflow.nn",
    "keras.src.backend.tensorflow.ops.nn",
)


@contextlib.contextmanager
def tensorflow_moments_replaced_by(compute_moments):
    """While active, Keras' TF `moments` computes `(mean, variance)` with
    `compute_moments(x, axes, keepdims)`.

    Yields True, or False (nothing replaced) where this Keras has no
    `_compute_moments` in `TENSORFLOW_MOMENTS_MODULES`.
    """
    module = _module_with(TENSORFLOW_MOMENTS_MODULES, "_compute_moments")
    if module is None:
        yield False
        return
    original = module._compute_moments
    module._compute_moments = compute_moments
    try:
        yield True
    finally:
        module._compute_moments = original


def public_optimizer_config(config):
    """A serialized Keras optimizer under its public class (`keras.optimizers.SGD`).

    On torch, `keras.optimizers.SGD(...)` is an instance of a torch-only
    subclass that Keras serializes under its private module
    (`keras.src.backend.torch.optimizers...`), so a file saved on torch would
    not train on the other backends; under the public name it loads as each
    backend's own class. Files saved that way before are read the same way.
    """
    if not isinstance(config, dict) or not str(config.get("module", "")).startswith(
        "keras.src.backend."
    ):
        return config
    public = getattr(keras.optimizers, str(config.get("class_name")), None)
    if not (isinstance(public, type) and issubclass(public, keras.optimizers.Optimizer)):
        return config
    return {**config, "module": "keras.optimizers", "registered_name": None}
