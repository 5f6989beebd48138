"""Gradients of row look-ups (`Embedding`, `ops.take`) with repeated indices.

TensorFlow returns them as `IndexedSlices` with one row per looked-up index
(torch as a sparse tensor with `sparse=True`); the backend hands the methods
dense gradients in which repeated rows are summed. References: closed forms,
and the same model written as one-hot × Dense.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam
from keras_sam import backend, hessian, vectors
from tests.conftest import BACKEND

VOCABULARY, WIDTH, LENGTH = 12, 3, 6
# Row 1 three times, row 4 twice: a repeated row's gradient is the sum of its copies.
INDICES = np.array([1, 4, 1, 7, 4, 1])
COUNTS = np.bincount(INDICES, minlength=VOCABULARY)[:, None].astype("float64")


def _cube_sum(params, lookup=None):
    """f(W) = Σ_i Σ_j W[idx_i, j]³ / 3: ∇f = c ⊙ W², H·v = 2 c ⊙ W ⊙ v
    (c: how often each row is looked up)."""
    rows = ops.take(params[0], INDICES, axis=0) if lookup is None else lookup(params[0])
    return ops.sum(rows * rows * rows) / 3.0


def _torch_sparse_lookup(table):
    import torch

    return torch.nn.functional.embedding(torch.as_tensor(INDICES), table, sparse=True)


LOOKUPS = [None] + ([_torch_sparse_lookup] if BACKEND == "torch" else [])


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda f: "sparse" if f else "take")
def test_gradient_and_norm_sum_repeated_rows(lookup):
    table = np.random.default_rng(0).normal(size=(VOCABULARY, WIDTH))
    (loss, _), grads = backend.value_and_grad(lambda p: (_cube_sum(p, lookup), ()))(
        [ops.convert_to_tensor(table.astype("float32"))]
    )
    want = COUNTS * table**2
    np.testing.assert_allclose(ops.convert_to_numpy(grads[0]), want, rtol=1e-5, atol=1e-6)
    # Norm and inner product over the whole table (√Σ (c w²)², not √(c Σ w⁴)).
    np.testing.assert_allclose(float(vectors.norm(grads)), np.linalg.norm(want), rtol=1e-5)
    np.testing.assert_allclose(float(vectors.dot(grads, grads)), np.sum(want**2), rtol=1e-5)


@pytest.mark.parametrize("lookup", LOOKUPS, ids=lambda f: "sparse" if f else "take")
def test_hessian_vector_product_sums_repeated_rows(lookup):
    rng = np.random.default_rng(1)
    table, v = rng.normal(size=(2, VOCABULARY, WIDTH))
    grads, hv = backend.hvp(
        lambda p: _cube_sum(p, lookup),
        [ops.convert_to_tensor(table.astype("float32"))],
        [ops.convert_to_tensor(v.astype("float32"))],
    )
    np.testing.assert_allclose(ops.convert_to_numpy(grads[0]), COUNTS * table**2, rtol=1e-5, atol=1e-6)
    want = 2 * COUNTS * table * v
    np.testing.assert_allclose(ops.convert_to_numpy(hv[0]), want, rtol=1e-5, atol=1e-6)
    # As the methods read it (X-SAM's power iteration normalises H·v).
    np.testing.assert_allclose(float(vectors.norm(hv)), np.linalg.norm(want), rtol=1e-5)


# -- whole methods: Embedding against one-hot × Dense ---------------------------------
class OneHot(keras.layers.Layer):
    def call(self, ids):
        return ops.one_hot(ids, VOCABULARY)


def _pair(seed=0):
    """An Embedding model and the same function as one-hot × Dense, equal weights."""
    keras.utils.set_random_seed(seed)
    embedding = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        keras.layers.Embedding(VOCABULARY, WIDTH),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    one_hot = keras.Sequential([
        keras.Input((LENGTH,), dtype="int32"),
        OneHot(),
        keras.layers.Dense(WIDTH, use_bias=False),
        keras.layers.Flatten(),
        keras.layers.Dense(2),
    ])
    one_hot.set_weights(embedding.get_weights())
    return embedding, one_hot


def _data(n=24):
    rng = np.random.default_rng(2)
    # Few distinct ids: every batch repeats indices, within and across examples.
    x = rng.integers(0, 5, size=(n, LENGTH)).astype("int32")
    return x, (np.arange(n) % 2).astype("int32")


METHODS = {
    "SAM": lambda opt: keras_sam.SAM(opt, rho=0.5),
    "ASAM": lambda opt: keras_sam.ASAM(opt, rho=1.0),
    "XSAM": lambda opt: keras_sam.XSAM(opt, rho=0.5, rho_max=1.0, alpha_delta=0.5),
    "X-SAM": lambda opt: keras_sam.EigenCorrectedSAM(opt, rho=0.5, refresh_every=2, power_iterations=2),
    "GSAM": lambda opt: keras_sam.GSAM(opt, rho=0.5),
    "WSAM": lambda opt: keras_sam.WSAM(opt, rho=0.5),
}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_on_embedding_equals_one_hot_dense(method):
    x, y = _data()
    results = []
    pair = _pair()
    start = pair[0].get_weights()
    for net in pair:
        model = keras_sam.SAMModel(net)
        model.compile(
            optimizer=METHODS[method](keras.optimizers.SGD(0.5, momentum=0.9)),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
        results.append((model.get_weights(), history.history))
    (weights, logs), (want_weights, want_logs) = results
    assert np.abs(weights[0] - start[0]).max() > 1e-3  # the models do train
    for got, want in zip(weights, want_weights):
        np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    # The diagnostics (grad_cosine: inner products of the gradients) run and agree.
    assert "grad_cosine" in logs
    for name, values in want_logs.items():
        np.testing.assert_allclose(logs[name], values, atol=1e-5, rtol=1e-5, err_msg=name)


def test_hessian_toolkit_on_embedding_equals_one_hot_dense():
    x, y = _data()
    values = []
    for net in _pair():
        net.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        ones = [np.ones(w.shape, "float32") for w in net.get_weights()]
        hv = hessian.hessian_vector_product(net, x, y, ones)
        # Power iteration normalises H·v with the package's own norms.
        value, _ = hessian.top_eigenvalue(net, x, y, max_iterations=10, tol=0.0)
        values.append(([ops.convert_to_numpy(h) for h in hv], value))
    (hv, value), (want_hv, want_value) = values
    assert np.abs(want_hv[0]).max() > 1e-3
    for got, want in zip(hv, want_hv):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert abs(value - want_value) <= 1e-5 * abs(want_value)
