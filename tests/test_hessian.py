"""keras_sam.hessian: eigenvalue, trace and angle against dense Hessians."""

import gc
import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_sam import backend, hessian
from tests import curvature_reference as ref
from tests.conftest import BACKEND


def flat(tensors):
    return np.concatenate([ops.convert_to_numpy(t).astype(np.float64).ravel() for t in tensors])


def dense_top(hess):
    values, vectors = np.linalg.eigh(hess)
    i = int(np.argmax(np.abs(values)))
    return values[i], vectors[:, i]


def angle(a, b):
    return math.degrees(math.acos(np.clip(a @ b / np.linalg.norm(a) / np.linalg.norm(b), -1, 1)))


# -- against closed forms -------------------------------------------------------------
def test_top_eigenvalue_matches_dense():
    model, x, y = ref.keras_mlp()
    _, _, hess = ref.mlp_reference(model, x, y)
    want_value, want_vector = dense_top(hess)
    value, vector = hessian.top_eigenvalue(model, x, y, max_iterations=1000, tol=1e-7)
    assert isinstance(value, float)
    assert [v.shape for v in vector] == [tuple(w.shape) for w in model.trainable_variables]
    assert all(isinstance(v, np.ndarray) for v in vector)
    assert abs(np.linalg.norm(flat(vector)) - 1) <= 1e-5
    assert abs(value - want_value) <= 1e-3 * abs(want_value)
    assert abs(flat(vector) @ want_vector) >= 0.999
    # PyHessian's defaults stop early but are close.
    value, _ = hessian.top_eigenvalue(model, x, y)
    assert abs(value - want_value) <= 2e-2 * abs(want_value)


def test_negative_dominant_eigenvalue_is_reported_signed():
    # −MSE of a linear model: H = −(2/N) AᵀA, every eigenvalue negative.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 4)).astype("float32") * [3.0, 1.0, 1.0, 0.5]
    y = rng.normal(size=(32, 1)).astype("float32")
    model = ref.keras_linear(x, sign=-1.0)
    want_value, want_vector = dense_top(ref.linear_mse(x, sign=-1.0))
    assert want_value < 0
    initial = ref.unflatten(rng.normal(size=5), model.get_weights())
    curvature = hessian.Curvature(model, x, y)
    value, vector = curvature.top_eigenvalue(tol=1e-7, max_iterations=500, initial_vector=initial)
    assert abs(value - want_value) <= 1e-4 * abs(want_value)
    assert abs(flat(vector) @ want_vector) >= 0.9999
    # It keeps the orientation of the start's component along the eigenvector.
    assert np.sign(flat(vector) @ want_vector) == np.sign(ref.flatten(initial) @ want_vector)
    # H·v is the product with the dense Hessian.
    hv = curvature.hvp(vector)
    np.testing.assert_allclose(flat(hv), value * flat(vector), rtol=1e-3, atol=1e-4)


def test_trace_within_standard_errors():
    model, x, y = ref.keras_mlp()
    _, _, hess = ref.mlp_reference(model, x, y)
    estimate, stderr = hessian.trace(model, x, y, samples=300, seed=3, return_stderr=True)
    assert stderr > 0
    assert abs(estimate - np.trace(hess)) <= 4 * stderr
    assert hessian.trace(model, x, y, samples=300, seed=3) == estimate  # seeded


def test_trace_is_exact_for_a_diagonal_hessian():
    # Orthogonal centred columns: AᵀA is diagonal, so zᵀHz = tr(H) for every
    # Rademacher z and the estimator has no variance.
    x = (ref.hadamard_columns(8, 3) * [2.0, 1.0, 0.5]).astype("float32")
    y = np.linspace(-1, 1, 8, dtype="float32")[:, None]
    hess = ref.linear_mse(x)
    assert np.count_nonzero(hess - np.diag(np.diag(hess))) == 0
    estimate, stderr = hessian.trace(ref.keras_linear(x), x, y, samples=5, return_stderr=True)
    assert abs(estimate - np.trace(hess)) <= 1e-5 * np.trace(hess)
    assert stderr <= 1e-5 * np.trace(hess)


def test_gradient_eigenvector_angle_matches_dense():
    model, x, y = ref.keras_mlp()
    _, grad, hess = ref.mlp_reference(model, x, y)
    _, u = dense_top(hess)
    u_list = ref.unflatten(u, model.get_weights())
    got = hessian.gradient_eigenvector_angle(model, x, y, eigenvector=u_list)
    assert abs(got - angle(grad, u)) <= 1e-3
    # Signed: the opposite orientation gives the supplementary angle.
    opposite = hessian.gradient_eigenvector_angle(model, x, y, eigenvector=[-a for a in u_list])
    assert abs(got + opposite - 180) <= 1e-3
    # Orientation-free: arccos |cos|, in [0°, 90°].
    absolute = hessian.gradient_eigenvector_angle(model, x, y, eigenvector=u_list, absolute=True)
    assert abs(absolute - min(got, 180 - got)) <= 1e-3
    # Without an eigenvector: the one `top_eigenvalue` returns with the same
    # settings (whose direction converges like the square root of the
    # eigenvalue: λ2/λ1 ≈ 0.9 here).
    _, vector = hessian.top_eigenvalue(model, x, y, tol=1e-7, max_iterations=1000, seed=4)
    default = hessian.gradient_eigenvector_angle(model, x, y, tol=1e-7, max_iterations=1000, seed=4)
    assert abs(default - angle(grad, flat(vector))) <= 1e-3
    assert abs(min(default, 180 - default) - min(got, 180 - got)) <= 0.5


# -- the loss: data formats, regularizers --------------------------------------------
def test_data_formats_agree():
    """Arrays, a tuple, batches, an iterable: weighted mean over batches."""
    model, x, y = ref.keras_mlp()
    v = ref.unflatten(np.random.default_rng(0).normal(size=31), model.get_weights())
    want = flat(hessian.hessian_vector_product(model, x, y, v))
    batches = [(x[:10], y[:10]), (x[10:], y[10:])]  # unequal sizes
    forms = {
        "tuple": dict(x=(x, y)),
        "batch_size": dict(x=x, y=y, batch_size=5),
        "list": dict(x=batches),
        "generator": dict(x=iter(batches)),
        "sample_weight": dict(x=(x, y, np.ones(16, "float32"))),
    }
    try:
        import tensorflow as tf

        forms["tf.data"] = dict(x=tf.data.Dataset.from_tensor_slices((x, y)).batch(6))
    except ImportError:  # pragma: no cover
        pass
    for name, data in forms.items():
        got = flat(hessian.hessian_vector_product(model, vectors=v, **data))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6, err_msg=name)


def test_regularization_losses_are_included():
    # An L2 kernel regularizer adds 2·l2·I on the kernel block.
    l2 = 0.3
    model, x, y = ref.keras_mlp()
    regularized = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(6, activation="tanh", kernel_regularizer=keras.regularizers.L2(l2)),
        keras.layers.Dense(1),
    ])
    regularized.compile(loss="mse")
    regularized.set_weights(model.get_weights())
    v = ref.unflatten(np.random.default_rng(0).normal(size=31), model.get_weights())
    plain = hessian.hessian_vector_product(model, x, y, v)
    extra = [a - b for a, b in zip(flat(hessian.hessian_vector_product(regularized, x, y, v)),
                                   flat(plain))]
    want = np.concatenate([2 * l2 * v[0].ravel(), np.zeros(31 - v[0].size)])
    np.testing.assert_allclose(extra, want, atol=2e-5)


def test_curvature_is_a_snapshot():
    """Later changes of the weights or statistics (torch assigns in place) do
    not change a `Curvature`."""
    model, x, y = bn_dropout_model()
    curvature = hessian.Curvature(model, x, y)
    v = model.get_weights()[:4] + model.get_weights()[6:]  # the trainable ones
    before = flat(curvature.hvp(v))
    for variable in model.variables:
        if "float" in variable.dtype:  # not the dropout seed state
            variable.assign(variable.value * 1.5 + 0.1)
    np.testing.assert_array_equal(flat(curvature.hvp(v)), before)
    assert np.abs(flat(hessian.Curvature(model, x, y).hvp(v)) - before).max() > 1e-3


def test_uncompiled_model_is_an_error():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    with pytest.raises(ValueError, match="compile"):
        hessian.top_eigenvalue(model, np.zeros((4, 3)), np.zeros((4, 1)))


# -- modes: BatchNorm and dropout -----------------------------------------------------
def bn_dropout_model(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(32, 4)).astype("float32")
    y = rng.integers(0, 3, size=32)
    model = keras.Sequential([
        keras.Input((4,)),
        keras.layers.Dense(6),
        keras.layers.BatchNormalization(),
        keras.layers.Activation("tanh"),
        keras.layers.Dropout(0.3),
        keras.layers.Dense(3),
    ])
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    bn = model.layers[1]
    bn.moving_mean.assign(rng.normal(size=6).astype("float32"))
    bn.moving_variance.assign(rng.uniform(0.5, 2.0, size=6).astype("float32"))
    return model, x, y


def finite_difference_hessian(model, x, y, training, eps=2e-2):
    """Dense Hessian from Richardson-extrapolated central differences of the
    backend gradient (float32), independent of `backend.hvp`."""
    loss_fn = hessian.make_loss_fn(model, x, y, training=training)
    gradient = backend.value_and_grad(lambda p: (loss_fn(p), ()))
    params = [ops.convert_to_numpy(v.value).astype(np.float64) for v in model.trainable_variables]
    theta = ref.flatten(params)

    def grad_at(t):
        values = [ops.convert_to_tensor(a.astype("float32")) for a in ref.unflatten(t, params)]
        return flat(gradient(values)[1])

    columns = []
    for i in range(len(theta)):
        e = np.zeros(len(theta))
        e[i] = 1.0

        def difference(h):
            return (grad_at(theta + h * e) - grad_at(theta - h * e)) / (2 * h)

        columns.append((4 * difference(eps / 2) - difference(eps)) / 3)
    hess = np.stack(columns, axis=1)
    return 0.5 * (hess + hess.T)


def test_batchnorm_model_in_inference_mode_matches_dense():
    model, x, y = bn_dropout_model()
    hess = finite_difference_hessian(model, x, y, training=False)
    want_value, want_vector = dense_top(hess)
    value, vector = hessian.top_eigenvalue(model, x, y, tol=1e-7, max_iterations=1000)
    assert abs(value - want_value) <= 1e-3 * abs(want_value)
    assert abs(flat(vector) @ want_vector) >= 0.999
    estimate, stderr = hessian.trace(model, x, y, samples=200, return_stderr=True)
    assert abs(estimate - np.trace(hess)) <= 4 * stderr


def test_training_and_inference_modes_differ_and_leave_the_state():
    model, x, y = bn_dropout_model()
    state = [ops.convert_to_numpy(v.value).copy() for v in model.non_trainable_variables]
    shapes = [np.zeros(tuple(w.shape)) for w in model.trainable_variables]
    v = ref.unflatten(np.random.default_rng(1).normal(size=63), shapes)
    inference = hessian.Curvature(model, x, y)
    training = hessian.Curvature(model, x, y, training=True)
    hv_inference, hv_training = flat(inference.hvp(v)), flat(training.hvp(v))
    assert np.linalg.norm(hv_training - hv_inference) > 0.05 * np.linalg.norm(hv_inference)
    # One fixed dropout mask: the training-mode operator is deterministic.
    np.testing.assert_array_equal(flat(training.hvp(v)), hv_training)
    lam_train, _ = training.top_eigenvalue()
    lam_inference, _ = inference.top_eigenvalue()
    assert lam_train != pytest.approx(lam_inference, rel=1e-2)
    # Neither mode changes BatchNorm statistics or seed states.
    for variable, before in zip(model.non_trainable_variables, state):
        np.testing.assert_array_equal(ops.convert_to_numpy(variable.value), before)


# -- compiled once ---------------------------------------------------------------------
def test_products_are_traced_once():
    # JAX's jit cache is a global LRU shared with every jitted function still
    # awaiting garbage collection (the suite collects every few tests): free
    # them first, so that an eviction is not counted as a second trace.
    gc.collect()
    model, x, y = ref.keras_mlp()
    for seed in range(3):  # three snapshots, many products
        curvature = hessian.Curvature(model, x, y)
        curvature.top_eigenvalue(max_iterations=5, seed=seed)
        curvature.trace(samples=3)
    fn = model.__dict__["_keras_sam_curvature_fns"]["fns"][("hvp", False, None)]
    if BACKEND == "jax":
        assert fn._cache_size() == 1
    elif BACKEND == "tensorflow":
        assert fn.experimental_get_tracing_count() == 1
    # Compiling again (a new loss) drops the cache.
    model.compile(loss="mae")
    hessian.Curvature(model, x, y).hvp(model.get_weights())
    assert model.__dict__["_keras_sam_curvature_fns"]["fns"][("hvp", False, None)] is not fn
