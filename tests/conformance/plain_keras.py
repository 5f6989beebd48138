"""The unwrapped model's own loss, gradient and Hessian-vector product, taken
with the backend's autodiff directly — nothing of keras_sam is used.

TensorFlow and torch: the weights are set by assignment, the model is called
(`model(x, training=...)`), the loss is the case's loss function plus
`model.losses`, differentiated with `tf.GradientTape` / `torch.autograd`.
JAX: the same call and loss inside a `keras.StatelessScope` that maps the
variables to the given values, differentiated with `jax.grad`.

Every pass of a step starts from the same non-trainable values (the step's
snapshot), so BatchNorm batch statistics are computed afresh and seeded
Dropout layers — whose generator state is a non-trainable variable — draw
the same mask in every pass; the caller keeps the clean pass's new values.
Hessian-vector products are reverse-over-reverse, in inference mode.
"""

import keras
import numpy as np
from keras import ops

BACKEND = keras.backend.backend()


def _numpy(values):
    return [np.asarray(ops.convert_to_numpy(v)) for v in values]


def _total_loss(loss_fn, y, y_pred, losses):
    loss = loss_fn(y, y_pred)
    for extra in losses:
        loss = loss + extra
    return loss


class PlainKeras:
    """Loss and derivatives of `case.model` on a mini-batch, at given values.

    All methods take `params` (trainable values) and `state` (non-trainable
    values), NumPy arrays in `model.trainable_variables` /
    `model.non_trainable_variables` order, and return NumPy arrays.
    """

    def __init__(self, case, compiled=False):
        self.model, self.loss_fn = case.model, case.loss_fn
        self.trainable = self.model.trainable_variables
        self.non_trainable = self.model.non_trainable_variables
        if BACKEND == "jax":
            self._jax_functions(compiled)

    def current(self):
        return _numpy(v.value for v in self.trainable), _numpy(v.value for v in self.non_trainable)

    def assign(self, params, state):
        for variable, value in zip(self.trainable, params):
            variable.assign(np.asarray(value, variable.dtype))
        for variable, value in zip(self.non_trainable, state):
            variable.assign(np.asarray(value, variable.dtype))

    def value_and_grad(self, params, state, x, y):
        """(loss, gradients, new non-trainable values), training mode."""
        if BACKEND == "jax":
            (loss, new_state), grads = self._jax_value_and_grad(
                self._cast(params), list(state), x, y
            )
            return float(loss), _numpy(grads), _numpy(new_state)
        self.assign(params, state)
        loss, grads = (_tf_value_and_grad if BACKEND == "tensorflow" else _torch_value_and_grad)(
            self.model, self.loss_fn, x, y
        )
        return float(ops.convert_to_numpy(loss)), _numpy(grads), _numpy(
            v.value for v in self.non_trainable
        )

    def loss(self, params, state, x, y):
        return self.value_and_grad(params, state, x, y)[0]

    def hvp(self, params, state, vectors, x, y):
        """H·v of the inference-mode loss at `params`."""
        vectors = self._cast(vectors)
        if BACKEND == "jax":
            return _numpy(self._jax_hvp(self._cast(params), list(state), vectors, x, y))
        self.assign(params, state)
        hvp = _tf_hvp if BACKEND == "tensorflow" else _torch_hvp
        return _numpy(hvp(self.model, self.loss_fn, vectors, x, y))

    def _cast(self, values):
        return [np.asarray(v, variable.dtype) for v, variable in zip(values, self.trainable)]

    def _jax_functions(self, compiled):
        """The loss's value_and_grad and HVP: op by op (cheaper than compiling
        for a few steps), or `compiled` with `jax.jit`, for a case whose
        passes are taken many times (test_methods_on_zoo.py keeps one per
        model for all its methods' references)."""
        import jax

        model, loss_fn = self.model, self.loss_fn

        variables = model.trainable_variables + model.non_trainable_variables

        def loss(params, state, x, y, training=True):
            # `model(...)`, not `model.stateless_call`: that runs `model.call`
            # without clearing the loss ids the layers kept from the previous
            # call (Keras 3.15), so a new `add_loss` tensor that reuses a dead
            # one's `id` is dropped from `model.losses`, now and then (the
            # reference that once moved). Entering the model clears them.
            mapping = list(zip(variables, [*params, *state]))
            with keras.StatelessScope(state_mapping=mapping, collect_losses=True) as scope:
                y_pred = model(x, training=training)
                losses = model.losses
            new_state = [scope.get_current_value(v) for v in model.non_trainable_variables]
            return _total_loss(loss_fn, y, y_pred, losses), new_state

        def hvp(params, state, vectors, x, y):
            def inference_grad(p):
                return jax.grad(lambda q: loss(q, state, x, y, training=False)[0])(p)

            def grad_dot_vectors(p):
                return sum(ops.sum(g * v) for g, v in zip(inference_grad(p), vectors))

            return jax.grad(grad_dot_vectors)(params)

        compile_ = jax.jit if compiled else (lambda function: function)
        self._jax_value_and_grad = compile_(jax.value_and_grad(loss, has_aux=True))
        self._jax_hvp = compile_(hvp)


# -- TensorFlow -------------------------------------------------------------------
def _tf_gradient(tape, loss, variables):
    import tensorflow as tf

    grads = tape.gradient(loss, variables, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    # An Embedding's IndexedSlices: the dense sum over repeated indices.
    return [tf.convert_to_tensor(g) for g in grads]


def _tf_value_and_grad(model, loss_fn, x, y):
    import tensorflow as tf

    with tf.GradientTape() as tape:
        loss = _total_loss(loss_fn, y, model(x, training=True), model.losses)
    return loss, _tf_gradient(tape, loss, model.trainable_variables)


def _tf_hvp(model, loss_fn, vectors, x, y):
    import tensorflow as tf

    variables = model.trainable_variables
    with tf.GradientTape() as outer:
        with tf.GradientTape() as inner:
            loss = _total_loss(loss_fn, y, model(x, training=False), model.losses)
        grads = _tf_gradient(inner, loss, variables)
        grad_dot_vectors = tf.add_n([tf.reduce_sum(g * v) for g, v in zip(grads, vectors)])
    return _tf_gradient(outer, grad_dot_vectors, variables)


# -- torch ------------------------------------------------------------------------
def _torch_grad(loss, leaves, create_graph=False):
    import torch

    grads = torch.autograd.grad(loss, leaves, allow_unused=True, create_graph=create_graph)
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, leaves)]


def _torch_value_and_grad(model, loss_fn, x, y):
    import torch

    leaves = [v.value for v in model.trainable_variables]
    with torch.enable_grad():
        loss = _total_loss(loss_fn, y, model(x, training=True), model.losses)
        return loss.detach(), [g.detach() for g in _torch_grad(loss, leaves)]


def _torch_hvp(model, loss_fn, vectors, x, y):
    import torch

    leaves = [v.value for v in model.trainable_variables]
    vectors = [torch.as_tensor(v, device=p.device) for v, p in zip(vectors, leaves)]
    # Only the math kernel of scaled_dot_product_attention has second derivatives.
    attention = torch.nn.attention.sdpa_kernel([torch.nn.attention.SDPBackend.MATH])
    with torch.enable_grad(), attention:
        loss = _total_loss(loss_fn, y, model(x, training=False), model.losses)
        grads = _torch_grad(loss, leaves, create_graph=True)
        grad_dot_vectors = sum((g * v).sum() for g, v in zip(grads, vectors))
        return [h.detach() for h in _torch_grad(grad_dot_vectors, leaves)]
