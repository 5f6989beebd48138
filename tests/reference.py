"""Independent NumPy references (float64) for the tests.

Closed-form losses and gradients, the methods written from docs/algorithms.md,
and Keras' SGD-with-momentum update rule.
"""

import numpy as np

EPS = 1e-12


# -- problems with closed-form gradients ----------------------------------------
def softmax_regression(x, labels, num_classes):
    """Dense(num_classes) + softmax cross-entropy: params [W (d, c), b (c,)]."""
    y = np.eye(num_classes)[labels]

    def loss_and_grad(params):
        w, b = params
        z = x @ w + b
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(y * np.log(p), axis=1))
        r = (p - y) / len(x)
        return loss, [x.T @ r, r.sum(axis=0)]

    return loss_and_grad


def linear_regression(x, targets):
    """Dense(1) + mean squared error, a quadratic: params [W (d, 1), b (1,)]."""

    def loss_and_grad(params):
        w, b = params
        r = x @ w + b - targets
        return np.mean(r**2), [2 * x.T @ r / len(x), 2 * r.mean(axis=0)]

    return loss_and_grad


# -- vectors as lists of arrays --------------------------------------------------
def norm(xs):
    return np.sqrt(sum(np.sum(x * x) for x in xs))


def dot(xs, ys):
    return sum(np.sum(x * y) for x, y in zip(xs, ys))


# -- methods -----------------------------------------------------------------------
def ascent(loss_and_grad, params, rho, steps=1, adaptive=False, eta=0.01, scaled=None):
    """k ascent steps of length ρ/k (docs/algorithms.md "SAM", "ASAM"): (θ_k − θ, g_k)."""
    scaled = scaled or [True] * len(params)
    _, g = loss_and_grad(params)
    displacement = [np.zeros_like(p) for p in params]
    for _ in range(steps):
        point = [p + e for p, e in zip(params, displacement)]
        if adaptive:
            t = [np.abs(p) + eta if s else np.ones_like(p) for p, s in zip(point, scaled)]
            tg = [ti * gi for ti, gi in zip(t, g)]
            f = (rho / steps) / (norm(tg) + EPS)
            e = [ti * tgi * f for ti, tgi in zip(t, tg)]
        else:
            f = (rho / steps) / (norm(g) + EPS)
            e = [gi * f for gi in g]
        displacement = [a + b for a, b in zip(displacement, e)]
        _, g = loss_and_grad([p + e for p, e in zip(params, displacement)])
    return displacement, g


def sam_direction(loss_and_grad, params, rho, **kwargs):
    """SAM / multi-step SAM / ASAM: d = g_k."""
    return ascent(loss_and_grad, params, rho, **kwargs)[1]


def slerp(v0, v1, alpha, psi):
    if np.sin(psi) < 1e-8:
        return [(a + b) / 2 for a, b in zip(v0, v1)]
    a, b = np.sin((1 - alpha) * psi) / np.sin(psi), np.sin(alpha * psi) / np.sin(psi)
    return [a * x + b * y for x, y in zip(v0, v1)]


def xsam_direction(loss_and_grad, params, rho, alpha, steps=1, rho_max=None, grid=None,
                   **kwargs):
    """XSAM (docs/algorithms.md "XSAM"). With `grid`, α is searched first: returns (d, α, losses)."""
    displacement, g = ascent(loss_and_grad, params, rho, steps=steps, **kwargs)
    s = norm(g)
    v0 = [e / norm(displacement) for e in displacement]
    v1 = [gi / s for gi in g]
    psi = np.arccos(np.clip(dot(v0, v1), -1.0, 1.0))
    losses = None
    if grid is not None:
        losses = [loss_and_grad([p + rho_max * v for p, v in zip(params, slerp(v0, v1, a, psi))])[0]
                  for a in grid]
        alpha = grid[int(np.argmax(losses))]  # np.argmax: the first maximum
    return [s * v for v in slerp(v0, v1, alpha, psi)], alpha, losses


class SGDMomentum:
    """Keras' SGD: m ← μ m − lr g; θ ← θ + m."""

    def __init__(self, learning_rate, momentum):
        self.learning_rate, self.momentum, self.m = learning_rate, momentum, None

    def step(self, params, grads):
        if self.m is None:
            self.m = [np.zeros_like(p) for p in params]
        self.m = [self.momentum * m - self.learning_rate * g for m, g in zip(self.m, grads)]
        return [p + m for p, m in zip(params, self.m)]


def train(make_problem, params, batches, direction_fn, optimizer):
    """Runs `direction_fn(loss_and_grad, params)` + optimizer over the batches."""
    for xb, yb in batches:
        params = optimizer.step(params, direction_fn(make_problem(xb, yb), params))
    return params


# -- X-SAM (docs/algorithms.md "X-SAM") ------------------------------------------------
def eigen_corrected(g, v, alpha, rule):
    """ĝ − α|c|v ("signed") or ĝ − α c v ("symmetric"), c = ⟨ĝ, v⟩."""
    g_hat = [x / (norm(g) + EPS) for x in g]
    c = dot(g_hat, v)
    coefficient = alpha * (abs(c) if rule == "signed" else c)
    return [x - coefficient * y for x, y in zip(g_hat, v)]


def power_iteration(hessian_times, v, iterations):
    """Warm-started power iteration: v ← Hv/‖Hv‖; returns (v, last Rayleigh quotient)."""
    eigenvalue = None
    for _ in range(iterations):
        hv = hessian_times(v)
        eigenvalue = dot(v, hv)
        v = [x / (norm(hv) + EPS) for x in hv]
    return v, eigenvalue


def gaussian_unit_vector(shapes, seed):
    """The seeded Gaussian first estimate keras_sam uses."""
    rng = np.random.default_rng(seed)
    draws = [rng.standard_normal(shape) for shape in shapes]
    return [d / norm(draws) for d in draws]


def linear_regression_hessian_times(x):
    """H·v of `linear_regression`'s loss (independent of the targets and θ)."""
    def hessian_times(v):
        w, b = v
        r = x @ w + b
        return [2 * x.T @ r / len(x), 2 * r.sum(axis=0) / len(x)]
    return hessian_times


# -- GSAM (docs/algorithms.md "GSAM") --------------------------------------------------
def gsam_direction(loss_and_grad, params, rho, alpha, **kwargs):
    """d = g_k − α g_⊥, g_⊥ = g_0 − (⟨g_0, g_k⟩/(‖g_0‖‖g_k‖ + eps)) ‖g_0‖ g_k/(‖g_k‖ + eps)."""
    _, g0 = loss_and_grad(params)
    _, g1 = ascent(loss_and_grad, params, rho, **kwargs)
    n0, n1 = norm(g0), norm(g1)
    cos = dot(g0, g1) / (n0 * n1 + EPS)
    g_perp = [a - cos * n0 * b / (n1 + EPS) for a, b in zip(g0, g1)]
    return [b - alpha * p for b, p in zip(g1, g_perp)]


def gsam_rho(lr, rho_min, rho_max, lr_min, lr_max):
    """ρ_t following the learning rate, clipped at 0 below."""
    return max(0.0, rho_min + (rho_max - rho_min) * (lr - lr_min) / (lr_max - lr_min))


# -- WSAM (docs/algorithms.md "WSAM") --------------------------------------------------
def clip_by_global_norm(xs, max_norm):
    """torch.nn.utils.clip_grad_norm_: xs · min(1, c / (‖xs‖ + 1e-6))."""
    factor = min(1.0, max_norm / (norm(xs) + 1e-6))
    return [x * factor for x in xs]


def wsam_step(loss_and_grad, params, optimizer, rho, gamma, decouple, clip_norm=None, **kwargs):
    """One WSAM step with `optimizer` (its `learning_rate` is lr_t): new params.

    Coupled: the optimizer steps with g_0 + w (g_1 − g_0). Decoupled: it steps
    with g_0, then θ ← θ − lr_t · w · (g_1 − g_0). w = γ/(1 − γ).
    """
    w = gamma / (1.0 - gamma)
    _, g0 = loss_and_grad(params)
    _, g1 = ascent(loss_and_grad, params, rho, **kwargs)
    if clip_norm is not None:
        g0, g1 = clip_by_global_norm(g0, clip_norm), clip_by_global_norm(g1, clip_norm)
    sharpness = [b - a for a, b in zip(g0, g1)]
    if not decouple:
        return optimizer.step(params, [a + w * s for a, s in zip(g0, sharpness)])
    lr = optimizer.learning_rate
    params = optimizer.step(params, g0)
    return [p - lr * w * s for p, s in zip(params, sharpness)]


# -- a small MLP, with or without BatchNorm -----------------------------------------
BN_EPSILON = 1e-3  # keras.layers.BatchNormalization's default


def mlp(x, labels, num_classes, batchnorm):
    """Dense(tanh) → [BatchNormalization, training mode] → Dense(num_classes) +
    softmax cross-entropy. params [k1, b1, (gamma, beta,) k2, b2]."""
    y = np.eye(num_classes)[labels]
    n = len(x)

    def loss_and_grad(params):
        k1, b1, *middle, k2, b2 = params
        h = np.tanh(x @ k1 + b1)
        if batchnorm:
            gamma, beta = middle
            mean, var = h.mean(axis=0), h.var(axis=0)  # biased, as Keras'
            inv_std = 1.0 / np.sqrt(var + BN_EPSILON)
            h_hat = (h - mean) * inv_std
            hn = h_hat * gamma + beta
        else:
            hn = h
        z = hn @ k2 + b2
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.sum(y * np.log(p), axis=1))
        dz = (p - y) / n
        d_hn = dz @ k2.T
        grads_middle = []
        if batchnorm:
            grads_middle = [(d_hn * h_hat).sum(axis=0), d_hn.sum(axis=0)]
            d_hat = d_hn * gamma
            d_h = inv_std / n * (n * d_hat - d_hat.sum(axis=0)
                                 - h_hat * (d_hat * h_hat).sum(axis=0))
        else:
            d_h = d_hn
        d_z1 = d_h * (1.0 - h * h)
        return loss, [x.T @ d_z1, d_z1.sum(axis=0), *grads_middle, hn.T @ dz, dz.sum(axis=0)]

    return loss_and_grad


def mlp_batch_statistics(params, x):
    """The batch mean and (biased) variance BatchNormalization sees in `mlp`."""
    h = np.tanh(x @ params[0] + params[1])
    return h.mean(axis=0), h.var(axis=0)


# -- LookSAM (docs/algorithms.md "LookSAM") ----------------------------------------------
class LookSAM:
    """Liu et al. 2022, Algorithm 1: on step t with t % k == 0, g_s = ∇L(θ + ρ g/‖g‖),
    g_v = g_s − ⟨g, g_s⟩/‖g‖² g and d = g_s; otherwise d = g + α ‖g‖/‖g_v‖ g_v.
    `reuse=False` drops the reuse (d = g between look steps): a wrong reference."""

    def __init__(self, rho, k, alpha, reuse=True):
        self.rho, self.k, self.alpha, self.reuse = rho, k, alpha, reuse
        self.t, self.gv = 0, None

    def direction(self, loss_and_grad, params):
        _, g = loss_and_grad(params)
        if self.gv is None:
            self.gv = [np.zeros_like(p) for p in params]
        if self.t % self.k == 0:
            d = sam_direction(loss_and_grad, params, self.rho)
            projection = dot(g, d) / (norm(g) ** 2 + EPS)
            self.gv = [s - projection * gi for s, gi in zip(d, g)]
        elif self.reuse:
            factor = self.alpha * norm(g) / (norm(self.gv) + EPS)
            d = [gi + factor * v for gi, v in zip(g, self.gv)]
        else:
            d = g
        self.t += 1
        return d
