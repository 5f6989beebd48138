"""TensorFlow: a `GradientTape` that watches the given value tensors.

Gradients leave this module dense. `tf.gather` (Keras' `Embedding`, `ops.take`)
has `IndexedSlices` gradients, whose rows repeat where a batch repeats an
index; Keras' element-wise ops act on those rows one by one, so the global
norm and inner products of the methods would be wrong (‖2g‖ read as √2‖g‖).
Converting them here sums the repeated rows once, for every method,
diagnostic and Hessian-vector product; `benchmarks/sparse_gradients.py`
measures what it costs against a sparse path.
"""

import contextlib
import warnings

import tensorflow as tf
from keras import ops
from keras import tree

from keras_sam import keras_private


COMPILED_STEP_UNSUPPORTED = None  # jit_compile=True compiles the step (XLA).

def value_and_grad(fn):
    def wrapped(params):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(params)
            loss, aux = fn(params)
        grads = tape.gradient(
            loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return (loss, aux), _dense(grads)

    return wrapped


def _dense(grads):
    """`IndexedSlices` (repeated rows summed) as dense tensors; others as they are."""
    return [tf.convert_to_tensor(g) if isinstance(g, tf.IndexedSlices) else g for g in grads]


def _register_xla_slice_gradients():
    """Gradients of the two XLA slice ops, which TensorFlow does not register.

    Under XLA, TensorFlow differentiates `Slice` (and so `ConcatV2`, `Split`,
    `x[1:3]`) into `XlaDynamicUpdateSlice`. A forward-over-reverse
    Hessian-vector product differentiates that gradient again, and needs the
    gradients of `XlaDynamicUpdateSlice` and `XlaDynamicSlice`. Both ops are
    linear in their tensor operands: each one's gradient is the other one.
    Registered only where TensorFlow has none. The ops come from the module
    TensorFlow's own `Slice` gradient takes them from (not in `tf.raw_ops`),
    imported only when such a gradient is built.
    """

    def xla_ops():
        from tensorflow.compiler.tf2xla.ops import gen_xla_ops

        return gen_xla_ops.xla_dynamic_update_slice, gen_xla_ops.xla_dynamic_slice

    def update_grad(op, grad):
        update, dynamic_slice = xla_ops()
        _, patch, indices = op.inputs
        rest = update(grad, tf.zeros_like(patch), indices)
        return rest, dynamic_slice(grad, indices, tf.shape(patch, out_type=indices.dtype)), None

    def slice_grad(op, grad):
        update, _ = xla_ops()
        source, start, _ = op.inputs
        return update(tf.zeros_like(source), grad, start), None, None

    for name, gradient in (("XlaDynamicUpdateSlice", update_grad),
                           ("XlaDynamicSlice", slice_grad)):
        try:
            tf.RegisterGradient(name)(gradient)
        except KeyError:  # TensorFlow has its own
            pass


_register_xla_slice_gradients()


def _exact_moments(x, axes, keepdims):
    mean = tf.reduce_mean(x, axes, keepdims=True)
    variance = tf.reduce_mean(tf.math.squared_difference(x, mean), axes, keepdims=keepdims)
    return (mean if keepdims else tf.squeeze(mean, axes)), variance


@contextlib.contextmanager
def _second_order_moments():
    """Batch moments whose second derivatives are exact.

    Keras' TF `moments` is `tf.nn.moments`, which stops the gradient through
    the mean inside the variance: first derivatives stay exact (that gradient
    is zero), second derivatives do not (training-mode BatchNorm HVPs come out
    wrong). The same forward values, without the stop-gradient, while
    the function is run (or traced). Where this Keras has no such hook, the
    product runs with Keras' own moments, and a warning says so.
    """
    with keras_private.tensorflow_moments_replaced_by(_exact_moments) as replaced:
        if not replaced:
            warnings.warn(
                "keras_sam could not find Keras' TensorFlow `_compute_moments` "
                f"(in {' or '.join(keras_private.TENSORFLOW_MOMENTS_MODULES)}): "
                "Hessian-vector products run with `tf.nn.moments`, so those "
                "through `keras.ops.moments` (training-mode BatchNormalization, "
                "LayerNormalization, GroupNormalization) have inexact second "
                "derivatives; models without such layers are not affected.",
                RuntimeWarning,
                stacklevel=3,
            )
        yield


def hvp(fn, params, vectors):
    """Gradient of `fn` at `params` and the Hessian-vector product H·v.

    Forward-over-reverse: a `ForwardAccumulator` (tangents `vectors`) around
    the tape of the gradient. Unconnected gradients and tangents are zeros.
    """
    params = [tf.convert_to_tensor(p) for p in params]
    vectors = [tf.convert_to_tensor(v) for v in vectors]
    zero = tf.UnconnectedGradients.ZERO
    with _second_order_moments():
        with tf.autodiff.ForwardAccumulator(params, vectors) as accumulator:
            with tf.GradientTape(watch_accessed_variables=False) as tape:
                tape.watch(params)
                loss = fn(params)
            # Densified under the accumulator, so that the tangents flow
            # through the sum of repeated rows.
            grads = _dense(tape.gradient(loss, params, unconnected_gradients=zero))
        # The tangent of that sum is `IndexedSlices` again.
        hv = _dense([accumulator.jvp(g, unconnected_gradients=zero) for g in grads])
    return grads, hv


def forward(fn):
    return fn


def run_train_step(model, step_fn, args):
    (data,) = args
    return step_fn(data)


def replicas_in_sync():
    """Replicas running this `train_step` side by side (tf.distribute), else 1.

    Under `MirroredStrategy` the step runs once per replica on its share of
    the global batch; the losses Keras computes there are scaled by
    1/replicas and the optimizer sums the gradients it is given.
    """
    context = tf.distribute.get_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def data_parallel_size():
    """Replicas of the current `tf.distribute` strategy (1 without one)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def all_reduce_mean(values):
    """The mean over replicas of a nested structure of tensors."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return values
    return context.all_reduce(tf.distribute.ReduceOp.MEAN, values)


def direction_for_optimizer(direction):
    """The optimizer sums the replicas' gradients: hand it this replica's
    share of the mean direction."""
    replicas = replicas_in_sync()
    return [d * tf.cast(1.0 / replicas, d.dtype) for d in direction]


def check_train_setup(model):
    del model


def apply_if(pred, update_fn, args, variables):
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        # tf.cond runs the assignments of one branch only.
        ops.cond(pred, lambda: update_fn(*args), lambda: None)
        return
    # Under tf.distribute the optimizer's update synchronises the replicas,
    # which a replica's conditional does not allow; deciding in the
    # cross-replica context (as LossScaleOptimizer does) breaks the order of
    # collectives when the model has its own (synchronized BatchNorm). So
    # update, then keep old or new values (`pred` is the same on every
    # replica: the caller all-reduces it).
    old = [tf.identity(v.value) for v in variables]
    update_fn(*args)
    for variable, old_value in zip(variables, old):
        variable.assign(tf.where(pred, variable.value, old_value))


def collective_fori_loop(lower, upper, body, init):
    if replicas_in_sync() == 1:
        return ops.fori_loop(lower, upper, body, init)
    # A replica may not all-reduce inside a loop under tf.distribute: unroll.
    state = init
    for i in range(lower, upper):
        state = body(i, state)
    return state


def collective_cond(pred, true_fn, false_fn):
    if replicas_in_sync() == 1:
        return ops.cond(pred, true_fn, false_fn)
    # A replica may not synchronise (all-reduce, synchronized BatchNorm) inside
    # a conditional under tf.distribute: both branches run, one is kept.
    warnings.warn(
        "keras_sam: under tf.distribute a conditional step (GradientNormGate) "
        "runs both of its branches and keeps one: the result is the same, the "
        "cost is that of every step climbing.",
        stacklevel=2,
    )
    taken, other = true_fn(), false_fn()
    return tree.map_structure(lambda a, b: ops.where(pred, a, b), taken, other)


def compile_function(fn):
    # As Keras' own train step: the model's `call` runs as written, not
    # converted by AutoGraph.
    return tf.function(fn, autograph=False)


def fixed_randomness(seed):
    # Keras' seed state already fixes the draws of a stateless call.
    del seed
    return contextlib.nullcontext()
