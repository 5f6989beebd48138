"""X-SAM's dominant-eigenvector correction against NumPy, on every method."""

import keras
import numpy as np
import pytest
from keras import ops

import keras_sam
from tests import reference
from tests.conftest import batches, jit_modes, weights_close
from tests.helpers import fit_dense, regression_data, sgd


def to_tensors(arrays):
    return [ops.convert_to_tensor(np.asarray(a, "float32")) for a in arrays]


def to_numpy(tensors):
    return [ops.convert_to_numpy(t) for t in tensors]


@pytest.mark.parametrize("rule", ["signed", "symmetric"])
@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["aligned", "opposed"])
def test_correction_matches_numpy_with_a_known_v(rule, sign):
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    v = [rng.normal(size=(3, 2)), rng.normal(size=(2,))]
    v = [sign * np.sign(reference.dot(g, v)) * x / reference.norm(v) for x in v]
    assert np.sign(reference.dot(g, v)) == sign  # covers ⟨g, v⟩ < 0
    correction = keras_sam.EigenCorrection(alpha=0.3, rule=rule)
    d, angle = correction.correct(to_tensors(g), to_tensors(v), ops.convert_to_tensor(True))
    weights_close(to_numpy(d), reference.eigen_corrected(g, v, 0.3, rule), atol=1e-6)
    cos = reference.dot(g, v) / reference.norm(g)
    np.testing.assert_allclose(ops.convert_to_numpy(angle), np.degrees(np.arccos(cos)), atol=1e-3)
    # The signed rule depends on v's orientation, the symmetric one does not.
    d_flipped, _ = correction.correct(to_tensors(g), to_tensors([-x for x in v]), ops.convert_to_tensor(True))
    difference = max(np.abs(a - b).max() for a, b in zip(to_numpy(d), to_numpy(d_flipped)))
    assert (difference > 1e-3) if rule == "signed" else (difference < 1e-6)


def test_before_the_first_refresh_d_is_the_perturbed_gradient():
    g = [np.array([[3.0, 4.0]]), np.array([1.0])]
    v = [np.array([[1.0, 0.0]]), np.array([0.0])]
    d, _ = keras_sam.EigenCorrection().correct(to_tensors(g), to_tensors(v), ops.convert_to_tensor(False))
    weights_close(to_numpy(d), g, atol=0)


def reference_xsam(x, targets, weights, epochs, batch_size, rho, alpha, every, iterations, rule,
                   warmups=(), refresh_examples=None):
    """`warmups`: {index of a refresh: its iterations}, instead of `iterations`."""
    warmups = dict(warmups)
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    v = reference.gaussian_unit_vector([w.shape for w in weights], seed=0)
    refreshed, refreshes = False, 0
    for _ in range(epochs):
        for j, (xb, yb) in enumerate(batches(x.astype("float64"), targets.astype("float64"), batch_size)):
            problem = reference.linear_regression(xb, yb)
            if j % every == 0 and j > 0:
                n = warmups.get(refreshes, iterations)
                hessian_times = reference.linear_regression_hessian_times(xb[:refresh_examples])
                v, _ = reference.power_iteration(hessian_times, v, n)
                refreshed, refreshes = True, refreshes + 1
            g1 = reference.sam_direction(problem, params, rho=rho)
            d = reference.eigen_corrected(g1, v, alpha, rule) if refreshed else g1
            params = optimizer.step(params, d)
    return params, refreshes


@pytest.mark.parametrize("jit_compile", jit_modes())
@pytest.mark.parametrize("rule", ["signed", "symmetric"])
def test_eigen_corrected_sam_matches_numpy(rule, jit_compile):
    x, targets, weights = regression_data()  # 4 batches of 10 an epoch
    model, history = fit_dense(
        keras_sam.EigenCorrectedSAM(sgd(), rho=0.2, alpha=0.5, refresh_every=2,
                                    power_iterations=3, rule=rule),
        x, targets, weights, "mse", 1, 10, epochs=2, jit_compile=jit_compile,
    )
    want, refreshes = reference_xsam(x, targets, weights, 2, 10, rho=0.2, alpha=0.5, every=2,
                                     iterations=3, rule=rule)
    weights_close(model.get_weights(), want, atol=1e-5)
    # Refreshed exactly at steps 2 of each epoch (j % 2 == 0, j > 0): twice.
    assert refreshes == 2
    assert int(model.optimizer.eigen_correction.refreshes.numpy()) == 2


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_amortized_warms_up_on_the_first_refresh_only(jit_compile):
    x, targets, weights = regression_data(n=60)  # 6 steps an epoch: refreshes at j = 2, 4
    correction = keras_sam.EigenCorrection.amortized(alpha=0.5, every=2, warmup_iterations=8)
    model, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.2, eigen_correction=correction),
                         x, targets, weights, "mse", 1, 10, epochs=2, jit_compile=jit_compile)
    kwargs = dict(rho=0.2, alpha=0.5, every=2, iterations=1, rule="signed")
    want, refreshes = reference_xsam(x, targets, weights, 2, 10, warmups={0: 8}, **kwargs)
    weights_close(model.get_weights(), want, atol=1e-5)
    assert refreshes == 4 and int(model.optimizer.eigen_correction.refreshes.numpy()) == 4
    # The warm-up changes the run: without it (or repeated) the weights differ.
    for other in ({}, {0: 8, 1: 8}):
        unwanted, _ = reference_xsam(x, targets, weights, 2, 10, warmups=other, **kwargs)
        assert max(np.abs(a - b).max() for a, b in zip(want, unwanted)) > 1e-3


@pytest.mark.parametrize("jit_compile", jit_modes())
def test_refresh_on_the_first_examples_of_the_batch(jit_compile):
    x, targets, weights = regression_data(n=60)
    correction = keras_sam.EigenCorrection(alpha=0.5, every=2, power_iterations=2,
                                           refresh_batch_size=4)
    model, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.2, eigen_correction=correction),
                         x, targets, weights, "mse", 1, 10, epochs=2, jit_compile=jit_compile)
    kwargs = dict(rho=0.2, alpha=0.5, every=2, iterations=2, rule="signed")
    want, _ = reference_xsam(x, targets, weights, 2, 10, refresh_examples=4, **kwargs)
    weights_close(model.get_weights(), want, atol=1e-5)
    whole_batch, _ = reference_xsam(x, targets, weights, 2, 10, **kwargs)
    assert max(np.abs(a - b).max() for a, b in zip(want, whole_batch)) > 1e-3
    config = model.optimizer.get_config()["eigen_correction"]
    assert config["refresh_batch_size"] == 4


def test_warm_up_is_not_repeated_after_save_and_load(tmp_path):
    x, targets, weights = regression_data(n=60)
    correction = keras_sam.EigenCorrection.amortized(alpha=0.5, every=2, warmup_iterations=8)
    model, _ = fit_dense(keras_sam.SAM(sgd(), rho=0.2, eigen_correction=correction),
                         x, targets, weights, "mse", 1, 10, epochs=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.optimizer.eigen_correction.warmup_iterations == 8
    loaded.fit(x, targets, batch_size=10, epochs=1, shuffle=False, verbose=0)
    # A fresh process reads the refresh count from the optimizer's variables.
    want, _ = reference_xsam(x, targets, weights, 2, 10, rho=0.2, alpha=0.5, every=2,
                             iterations=1, rule="signed", warmups={0: 8})
    weights_close(loaded.get_weights(), want, atol=1e-5)


def test_refresh_happens_exactly_every_p_steps():
    x, targets, weights = regression_data(n=70)  # 7 steps an epoch of batch 10
    model, _ = fit_dense(keras_sam.EigenCorrectedSAM(sgd(), refresh_every=3, power_iterations=1),
                         x, targets, weights, "mse", 1, 10, epochs=3)
    assert int(model.optimizer.eigen_correction.refreshes.numpy()) == 3 * 2  # j = 3, 6


def test_alpha_zero_is_normalised_sam():
    x, targets, weights = regression_data()
    model, _ = fit_dense(keras_sam.EigenCorrectedSAM(sgd(), rho=0.2, alpha=0.0, refresh_every=1,
                                                     power_iterations=1),
                         x, targets, weights, "mse", 1, 10, epochs=1)
    params = [w.astype("float64") for w in weights]
    optimizer = reference.SGDMomentum(0.1, 0.9)
    for j, (xb, yb) in enumerate(batches(x.astype("float64"), targets.astype("float64"), 10)):
        g1 = reference.sam_direction(reference.linear_regression(xb, yb), params, rho=0.2)
        # Step 0 of an epoch is never a refresh: d = g_1 there, ĝ_1 after.
        d = g1 if j == 0 else [g / reference.norm(g1) for g in g1]
        params = optimizer.step(params, d)
    weights_close(model.get_weights(), params, atol=1e-5)


def test_eigenvalue_estimate_converges_to_the_dense_top_eigenvalue():
    x, targets, weights = regression_data()
    model, history = fit_dense(
        keras_sam.EigenCorrectedSAM(keras.optimizers.SGD(1e-4), refresh_every=1, power_iterations=20),
        x[:20], targets[:20], weights, "mse", 1, 10, epochs=3,
    )
    # Refreshed on the second batch of each epoch (never on an epoch's first).
    x1 = np.hstack([x[10:20], np.ones((10, 1))]).astype("float64")
    dense = 2 * x1.T @ x1 / 10
    np.testing.assert_allclose(float(model.optimizer.eigen_correction.eigenvalue.numpy()),
                               np.linalg.eigvalsh(dense)[-1], rtol=1e-3)
    assert np.isfinite(history.history["eigen_angle"]).all()


def test_composes_with_xsam_asam_and_multistep():
    x, targets, weights = regression_data()
    optimizer = keras_sam.XSAM(sgd(), rho=0.2, steps=2, adaptive=True, alpha_delta=0.5,
                               eigen_correction=keras_sam.EigenCorrection.amortized(every=2))
    model, history = fit_dense(optimizer, x, targets, weights, "mse", 1, 10, epochs=2)
    assert int(optimizer.searches.numpy()) == 2
    assert int(optimizer.eigen_correction.refreshes.numpy()) == 2
    assert {"alpha", "psi", "eigen_angle", "eigenvalue"} <= set(history.history)
    assert all(np.isfinite(w).all() for w in model.get_weights())


def test_eigenvector_survives_save_and_load(tmp_path):
    x, targets, weights = regression_data()
    model, _ = fit_dense(keras_sam.EigenCorrectedSAM(sgd(), refresh_every=2, rule="symmetric"),
                         x, targets, weights, "mse", 1, 10, epochs=1)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, keras_sam.EigenCorrectedSAM)
    correction = loaded.optimizer.eigen_correction
    assert (correction.rule, correction.every) == ("symmetric", 2)
    for a, b in zip(correction.eigenvector, model.optimizer.eigen_correction.eigenvector):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_each_optimizer_owns_its_eigenvector():
    shared = keras_sam.EigenCorrection()
    a = keras_sam.SAM(sgd(), eigen_correction=shared)
    b = keras_sam.SAM(sgd(), eigen_correction=shared)
    assert a.eigen_correction is not b.eigen_correction


@pytest.mark.parametrize("kwargs, argument", [
    ({"alpha": float("nan")}, "alpha"), ({"every": 0}, "every"),
    ({"power_iterations": 0}, "power_iterations"), ({"warmup_iterations": 0}, "warmup_iterations"),
    ({"refresh_batch_size": 0}, "refresh_batch_size"), ({"rule": "oja"}, "rule"), ({"seed": 1.5}, "seed"),
])
def test_bad_hyperparameters_raise_naming_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        keras_sam.EigenCorrection(**kwargs)


def test_non_correction_is_rejected():
    with pytest.raises(ValueError, match="eigen_correction"):
        keras_sam.SAM(sgd(), eigen_correction="x-sam")
