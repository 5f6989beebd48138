"""The methods under test, and an independent reference run of each.

`METHODS[name]` is `(make, direction)`:
- `make(inner)` builds the keras_sam optimizer around a Keras optimizer;
- `direction(passes, params, state, step)` gives, in float64 NumPy, the vector
  the inner optimizer receives and the decoupled correction applied after it
  (or None), with the formulas of tests/reference.py (docs/algorithms.md). `passes`
  are the plain-Keras loss/gradient/HVP of the unwrapped model on the step's
  mini-batch (plain_keras.py); `state` is the method's own state, a dict kept
  across steps.

`reference_run` trains a second copy of the model: each step takes the
method's direction, assigns θ and the clean pass's non-trainable values to the
model, and lets a fresh `keras.optimizers.SGD` (momentum) apply the direction.
"""

import dataclasses
import math

import keras
import numpy as np

import keras_sam
from tests import reference
from tests.conformance import zoo
from tests.conformance.plain_keras import PlainKeras

LEARNING_RATE = 0.05
MOMENTUM = 0.9


def inner_optimizer():
    return keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM)


@dataclasses.dataclass
class Passes:
    """Plain-Keras passes of one mini-batch, all from the step's snapshot."""

    plain: PlainKeras
    state: list
    x: object
    y: object

    def loss_and_grad(self, params):
        loss, grads, _ = self.plain.value_and_grad(params, self.state, self.x, self.y)
        return loss, grads

    def hessian_times(self, params):
        return lambda v: self.plain.hvp(params, self.state, v, self.x, self.y)


def _scaled_by_weight(plain):
    """SamsungLabs ASAM: T = |θ| + η except on biases and normalization shifts."""
    return [not v.name.endswith(("bias", "beta")) for v in plain.trainable]


def _sam(**kwargs):
    return lambda p, params, state, step: (
        reference.sam_direction(p.loss_and_grad, params, **kwargs), None
    )


def _asam(rho, eta, scaled_all):
    def direction(p, params, state, step):
        scaled = [True] * len(params) if scaled_all else _scaled_by_weight(p.plain)
        d = reference.sam_direction(p.loss_and_grad, params, rho, adaptive=True, eta=eta,
                                    scaled=scaled)
        return d, None

    return direction


def _wsam(rho, gamma, decouple):
    w = gamma / (1.0 - gamma)

    def direction(p, params, state, step):
        _, g0 = p.loss_and_grad(params)
        _, g1 = reference.ascent(p.loss_and_grad, params, rho)
        sharpness = [b - a for a, b in zip(g0, g1)]
        if decouple:
            return g0, [w * s for s in sharpness]
        return [a + w * s for a, s in zip(g0, sharpness)], None

    return direction


def _xsam_dynamic(rho, rho_max, alpha_max, alpha_delta):
    grid = [i * alpha_delta for i in range(int(round(alpha_max / alpha_delta)) + 1)]

    def direction(p, params, state, step):
        # train_on_batch runs one "epoch": the search is on the first step.
        search = grid if step == 0 else None
        d, alpha, _ = reference.xsam_direction(
            p.loss_and_grad, params, rho, state.get("alpha"), rho_max=rho_max, grid=search
        )
        state["alpha"] = alpha
        return d, None

    return direction


def _eigen_corrected(rho, alpha, iterations, seed):
    def direction(p, params, state, step):
        d = reference.sam_direction(p.loss_and_grad, params, rho)
        # Refreshed every sharpness-aware step but the epoch's first (every=1).
        if step == 0:
            return d, None
        start = state.get("v") or reference.gaussian_unit_vector([x.shape for x in params], seed)
        state["v"], _ = reference.power_iteration(p.hessian_times(params), start, iterations)
        return reference.eigen_corrected(d, state["v"], alpha, "signed"), None

    return direction


METHODS = {
    "sam": (lambda o: keras_sam.SAM(o, rho=0.1), _sam(rho=0.1)),
    "asam_weights": (
        lambda o: keras_sam.ASAM(o, rho=0.5, eta=0.01, adaptive_variables="weights"),
        _asam(0.5, 0.01, scaled_all=False),
    ),
    "asam_all": (
        lambda o: keras_sam.ASAM(o, rho=0.5, eta=0.0, adaptive_variables="all"),
        _asam(0.5, 0.0, scaled_all=True),
    ),
    "sam_steps2": (lambda o: keras_sam.SAM(o, rho=0.1, steps=2), _sam(rho=0.1, steps=2)),
    "gsam": (
        lambda o: keras_sam.GSAM(o, rho=0.1, alpha=0.4),
        lambda p, params, state, step: (
            reference.gsam_direction(p.loss_and_grad, params, 0.1, 0.4), None
        ),
    ),
    "wsam_coupled": (
        lambda o: keras_sam.WSAM(o, rho=0.1, gamma=0.8, decouple=False),
        _wsam(0.1, 0.8, decouple=False),
    ),
    "wsam_decoupled": (
        lambda o: keras_sam.WSAM(o, rho=0.1, gamma=0.8, decouple=True),
        _wsam(0.1, 0.8, decouple=True),
    ),
    "xsam_fixed": (
        lambda o: keras_sam.XSAM(o, rho=0.15, steps=2, alpha=0.6),
        lambda p, params, state, step: (
            reference.xsam_direction(p.loss_and_grad, params, 0.15, 0.6, steps=2)[0], None
        ),
    ),
    "xsam_dynamic": (
        lambda o: keras_sam.XSAM(o, rho=0.15, rho_max=0.3, alpha_max=2.0, alpha_delta=0.5),
        _xsam_dynamic(0.15, 0.3, 2.0, 0.5),
    ),
    "eigen_corrected_sam": (
        lambda o: keras_sam.EigenCorrectedSAM(
            o, rho=0.1, alpha=0.2, refresh_every=1, power_iterations=2, seed=0
        ),
        _eigen_corrected(0.1, 0.2, iterations=2, seed=0),
    ),
}


def _looksam(rho, k, alpha):
    def direction(p, params, state, step):
        looksam = state.setdefault("looksam", reference.LookSAM(rho, k, alpha))
        return looksam.direction(p.loss_and_grad, params), None

    return direction


def _sub_batch_sam(rho, fraction):
    """`ascent_fraction`: g_0 (and the BatchNorm statistics kept) from the
    first ⌈f·B⌉ examples at θ, the last gradient from the whole batch."""

    def direction(p, params, state, step):
        count = math.ceil(fraction * zoo.BATCH)
        first = [keras.tree.map_structure(lambda a: a[:count], d) for d in (p.x, p.y)]
        _, g0, state["clean_non_trainable"] = p.plain.value_and_grad(params, p.state, *first)
        scale = rho / (reference.norm(g0) + reference.EPS)
        return p.loss_and_grad([w + scale * g for w, g in zip(params, g0)])[1], None

    return direction


def _gated_sam(rho, c, decay):
    """AE-SAM's gate (docs/algorithms.md, "When to be sharpness-aware"): SAM
    where n = ‖g_0‖² ≥ μ + c σ of its running moments, else g_0."""

    def direction(p, params, state, step):
        _, g = p.loss_and_grad(params)
        n = reference.norm(g) ** 2
        if "mean" not in state:
            state["mean"], state["variance"] = n, 0.0
        else:
            state["mean"] = decay * state["mean"] + (1 - decay) * n
            state["variance"] = decay * state["variance"] + (1 - decay) * (n - state["mean"]) ** 2
        if n >= state["mean"] + c * np.sqrt(state["variance"]):
            return reference.sam_direction(p.loss_and_grad, params, rho), None
        return g, None

    return direction


# The methods that trade passes for cost: each runs on every zoo model once
# (test_methods_on_zoo.py), beside the square of METHODS.
COST_METHODS = {
    "looksam": (lambda o: keras_sam.LookSAM(o, rho=0.1, k=2, alpha=0.7), _looksam(0.1, 2, 0.7)),
    "sam_sub_batch": (
        lambda o: keras_sam.SAM(o, rho=0.1, ascent_fraction=0.5), _sub_batch_sam(0.1, 0.5)
    ),
    "sam_gated": (
        lambda o: keras_sam.SAM(o, rho=0.1, when=keras_sam.when.GradientNormGate(c=0.0)),
        _gated_sam(0.1, 0.0, 0.9),
    ),
}


def lookup(name):
    """`(make, direction)` of a method of METHODS or COST_METHODS."""
    return METHODS[name] if name in METHODS else COST_METHODS[name]


def reference_run(case, method, plain=None):
    """The model's weights (all of `model.weights`) after each of `zoo.STEPS`
    reference steps of `method` (None: the inner optimizer alone). `plain`:
    the case's `PlainKeras`, if one was made already."""
    plain = plain or PlainKeras(case)
    optimizer = inner_optimizer()
    direction_fn = None if method is None else lookup(method)[1]
    method_state, history = {}, []
    for step in range(zoo.STEPS):
        params, state = plain.current()
        params = [p.astype("float64") for p in params]
        passes = Passes(plain, state, zoo.batch(case.x, step), zoo.batch(case.y, step))
        _, clean_grads, new_state = plain.value_and_grad(params, state, passes.x, passes.y)
        if direction_fn is None:
            direction, extra = clean_grads, None
        else:
            direction, extra = direction_fn(passes, params, method_state, step)
        plain.assign(params, method_state.pop("clean_non_trainable", new_state))
        optimizer.apply([keras.ops.convert_to_tensor(np.asarray(d, "float32")) for d in direction],
                        plain.trainable)
        if extra is not None:
            for variable, e in zip(plain.trainable, extra):
                value = np.asarray(keras.ops.convert_to_numpy(variable.value), "float64")
                variable.assign((value - LEARNING_RATE * e).astype(variable.dtype))
        history.append([np.array(keras.ops.convert_to_numpy(v.value)) for v in case.model.weights])
    return history
