"""Helper for tests/test_cross_backend.py: trains one small MLP per method on
the backend named by KERAS_BACKEND and saves the final weights.

    KERAS_BACKEND=torch python tests/cross_backend_run.py OUT_DIR

Writes OUT_DIR/<backend>.npz with one array per (run, weight index), keyed
"<run>/<index>", and OUT_DIR/<backend>.json with per-run weight names, loss
histories and `skipped_steps`. Every run starts from the same NumPy-generated
weights and trains on the same NumPy-generated float32 data, so the results
must agree across backends up to float32 rounding.

Runs: one per entry of METHODS (a `keras_sam.SAMModel`), plus "keras_fit": a
plain `keras.Sequential` with the same SGD, the Keras reference the "sgd" run
must equal.
"""

import json
import os
import sys

import numpy as np

# Identical configuration on every backend.
SEED = 1234
N_SAMPLES = 64
N_FEATURES = 6
N_HIDDEN = 16
N_CLASSES = 3
BATCH_SIZE = 16
EPOCHS = 3
LEARNING_RATE = 0.05
MOMENTUM = 0.9

# name -> (optimizer class name or None for plain SGD, kwargs)
METHODS = {
    "sgd": (None, {}),
    "sam": ("SAM", {"rho": 0.05}),
    "sam_steps3": ("SAM", {"rho": 0.05, "steps": 3}),
    "asam_weights": ("ASAM", {"rho": 0.5, "eta": 0.01, "adaptive_variables": "weights"}),
    "asam_all": ("ASAM", {"rho": 0.5, "eta": 0.0, "adaptive_variables": "all"}),
    "xsam_search": ("XSAM", {"rho": 0.15, "rho_max": 0.3, "alpha_delta": 0.5}),
    "xsam_asam_steps2": ("XSAM", {"rho": 0.3, "steps": 2, "alpha": 0.5, "adaptive": True}),
    "gsam": ("GSAM", {"rho": 0.05, "alpha": 0.4}),
    "wsam_coupled": ("WSAM", {"rho": 0.05, "gamma": 0.9, "decouple": False}),
    "wsam_decoupled": ("WSAM", {"rho": 0.05, "gamma": 0.9, "decouple": True}),
    "wsam_decoupled_clip": ("WSAM", {"rho": 0.05, "gamma": 0.9, "clip_norm": 1.0}),
    "eigen_corrected_sam": ("EigenCorrectedSAM", {"rho": 0.05, "refresh_every": 2, "power_iterations": 3}),
    "xsam_eigen_symmetric": ("XSAM", {"rho": 0.1, "alpha": 0.7,
                                      "eigen_correction": {"alpha": 0.3, "every": 2, "power_iterations": 2,
                                                           "rule": "symmetric", "seed": 1}}),
}
# Methods `reference_weights` below writes out (XSAM has its own NumPy tests).
REFERENCE_METHODS = ["sgd", "sam", "sam_steps3", "asam_weights", "asam_all"]
REFERENCE = "keras_fit"


def make_data():
    rng = np.random.default_rng(SEED)
    x = rng.normal(size=(N_SAMPLES, N_FEATURES)).astype("float32")
    # Labels from a fixed random linear rule, so the problem is learnable.
    w = rng.normal(size=(N_FEATURES, N_CLASSES))
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(N_SAMPLES, N_CLASSES)), axis=1)
    return x, y.astype("int32")


def make_initial_weights():
    """In `model.get_weights()` order: Dense, BatchNormalization, Dense."""
    rng = np.random.default_rng(SEED + 1)

    def glorot(fan_in, fan_out):
        limit = np.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-limit, limit, size=(fan_in, fan_out))

    weights = [
        glorot(N_FEATURES, N_HIDDEN),  # dense kernel
        rng.normal(scale=0.1, size=N_HIDDEN),  # dense bias
        rng.uniform(0.8, 1.2, size=N_HIDDEN),  # BN gamma
        rng.normal(scale=0.1, size=N_HIDDEN),  # BN beta
        rng.normal(scale=0.1, size=N_HIDDEN),  # BN moving mean
        rng.uniform(0.5, 1.5, size=N_HIDDEN),  # BN moving variance
        glorot(N_HIDDEN, N_CLASSES),  # output kernel
        rng.normal(scale=0.1, size=N_CLASSES),  # output bias
    ]
    return [w.astype("float32") for w in weights]


def build_model(keras):
    return keras.Sequential(
        [
            keras.Input(shape=(N_FEATURES,)),
            keras.layers.Dense(N_HIDDEN, activation="relu"),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(N_CLASSES),
        ]
    )


def train(keras, keras_sam, name, x, y, initial_weights):
    inner = keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)
    model = build_model(keras)
    model.set_weights(initial_weights)
    if name == REFERENCE:
        optimizer = inner
    else:
        cls_name, kwargs = METHODS[name]
        model = keras_sam.SAMModel(model)
        optimizer = inner if cls_name is None else getattr(keras_sam, cls_name)(inner, **kwargs)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    history = model.fit(
        x, y, batch_size=BATCH_SIZE, epochs=EPOCHS, shuffle=False, verbose=0
    )
    weights = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in model.weights]
    names = [v.path for v in model.weights]
    info = {
        "names": names,
        "loss": [float(v) for v in history.history["loss"]],
        "skipped_steps": [int(v) for v in history.history.get("skipped_steps", [])],
    }
    return weights, info


# ---------------------------------------------------------------------------
# Independent float64 NumPy reference (no Keras): the same network, step and
# methods written out by hand, so that a mistake shared by all backends (the
# step is written once with keras.ops) is caught too.
# ---------------------------------------------------------------------------
BN_EPSILON = 1e-3  # keras.layers.BatchNormalization defaults
BN_MOMENTUM = 0.99


def _loss_and_grads(params, x, y):
    """Loss, gradients and batch statistics of the MLP in training mode."""
    k1, b1, gamma, beta, k2, b2 = params
    n = x.shape[0]
    z1 = x @ k1 + b1
    h = np.maximum(z1, 0.0)
    mean = h.mean(axis=0)
    var = ((h - mean) ** 2).mean(axis=0)  # biased, as Keras' BN
    inv_std = 1.0 / np.sqrt(var + BN_EPSILON)
    h_hat = (h - mean) * inv_std
    hn = h_hat * gamma + beta
    logits = hn @ k2 + b2
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_probs[np.arange(n), y].mean()

    d_logits = np.exp(log_probs)
    d_logits[np.arange(n), y] -= 1.0
    d_logits /= n
    d_k2 = hn.T @ d_logits
    d_b2 = d_logits.sum(axis=0)
    d_hn = d_logits @ k2.T
    d_gamma = (d_hn * h_hat).sum(axis=0)
    d_beta = d_hn.sum(axis=0)
    d_hat = d_hn * gamma
    d_h = inv_std / n * (
        n * d_hat - d_hat.sum(axis=0) - h_hat * (d_hat * h_hat).sum(axis=0)
    )
    d_z1 = d_h * (z1 > 0)
    d_k1 = x.T @ d_z1
    d_b1 = d_z1.sum(axis=0)
    return loss, [d_k1, d_b1, d_gamma, d_beta, d_k2, d_b2], (mean, var)


def reference_weights(method):
    """Final weights of `method` (a key of METHODS) in float64, NumPy only."""
    cls_name, kwargs = METHODS[method]
    rho = kwargs.get("rho", 0.0)
    steps = kwargs.get("steps", 1)
    adaptive = cls_name == "ASAM"
    eta = kwargs.get("eta", 0.01)
    # ASAM "weights": T = 1 on biases and the BN shift (indices 1, 3, 5).
    scaled = [True, False, True, False, True, False]
    if kwargs.get("adaptive_variables") == "all":
        scaled = [True] * 6

    x, y = make_data()
    x = x.astype("float64")
    w = [a.astype("float64") for a in make_initial_weights()]
    params = [w[0], w[1], w[2], w[3], w[6], w[7]]
    moving_mean, moving_var = w[4], w[5]
    velocity = [np.zeros_like(p) for p in params]
    for _ in range(EPOCHS):
        for start in range(0, N_SAMPLES, BATCH_SIZE):
            xb, yb = x[start : start + BATCH_SIZE], y[start : start + BATCH_SIZE]
            _, grads, (mean, var) = _loss_and_grads(params, xb, yb)
            if cls_name is not None:
                point = params
                for _ in range(steps):
                    if adaptive:
                        t = [np.abs(p) + eta if s else np.ones_like(p)
                             for p, s in zip(point, scaled)]
                    else:
                        t = [np.ones_like(p) for p in point]
                    norm = np.sqrt(sum(np.sum((ti * g) ** 2) for ti, g in zip(t, grads)))
                    point = [p + (rho / steps) * ti * ti * g / (norm + 1e-12)
                             for p, ti, g in zip(point, t, grads)]
                    _, grads, _ = _loss_and_grads(point, xb, yb)
            # keras.optimizers.SGD with momentum: v = m v - lr d; θ = θ + v.
            velocity = [MOMENTUM * v - LEARNING_RATE * g for v, g in zip(velocity, grads)]
            params = [p + v for p, v in zip(params, velocity)]
            moving_mean = BN_MOMENTUM * moving_mean + (1 - BN_MOMENTUM) * mean
            moving_var = BN_MOMENTUM * moving_var + (1 - BN_MOMENTUM) * var
    k1, b1, gamma, beta, k2, b2 = params
    return [k1, b1, gamma, beta, moving_mean, moving_var, k2, b2]


def main(out_dir):
    import keras

    import keras_sam

    backend = keras.backend.backend()
    expected = os.environ.get("KERAS_BACKEND")
    if backend != expected:
        raise RuntimeError(f"KERAS_BACKEND={expected!r} but Keras runs on {backend!r}")
    keras.config.set_floatx("float32")

    x, y = make_data()
    initial_weights = make_initial_weights()
    arrays, infos = {}, {}
    for name in [*METHODS, REFERENCE]:
        weights, info = train(keras, keras_sam, name, x, y, initial_weights)
        for i, w in enumerate(weights):
            arrays[f"{name}/{i}"] = w
        infos[name] = info
    np.savez(os.path.join(out_dir, f"{backend}.npz"), **arrays)
    with open(os.path.join(out_dir, f"{backend}.json"), "w") as f:
        json.dump(infos, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1])
