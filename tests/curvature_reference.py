"""Closed-form Hessians in float64 NumPy for the curvature tests.

Parameters are flattened in the order and layout of Keras'
`trainable_variables` (kernel then bias per Dense layer, C order).
"""

import numpy as np


def mlp_mse(x, y, w1, b1, w2, b2):
    """Dense(h, tanh) → Dense(1), mean squared error.

    Returns `(loss, gradient, hessian)` in float64, from
    L = (1/N) Σ r², r = f(x) − y, H = (2/N) Σ (∇f ∇fᵀ + r ∇²f).
    """
    x, y, w1, b1, w2, b2 = (np.asarray(a, dtype=np.float64) for a in (x, y, w1, b1, w2, b2))
    n, d = x.shape
    h = w1.shape[1]
    u = np.concatenate([x, np.ones((n, 1))], axis=1)  # first layer: [W1; b1] acts on [x, 1]
    t = np.tanh(x @ w1 + b1)
    s1 = 1.0 - t**2  # tanh'
    s2 = -2.0 * t * s1  # tanh''
    v = w2[:, 0]
    r = t @ v + b2[0] - y[:, 0]
    p1 = (d + 1) * h  # [W1; b1] flattened in C order: W1 then b1
    size = p1 + h + 1
    jac = np.zeros((n, size))
    jac[:, :p1] = (u[:, :, None] * (v * s1)[:, None, :]).reshape(n, p1)
    jac[:, p1:p1 + h] = t
    jac[:, -1] = 1.0
    loss = np.mean(r**2)
    grad = 2.0 / n * jac.T @ r
    hess = 2.0 / n * jac.T @ jac
    c = 2.0 / n * r
    # ∂²f/∂θ1[i,j]∂θ1[k,l] = δ_jl v_j s2_j u_i u_k
    e11 = np.einsum("n,ni,nk,nj->ijk", c, u, u, v * s2)
    h11 = np.zeros((d + 1, h, d + 1, h))
    for j in range(h):
        h11[:, j, :, j] = e11[:, j, :]
    hess[:p1, :p1] += h11.reshape(p1, p1)
    # ∂²f/∂θ1[i,j]∂w2[l] = δ_jl s1_j u_i
    e12 = np.einsum("n,ni,nj->ij", c, u, s1)
    h12 = np.zeros((d + 1, h, h))
    for j in range(h):
        h12[:, j, j] = e12[:, j]
    hess[:p1, p1:p1 + h] += h12.reshape(p1, h)
    hess[p1:p1 + h, :p1] += h12.reshape(p1, h).T
    return loss, grad, hess


def linear_mse(x, sign=1.0):
    """Dense(1) with `sign` × mean squared error: H = sign · (2/N) AᵀA, A = [x, 1]."""
    x = np.asarray(x, dtype=np.float64)
    a = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    return sign * 2.0 / len(x) * a.T @ a


def flatten(arrays):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def unflatten(flat, like):
    out, start = [], 0
    for a in like:
        size = int(np.prod(np.shape(a)))
        out.append(np.asarray(flat[start:start + size]).reshape(np.shape(a)))
        start += size
    return out


def finite_difference_hessian(loss_and_grad, theta, eps=1e-5):
    """Central differences of an exact float64 gradient (to check the closed forms)."""
    size = len(theta)
    hess = np.zeros((size, size))
    for i in range(size):
        step = np.zeros(size)
        step[i] = eps
        hess[:, i] = (loss_and_grad(theta + step)[1] - loss_and_grad(theta - step)[1]) / (2 * eps)
    return 0.5 * (hess + hess.T)


def hadamard_columns(n, columns):
    """`columns` mutually orthogonal ±1 columns of length n (a power of 2),
    each orthogonal to the constant column."""
    h = np.array([[1.0]])
    while len(h) < n:
        h = np.block([[h, h], [h, -h]])
    return h[:, 1:columns + 1]


# -- Keras models matching the closed forms --------------------------------------
def keras_mlp(d=3, hidden=6, seed=0):
    """Dense(hidden, tanh) → Dense(1) compiled with MSE, and data for it."""
    import keras

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(16, d)).astype("float32")
    y = rng.normal(size=(16, 1)).astype("float32")
    model = keras.Sequential(
        [keras.Input((d,)), keras.layers.Dense(hidden, activation="tanh"), keras.layers.Dense(1)]
    )
    model.compile(loss="mse")
    model.set_weights([rng.normal(scale=0.8, size=w.shape).astype("float32")
                       for w in model.get_weights()])
    return model, x, y


def keras_linear(x, sign=1.0):
    """Dense(1) compiled with `sign` × MSE (a Hessian independent of the weights)."""
    import keras
    from keras import ops

    model = keras.Sequential([keras.Input((x.shape[1],)), keras.layers.Dense(1)])

    def loss(y_true, y_pred):
        return sign * ops.mean(ops.square(y_pred - y_true), axis=-1)

    model.compile(loss=loss)
    return model


def mlp_reference(model, x, y):
    """(loss, gradient, Hessian) of `keras_mlp` at its current weights."""
    return mlp_mse(x, y, *model.get_weights())
