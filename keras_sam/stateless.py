"""A model's loss as a pure function of its variable values, and the kinds of
variable a sharpness-aware step must tell apart.

Keras' `stateless_call` maps the variables Keras lists — trainable and
non-trainable — and returns the new non-trainable values; writes to any other
variable are lost with its scope. Some layers keep state Keras does not list
(a stateful RNN's `states`), and some trainable variables are state too: Keras
overwrites a variable marked `overwrite_with_gradient` (float8 training's
scales and amax histories) with its "gradient". `ModelVariables` sorts them,
and `stateless_loss` carries every one of them through a pass.
"""

import dataclasses

import keras

from keras_sam import keras_private


def is_overwritten(variable):
    """Whether Keras overwrites `variable` with its gradient (float8 scales)."""
    return bool(getattr(variable, "overwrite_with_gradient", False))


def _held_by_layers(model):
    """The layers (`model` first) and variables reachable from `model`
    through layers' attributes and the lists, tuples and dicts in them,
    each once, tracked by Keras or not."""
    found, seen, stack = [], set(), [model]
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, keras.Variable):
            found.append(obj)
        elif isinstance(obj, keras.layers.Layer):
            found.append(obj)
            stack.extend(reversed(list(vars(obj).values())))
        elif isinstance(obj, (list, tuple)):
            stack.extend(reversed(obj))
        elif isinstance(obj, dict):
            stack.extend(reversed(list(obj.values())))
    return found


def layers_of(model):
    """`model` and every layer inside it."""
    return [x for x in _held_by_layers(model) if isinstance(x, keras.layers.Layer)]


def _untracked_state(model):
    """Variables held by the model's layers that Keras does not list among
    the model's variables, e.g. a stateful RNN's `states`."""
    listed = {id(v) for v in model.variables}
    listed.update(id(v) for v in getattr(model, "metrics_variables", []))
    return [
        x for x in _held_by_layers(model)
        if isinstance(x, keras.Variable) and id(x) not in listed
    ]


def _has_torch_tensors(module):
    return any(True for _ in module.parameters()) or any(True for _ in module.buffers())


def refuse_stateful_modules(model):
    """Raises for layers no stateless pass can run, naming them.

    A `keras.layers.TorchModuleWrapper` computes with its module's own
    `nn.Parameter`s and buffers, not with the values each pass of the step
    hands it: its gradients would be zero and its buffers updated by every
    pass (a module with neither is harmless)."""
    wrapper = getattr(keras.layers, "TorchModuleWrapper", None)
    layers = [] if wrapper is None else [
        layer for layer in layers_of(model)
        if isinstance(layer, wrapper) and _has_torch_tensors(layer.module)
    ]
    if layers:
        names = ", ".join(f"{layer.name!r} ({type(layer.module).__name__})" for layer in layers)
        raise ValueError(
            f"keras_sam cannot train the TorchModuleWrapper layer(s) {names}: a "
            "wrapped torch module computes with its own parameters and buffers, "
            "not with the perturbed values of a sharpness-aware step, so it would "
            "get no gradient and its buffers would update on every pass. Write "
            "the module with Keras layers (or `keras.ops`), or train it with a "
            "plain Keras optimizer."
        )


@dataclasses.dataclass
class ModelVariables:
    """A model's variables as a sharpness-aware step sees them.

    Attributes:
        trainable: `model.trainable_variables`, the inner optimizer's list.
        parameters: the trainable variables that are not overwritten with
            their gradient: the vector θ every method perturbs, normalises
            and steps.
        overwritten: trainable variables marked `overwrite_with_gradient`:
            state, whose next value the clean pass computes as its gradient
            and the inner optimizer assigns.
        state: `model.non_trainable_variables` (BatchNorm statistics, seed
            states), then the layers' untracked state: updated by the clean
            pass only.
        tracked_state_count: how many of `state` Keras lists.
    """

    trainable: list
    parameters: list
    overwritten: list
    state: list
    tracked_state_count: int

    @classmethod
    def of(cls, model):
        trainable = list(model.trainable_variables)
        tracked = list(model.non_trainable_variables)
        return cls(
            trainable=trainable,
            parameters=[v for v in trainable if not is_overwritten(v)],
            overwritten=[v for v in trainable if is_overwritten(v)],
            state=tracked + _untracked_state(model),
            tracked_state_count=len(tracked),
        )

    def trainable_values(self, parameter_values, overwritten_values):
        """Values in the order of `trainable`, from the two parts."""
        if not self.overwritten:
            return list(parameter_values)
        parameters, overwritten = iter(parameter_values), iter(overwritten_values)
        return [
            next(overwritten) if is_overwritten(v) else next(parameters)
            for v in self.trainable
        ]

    def split_trainable(self, values):
        """`(parameter part, overwritten part)` of values ordered as `trainable`."""
        if not self.overwritten:
            return list(values), []
        parameters = [x for v, x in zip(self.trainable, values) if not is_overwritten(v)]
        overwritten = [x for v, x in zip(self.trainable, values) if is_overwritten(v)]
        return parameters, overwritten


def parameter_variables(variables):
    """The variables of `variables` a method perturbs and steps: those not
    marked `overwrite_with_gradient`."""
    return [v for v in variables if not is_overwritten(v)]


def stateless_loss(model, variables, trainable_values, state_values, metrics_values,
                   x, y, sample_weight, training=True):
    """The compiled loss (+ `model.losses`) of `model` at `trainable_values`.

    `variables` is the model's `ModelVariables`, `state_values` the values of
    its `state`. No variable is changed: returns `(loss, (y_pred, new state
    values, new metric values))`, as the JAX trainer's
    `compute_loss_and_updates` with the untracked state added.
    """
    kwargs = {"training": training} if keras_private.call_has_training_arg(model) else {}
    mapping = list(zip(variables.trainable, trainable_values))
    mapping += list(zip(variables.state, state_values))
    # `stateless_call`, with the untracked state in the scope as well, and
    # without the losses' ids of the previous call.
    with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
        keras_private.clear_losses(model)
        y_pred = keras_private.stateless_call_function(model)(x, **kwargs)
        losses = model.losses
    new_state = [scope.get_current_value(v) for v in variables.state]
    tracked = variables.tracked_state_count
    # Activity regularizers etc., made visible to compute_loss.
    with keras_private.losses_override(model, losses):
        loss, (_, new_tracked, metrics_values) = model.stateless_compute_loss(
            list(trainable_values),
            new_state[:tracked],
            metrics_values,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
    return loss, (y_pred, list(new_tracked) + new_state[tracked:], metrics_values)
