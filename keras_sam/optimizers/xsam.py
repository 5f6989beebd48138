"""XSAM — Chen & Zhou, "Revisiting Sharpness-Aware Minimization: A More Faithful
and Effective Implementation", ICLR 2026 (arXiv 2603.10048; "explicit" SAM).

Not X-SAM (Duan, Chen & Guan 2026, `keras_sam.EigenCorrectedSAM`), and not
"SAM" = Segment Anything in keras-hub.

Per step, after k ascent steps θ_0 = θ … θ_k of length ρ/k:

    s    = ‖g_k‖,  g_k = ∇L_B(θ_k)
    v0   = (θ_k − θ_0) / ‖θ_k − θ_0‖          # the net ascent displacement
    v1   = g_k / s
    ψ    = arccos(clip(⟨v0, v1⟩, −1, 1))
    v(α) = sin((1−α)ψ)/sin ψ · v0 + sin(αψ)/sin ψ · v1   ((v0 + v1)/2 if sin ψ < 1e-8)
    d    = s · v(α)                            # the inner optimizer steps with d

α = 1 is SAM (multi-step SAM for k > 1); α = 0 is ‖g_k‖·v0 ("SGD+").
Dynamic XSAM (the paper's method, `alpha=None`): on the first mini-batch of
every epoch, α ← argmax over the grid 0, Δ, …, A of L_B(θ_0 + ρ_m · v(α))
(forward passes on that batch, training mode, statistics discarded; ties go to
the smallest α), used from that step on. Defaults are the official code's:
ρ = 0.15, ρ_m = 0.3, A = 2, Δ = 0.1, initial α = 1.
"""

import math

import keras
from keras import ops

from keras_sam import backend
from keras_sam import vectors
from keras_sam.optimizers import checks
from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer
from keras_sam.vectors import EPS

SIN_PSI_FLOOR = 1e-8


def slerp_coefficients(alpha, psi):
    """(a, b) with v(α) = a·v0 + b·v1; the midpoint where sin ψ ≈ 0."""
    sin_psi = ops.sin(psi)
    degenerate = sin_psi < SIN_PSI_FLOOR
    safe = ops.where(degenerate, 1.0, sin_psi)
    a = ops.where(degenerate, 0.5, ops.sin((1.0 - alpha) * psi) / safe)
    b = ops.where(degenerate, 0.5, ops.sin(alpha * psi) / safe)
    return a, b


def slerp(v0, v1, alpha, psi):
    a, b = slerp_coefficients(alpha, psi)
    return [ops.cast(a, x.dtype) * x + ops.cast(b, y.dtype) * y for x, y in zip(v0, v1)]


def search_alpha(loss_at, grid_size, alpha_delta):
    """First argmax of `loss_at(α)` over α = i·Δ, i = 0 … grid_size − 1.

    A strict `>` keeps the first maximum on ties and ignores NaN losses.
    """

    def body(i, state):
        best_loss, best_alpha = state
        alpha = ops.cast(i, "float32") * alpha_delta
        loss = ops.cast(loss_at(alpha), "float32")
        better = loss > best_loss
        return ops.where(better, loss, best_loss), ops.where(better, alpha, best_alpha)

    init = (ops.convert_to_tensor(-math.inf, "float32"), ops.convert_to_tensor(0.0, "float32"))
    # The probes may all-reduce their losses across replicas.
    _, best_alpha = backend.collective_fori_loop(0, grid_size, body, init)
    return best_alpha


@keras.saving.register_keras_serializable(package="keras_sam")
class XSAM(SharpnessAwareOptimizer):
    """Explicit sharpness-aware minimization (Chen & Zhou, ICLR 2026).

    ```python
    model = keras_sam.SAMModel(model)
    model.compile(optimizer=keras_sam.XSAM(keras.optimizers.SGD(0.05, momentum=0.9)), ...)
    model.fit(...)   # α* is re-estimated on the first batch of every epoch
    ```

    Args:
        optimizer: the inner Keras optimizer.
        rho: ascent radius ρ (total path length for `steps > 1`). Default 0.15.
        rho_max: ρ_m, the radius at which the α search probes the loss. 0.3.
        steps: ascent steps k.
        alpha: None for dynamic XSAM (the search); a float fixes α, no search.
        alpha_max: A, the largest α searched. 2.0.
        alpha_delta: Δ, the grid step. 0.1 (21 forward passes per search).
        initial_alpha: α before the first search. 1.0 (SAM).
        search_every: None to search on the first batch of each epoch of `fit`
            (the first sharpness-aware step of the epoch under `start` /
            `every`); an integer N to search every N sharpness-aware steps
            instead (custom loops, streaming data without epochs).
        **kwargs: `adaptive` (XSAM + ASAM, the paper's best), `eta`,
            `adaptive_variables`, `diagnostics`, `name` as for `SAM`.

    Logs per step: `alpha` (the α in use) and `psi` (the angle between v0 and
    v1 in degrees), besides SAM's `sharpness` and `grad_cosine`.
    """

    diagnostic_names = ("sharpness", "grad_cosine", "alpha", "psi")

    def __init__(
        self,
        optimizer=None,
        rho=0.15,
        rho_max=0.3,
        steps=1,
        alpha=None,
        alpha_max=2.0,
        alpha_delta=0.1,
        initial_alpha=1.0,
        search_every=None,
        **kwargs,
    ):
        super().__init__(optimizer, rho=rho, steps=steps, **kwargs)
        self.rho_max = checks.positive_number("rho_max", rho_max)
        self.alpha_max = checks.positive_number("alpha_max", alpha_max)
        self.alpha_delta = checks.positive_number("alpha_delta", alpha_delta)
        if alpha_delta > alpha_max:
            raise ValueError(
                f"`alpha_delta` ({alpha_delta}) must not exceed `alpha_max` ({alpha_max})."
            )
        self.alpha = None if alpha is None else checks.finite_number("alpha", alpha)
        self.initial_alpha = checks.finite_number("initial_alpha", initial_alpha)
        self.search_every = checks.integer("search_every", search_every, minimum=1, allow_none=True)
        # 0, Δ, …, A; the tolerance keeps A itself when A/Δ is whole.
        self.grid_size = int(math.floor(self.alpha_max / self.alpha_delta + 1e-9)) + 1

    def build_state(self, var_list):
        start = self.initial_alpha if self.alpha is None else self.alpha
        self.alpha_value = self.add_variable(
            shape=(), dtype="float32", initializer=keras.initializers.Constant(start),
            aggregation="none", name="alpha",
        )
        self.searches = self.add_variable(
            shape=(), dtype="int32", initializer="zeros", aggregation="none", name="searches"
        )

    def method_phases(self):
        return ("default",) if self.alpha is not None else ("default", "search")

    def method_phase(self, clock):
        if self.alpha is not None:
            return "default"
        if self.search_every:
            due = clock.sam_steps % self.search_every == 0
        else:  # the first sharpness-aware step of each epoch
            due = clock.epoch_sam_steps == 0
        return "search" if due else "default"

    def direction(self, ascent, params, passes, phase):
        s = ascent.grads_norm
        v0 = vectors.scale(ascent.displacement, 1.0 / (vectors.norm(ascent.displacement) + EPS))
        v1 = vectors.scale(ascent.grads, 1.0 / (s + EPS))
        psi = ops.arccos(ops.clip(vectors.dot(v0, v1), -1.0, 1.0))
        state_updates = []
        if phase == "search":

            def loss_at(alpha):
                return passes.loss(vectors.add_scaled(params, self.rho_max, slerp(v0, v1, alpha, psi)))

            alpha = search_alpha(loss_at, self.grid_size, self.alpha_delta)
            state_updates = [
                (self.alpha_value, alpha),
                (self.searches, self.searches + 1),
            ]
        else:
            alpha = ops.convert_to_tensor(self.alpha_value.value)
        d = vectors.scale(slerp(v0, v1, alpha, psi), s)
        diagnostics = {"alpha": alpha, "psi": psi * (180.0 / math.pi)}
        return Direction(d, diagnostics, state_updates)

    def get_config(self):
        return {
            **super().get_config(),
            "rho_max": self.rho_max,
            "alpha": self.alpha,
            "alpha_max": self.alpha_max,
            "alpha_delta": self.alpha_delta,
            "initial_alpha": self.initial_alpha,
            "search_every": self.search_every,
        }
