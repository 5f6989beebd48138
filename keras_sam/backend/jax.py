"""JAX: `jax.value_and_grad`, forward-over-reverse HVPs, and a stateless
wrapper around the step."""

import contextlib

import jax
import keras
from keras import ops


COMPILED_STEP_UNSUPPORTED = None  # jit_compile=True compiles the step (XLA).

def value_and_grad(fn):
    return jax.value_and_grad(fn, has_aux=True)


def hvp(fn, params, vectors):
    """Gradient of `fn` at `params` and the Hessian-vector product H·v.

    Forward-over-reverse: the JVP of the gradient.
    """
    grads, hv = jax.jvp(jax.grad(fn), (list(params),), (list(vectors),))
    return grads, hv


def forward(fn):
    return fn


def run_train_step(model, step_fn, args):
    """Runs the stateful `step_fn(data)` as the JAX trainer's pure step.

    The JAX trainer calls `train_step(state, data)` and expects
    `(logs, new_state)`. Inside a `StatelessScope` that maps every variable to
    its value in `state`, `step_fn` reads and assigns variables as on the other
    backends; the assigned values are gathered back into the new state.
    """
    state, data = args
    groups = (
        model.trainable_variables,
        model.non_trainable_variables,
        model.optimizer.variables,
        model.metrics_variables,
    )
    mapping = [
        (variable, value)
        for variables, values in zip(groups, state)
        for variable, value in zip(variables, values)
    ]
    with keras.StatelessScope(state_mapping=mapping) as scope:
        logs = step_fn(data)
    new_state = tuple(
        [scope.get_current_value(v) for v in variables] for variables in groups
    )
    return logs, new_state


def replicas_in_sync():
    # Under `keras.distribution` the step is one program on global (sharded)
    # arrays: every reduction is already global.
    return 1


def data_parallel_size():
    """Devices the batch is sharded over by `keras.distribution`, else 1."""
    distribution = keras.distribution.distribution()
    if distribution is None:
        return 1
    mesh = distribution.device_mesh
    return int(mesh.shape[list(mesh.axis_names).index(distribution.batch_dim_name)])


def all_reduce_mean(values):
    return values


def direction_for_optimizer(direction):
    return direction  # one program: the direction is the global batch's


def check_train_setup(model):
    del model


def apply_if(pred, update_fn, args, variables):
    # Assignments inside a `lax.cond` branch would leak tracers out of the
    # stateless scope, so run the update and select old or new values after
    # (XLA turns this into an elementwise select on buffers it holds anyway).
    old = [v.value for v in variables]
    update_fn(*args)
    for variable, old_value in zip(variables, old):
        variable.assign(ops.where(pred, variable.value, old_value))


def collective_fori_loop(lower, upper, body, init):
    # One program on global arrays: reductions inside a loop are fine.
    return ops.fori_loop(lower, upper, body, init)


def collective_cond(pred, true_fn, false_fn):
    # One program on global arrays: the branch taken is the same everywhere.
    return ops.cond(pred, true_fn, false_fn)


def compile_function(fn):
    return jax.jit(fn)


def fixed_randomness(seed):
    # Keras' seed state already fixes the draws of a stateless call.
    del seed
    return contextlib.nullcontext()
