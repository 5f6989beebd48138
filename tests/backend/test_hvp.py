"""`backend.hvp`: gradient and Hessian-vector product against closed forms."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_sam import backend, hessian
from tests import curvature_reference as ref
from tests.conftest import BACKEND


def flat(tensors):
    return np.concatenate([ops.convert_to_numpy(t).astype(np.float64).ravel() for t in tensors])


def tensors(arrays, dtype="float32"):
    return [ops.convert_to_tensor(np.asarray(a, dtype=dtype)) for a in arrays]


def relative_error(got, want):
    return np.linalg.norm(got - want) / np.linalg.norm(want)


def test_closed_form_reference_matches_finite_differences():
    model, x, y = ref.keras_mlp()
    weights = model.get_weights()
    _, _, hess = ref.mlp_reference(model, x, y)

    def loss_and_grad(theta):
        loss, grad, _ = ref.mlp_mse(x, y, *ref.unflatten(theta, weights))
        return loss, grad

    fd = ref.finite_difference_hessian(loss_and_grad, ref.flatten(weights))
    assert np.abs(fd - hess).max() <= 1e-8 * np.abs(hess).max()


def test_hvp_of_a_function_of_tensors():
    # f(a, b) = Σ a² b + Σ exp(a): ∂²f/∂a² = diag(2b + exp(a)), ∂²f/∂a∂b = diag(2a).
    rng = np.random.default_rng(0)
    a, b, va, vb = (rng.normal(size=(3, 2)) for _ in range(4))

    def fn(params):
        pa, pb = params
        return ops.sum(pa * pa * pb) + ops.sum(ops.exp(pa))

    grads, hv = backend.hvp(fn, tensors([a, b]), tensors([va, vb]))
    np.testing.assert_allclose(flat(grads), flat([2 * a * b + np.exp(a), a * a]), rtol=1e-6)
    want = [(2 * b + np.exp(a)) * va + 2 * a * vb, 2 * a * va]
    assert relative_error(flat(hv), flat(want)) <= 1e-6


def test_hvp_matches_dense_hessian_of_an_mlp():
    """A float32 tanh MLP (31 parameters) against the float64 closed form."""
    model, x, y = ref.keras_mlp()
    _, grad, hess = ref.mlp_reference(model, x, y)
    loss_fn = hessian.make_loss_fn(model, x, y)
    params = [ops.convert_to_tensor(v.value) for v in model.trainable_variables]
    rng = np.random.default_rng(1)
    for _ in range(3):
        v = rng.normal(size=len(grad))
        grads, hv = backend.hvp(loss_fn, params, tensors(ref.unflatten(v, params)))
        assert relative_error(flat(grads), grad) <= 1e-5
        assert relative_error(flat(hv), hess @ v) <= 1e-5
        assert [tuple(ops.shape(t)) for t in hv] == [tuple(ops.shape(p)) for p in params]


@pytest.mark.skipif(BACKEND != "torch", reason="torch's two implementations")
def test_torch_forward_over_reverse_agrees():
    """torch: eager HVPs use double backward; under `torch.compile`, `torch.func`."""
    import torch

    from keras_sam.backend import torch as torch_backend

    model, x, y = ref.keras_mlp()
    _, grad, hess = ref.mlp_reference(model, x, y)
    loss_fn = hessian.make_loss_fn(model, x, y)
    params = [ops.convert_to_tensor(v.value).detach() for v in model.trainable_variables]
    v = np.random.default_rng(3).normal(size=len(grad))
    with torch.no_grad():
        grads, hv = torch_backend._forward_over_reverse(
            loss_fn, params, tensors(ref.unflatten(v, params))
        )
    assert relative_error(flat(grads), grad) <= 1e-5
    assert relative_error(flat(hv), hess @ v) <= 1e-5


def test_unconnected_parameters_get_zeros():
    def fn(params):
        return ops.sum(ops.square(params[0]))

    def linear(params):  # a constant gradient: no second-order graph at all
        return 2.0 * ops.sum(params[0]) + ops.sum(params[1])

    params = tensors([np.ones(3), np.ones((2, 2))])
    v = tensors([np.arange(3.0), np.ones((2, 2))])
    grads, hv = backend.hvp(fn, params, v)
    np.testing.assert_allclose(flat(grads), [2, 2, 2, 0, 0, 0, 0])
    np.testing.assert_allclose(flat(hv), [0, 2, 4, 0, 0, 0, 0])
    grads, hv = backend.hvp(linear, params, v)
    np.testing.assert_allclose(flat(grads), [2, 2, 2, 1, 1, 1, 1])
    np.testing.assert_allclose(flat(hv), np.zeros(7))


def test_hvp_inside_compiled_functions_and_no_grad():
    """As the training step calls it: under `jax.jit`, in a `tf.function`,
    under torch's `no_grad`."""
    model, x, y = ref.keras_mlp()
    loss_fn = hessian.make_loss_fn(model, x, y)
    params = [ops.convert_to_tensor(v.value) for v in model.trainable_variables]
    v = tensors(ref.unflatten(np.random.default_rng(2).normal(size=31), params))
    eager = backend.hvp(loss_fn, params, v)
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(lambda p, w: backend.hvp(loss_fn, p, w))(params, v)
    elif BACKEND == "tensorflow":
        import tensorflow as tf

        compiled = tf.function(lambda p, w: backend.hvp(loss_fn, p, w))(params, v)
    else:
        import torch

        with torch.no_grad():
            compiled = backend.hvp(loss_fn, params, v)
        assert not any(t.requires_grad for t in compiled[0] + compiled[1])
    for got, want in zip(compiled, eager):
        np.testing.assert_allclose(flat(got), flat(want), rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow's XLA gradients")
def test_hvp_through_slices_and_concatenation_under_xla():
    """Under XLA, TensorFlow's gradient of a slice (and of a concatenation, made
    of slices) is an `XlaDynamicUpdateSlice`, which TensorFlow gives no gradient
    of its own: a forward-over-reverse product through it needs one."""
    import tensorflow as tf

    rng = np.random.default_rng(3)
    a, b, va, vb = (rng.normal(size=(4, 3)) for _ in range(4))

    def fn(params):
        pa, pb = params
        joined = ops.concatenate([ops.tanh(pa), pb * pb], axis=1)  # (4, 6)
        return ops.sum(joined[:, 1:5] ** 3) + ops.sum(ops.exp(pa[1:3]))

    params, v = tensors([a, b]), tensors([va, vb])
    eager = backend.hvp(fn, params, v)
    xla = tf.function(lambda p, w: backend.hvp(fn, p, w), jit_compile=True)(params, v)
    for got, want in zip(xla, eager):
        np.testing.assert_allclose(flat(got), flat(want), rtol=1e-5, atol=1e-6)
    # The eager product against the closed form of this function.
    t = np.tanh(a)
    dt, ddt = 1 - t * t, -2 * t * (1 - t * t)
    mask_a = np.zeros((4, 3)); mask_a[:, 1:] = 1  # tanh(a)[:, 1:3] enters the cube sum
    mask_b = np.zeros((4, 3)); mask_b[:, :2] = 1  # (b²)[:, 0:2] enters it too
    rows = np.zeros((4, 3)); rows[1:3] = 1  # exp(a[1:3])
    ha = mask_a * (6 * t * dt * dt + 3 * t * t * ddt) * va + rows * np.exp(a) * va
    hb = mask_b * (30 * b ** 4) * vb
    np.testing.assert_allclose(flat(eager[1]), np.concatenate([ha.ravel(), hb.ravel()]),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_second_derivatives(training):
    """H·v against finite differences of the (exact) gradient, in both modes.

    Training mode is the TF case: Keras' `tf.nn.moments` stops the gradient
    through the mean in the variance, which leaves the gradient exact but
    puts HVPs 5 % off on this model; `backend.hvp` fixes it (≤ 3e-4 here).
    Central differences with Richardson extrapolation (error O(ε⁴)), float32.
    """
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(6),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("tanh"),
        keras.layers.Dense(3),
    ])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bn = model.layers[1]
    bn.moving_mean.assign(rng.normal(size=6).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype("float32"))
    loss_fn = hessian.make_loss_fn(model, x, y, training=training)
    gradient = backend.value_and_grad(lambda p: (loss_fn(p), ()))
    params = [ops.convert_to_numpy(v.value).astype(np.float64) for v in model.trainable_variables]
    v = [rng.normal(size=p.shape) for p in params]
    _, hv = backend.hvp(loss_fn, tensors(params), tensors(v))

    def difference(eps):
        def grad_at(step):
            return flat(gradient(tensors([p + step * w for p, w in zip(params, v)]))[1])

        return (grad_at(eps) - grad_at(-eps)) / (2 * eps)

    eps = 2e-2
    extrapolated = (4 * difference(eps / 2) - difference(eps)) / 3
    assert relative_error(flat(hv), extrapolated) <= 1e-3


def test_hvp_through_multi_head_attention():
    """Keras' MultiHeadAttention: torch's default (fused) attention kernels
    have no second derivative. H·v agrees with central differences of the
    gradient along v."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((4, 6))
    h = keras.layers.MultiHeadAttention(num_heads=2, key_dim=3)(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(keras.layers.Flatten()(h)))
    model.compile(loss="mse")
    x = rng.normal(size=(3, 4, 6)).astype("float32")
    y = rng.normal(size=(3, 1)).astype("float32")
    loss_fn = hessian.make_loss_fn(model, x, y)
    params = [ops.convert_to_numpy(v.value) for v in model.trainable_variables]
    v = [rng.normal(size=p.shape) for p in params]
    v = [d / np.linalg.norm(flat(v)) for d in v]
    _, hv = backend.hvp(loss_fn, tensors(params), tensors(v))
    step = 1e-2

    def grad_at(sign):
        point = [p + sign * step * d for p, d in zip(params, v)]
        return flat(backend.hvp(loss_fn, tensors(point), tensors(v))[0])

    finite_difference = (grad_at(1.0) - grad_at(-1.0)) / (2 * step)
    assert relative_error(flat(hv), finite_difference) <= 1e-2
