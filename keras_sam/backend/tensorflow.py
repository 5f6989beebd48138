"""TensorFlow: a `GradientTape` that watches the given value tensors."""

import tensorflow as tf
from keras import ops


def value_and_grad(fn):
    def wrapped(params):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            loss, aux = fn(params)
        grads = tape.gradient(
            loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return (loss, aux), grads

    return wrapped


def forward(fn):
    return fn


def run_train_step(model, step_fn, args):
    (data,) = args
    return step_fn(data)


def apply_if(pred, update_fn, variables):
    del variables  # tf.cond runs the assignments of one branch only.
    ops.cond(pred, update_fn, lambda: None)
