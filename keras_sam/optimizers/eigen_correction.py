"""X-SAM — Duan, Chen & Guan, "X-SAM: Boosting Sharpness-Aware Minimization with
Dominant-Eigenvector Gradient Correction", 2026 (arXiv 2601.10251).

Not XSAM (Chen & Zhou, ICLR 2026, `keras_sam.XSAM`).

State: v, a unit estimate of the Hessian's dominant eigenvector.
Every p sharpness-aware steps of an epoch (at step j when j % p == 0 and j > 0;
the first estimate starts from a seeded Gaussian), q power iterations at the
clean θ, on the current mini-batch, in inference mode, warm-started from v:

    v ← Hv / (‖Hv‖ + 1e-12)

Then, with g_1 the final perturbed gradient of the method it corrects
(SAM, ASAM, multi-step, XSAM, GSAM, ...):

    ĝ = g_1 / (‖g_1‖ + 1e-12),   c = ⟨ĝ, v⟩
    rule="signed"    (official code, default): d = ĝ − α · sign(⟨g_1, v⟩) · c · v = ĝ − α|c| v
    rule="symmetric" (the map of the paper's theorem): d = ĝ − α c v = (I − α v vᵀ) ĝ

d is not renormalised; before the first refresh d = g_1. Defaults α = 0.2,
p = 5, q = 5 (official code; its README uses p = 3).

Cost: a refresh is q Hessian-vector products (each a few gradients:
benchmarks/hvp_time.py). `EigenCorrection.amortized()` keeps one warm-started
power iteration per refresh (q = 1): the estimate converges across refreshes
while the eigenvector drifts slowly, at a fraction of the cost. Its first
refresh (from the Gaussian start, which one iteration cannot bring near the
eigenvector) runs `warmup_iterations` = 10 iterations, once per run
(benchmarks/step_time.py, benchmarks/eigenvector_quality.py).
`refresh_batch_size=n` refreshes on the first n examples of the batch, at
about n/B of the products' cost.
"""

import math

import keras
import numpy as np
from keras import ops

from keras_sam import vectors
from keras_sam.optimizers import checks
from keras_sam.optimizers.checks import require
from keras_sam.vectors import EPS

RULES = ("signed", "symmetric")


@keras.saving.register_keras_serializable(package="keras_sam")
class EigenCorrection:
    """The dominant-eigenvector correction of X-SAM, for any sharpness-aware
    optimizer of keras_sam: `SAM(opt, eigen_correction=EigenCorrection())`.

    Args:
        alpha: α, the share of the eigenvector component removed. 0.2.
        every: p, refresh the eigenvector every p sharpness-aware steps of an
            epoch (not on an epoch's first step, as the official code). 5.
        power_iterations: q, warm-started power iterations per refresh. 5.
        rule: "signed" (official code) or "symmetric" (the paper's theorem).
        seed: seed of the Gaussian first estimate.
        warmup_iterations: power iterations of the first refresh, the one
            that starts from the Gaussian (None: `power_iterations`, as the
            official code).
        refresh_batch_size: refresh on the first n examples of the batch
            (of each replica's share under `tf.distribute`): the Hessian-
            vector products cost about n/B of the full batch's. None: the
            whole batch, as the official code.
    """

    def __init__(self, alpha=0.2, every=5, power_iterations=5, rule="signed", seed=0,
                 warmup_iterations=None, refresh_batch_size=None):
        if warmup_iterations is None:
            warmup_iterations = power_iterations
        self.alpha = checks.finite_number("alpha", alpha)
        self.every = checks.integer("every", every, minimum=1)
        self.power_iterations = checks.integer("power_iterations", power_iterations, minimum=1)
        self.warmup_iterations = checks.integer("warmup_iterations", warmup_iterations, minimum=1)
        self.refresh_batch_size = None if refresh_batch_size is None else checks.integer(
            "refresh_batch_size", refresh_batch_size, minimum=1
        )
        require(rule in RULES, "rule", f"one of {RULES}", rule)
        self.rule = rule
        self.seed = checks.integer("seed", seed)

    @classmethod
    def amortized(cls, alpha=0.2, every=5, rule="signed", seed=0, warmup_iterations=10,
                  refresh_batch_size=None):
        """One warm-started power iteration per refresh (q = 1), after a first
        refresh of `warmup_iterations` from the Gaussian start; optionally on
        the first `refresh_batch_size` examples of the batch (half of a batch
        of 128 kept the estimate's quality in benchmarks/eigenvector_quality.py,
        a quarter did not)."""
        return cls(alpha=alpha, every=every, power_iterations=1, rule=rule, seed=seed,
                   warmup_iterations=warmup_iterations, refresh_batch_size=refresh_batch_size)

    # -- state -------------------------------------------------------------------
    def build(self, optimizer, var_list):
        """Creates the eigenvector estimate and its counters on `optimizer`."""
        rng = np.random.default_rng(self.seed)
        draws = [rng.standard_normal(tuple(v.shape)) for v in var_list]
        scale = 1.0 / np.sqrt(sum(float(np.sum(d * d)) for d in draws))
        self.eigenvector = [
            optimizer.add_variable(
                shape=tuple(v.shape),
                dtype=v.dtype,
                initializer=keras.initializers.Constant(d * scale),
                aggregation="none",
                name=f"eigenvector_{i}",
            )
            for i, (v, d) in enumerate(zip(var_list, draws))
        ]
        self.eigenvalue = optimizer.add_variable(
            shape=(), dtype="float32", initializer="zeros", aggregation="none", name="eigenvalue"
        )
        self.refreshes = optimizer.add_variable(
            shape=(), dtype="int32", initializer="zeros", aggregation="none", name="eigen_refreshes"
        )

    # -- schedule (host side: each kind of step is its own compiled variant) ------
    def refresh_iteration_counts(self):
        """The power iterations of the refreshing step variants: q, and the
        first refresh's `warmup_iterations` where they differ."""
        return tuple(dict.fromkeys((self.power_iterations, self.warmup_iterations)))

    def refresh_due(self, clock):
        """Power iterations of a refresh in the next step (a `StepClock`), or 0.

        Due at the j-th sharpness-aware step of an epoch when j % p == 0 and
        j > 0; the first refresh of training (none done yet, as the
        `refreshes` variable counts) runs `warmup_iterations`.
        """
        if clock.epoch_sam_steps == 0 or clock.epoch_sam_steps % self.every:
            return 0
        return self.warmup_iterations if clock.refreshes == 0 else self.power_iterations

    # -- math --------------------------------------------------------------------
    def power_iteration(self, hvp, params, iterations=None):
        """Warm-started power iterations (q by default); returns (v, λ, check
        scalars)."""
        v = [ops.convert_to_tensor(e.value) for e in self.eigenvector]
        eigenvalue, check_scalars = None, []
        kwargs = {} if self.refresh_batch_size is None else {"examples": self.refresh_batch_size}
        for _ in range(self.power_iterations if iterations is None else iterations):
            _, hv = hvp(params, v, **kwargs)
            eigenvalue = vectors.dot(v, hv)  # Rayleigh quotient, ‖v‖ = 1
            hv_norm = vectors.norm(hv)
            check_scalars.append(hv_norm)
            v = vectors.scale(hv, 1.0 / (hv_norm + EPS))
        return v, eigenvalue, check_scalars

    def correct(self, g, v, ready):
        """The corrected direction d and the angle between g and v (degrees)."""
        g_norm = vectors.norm(g)
        g_hat = vectors.scale(g, 1.0 / (g_norm + EPS))
        c = vectors.dot(g_hat, v)
        coefficient = self.alpha * (ops.abs(c) if self.rule == "signed" else c)
        corrected = vectors.add_scaled(g_hat, -coefficient, v)
        d = [ops.where(ready, a, b) for a, b in zip(corrected, g)]
        angle = ops.arccos(ops.clip(c, -1.0, 1.0)) * (180.0 / math.pi)
        return d, angle

    def estimate(self, params, hvp, refresh_iterations):
        """The eigenvector for this step; on a refresh step, refreshed at θ.

        `refresh_iterations`: the step variant's power iterations, 0 for no
        refresh. Returns (v, eigenvalue, ready, state_updates, check scalars);
        `ready` is false before the first refresh (d is then left as it is).
        """
        if refresh_iterations:
            v, eigenvalue, check_scalars = self.power_iteration(hvp, params, refresh_iterations)
            ready = ops.convert_to_tensor(True)
            state_updates = [(e, value) for e, value in zip(self.eigenvector, v)]
            state_updates += [(self.eigenvalue, eigenvalue), (self.refreshes, self.refreshes + 1)]
        else:
            v = [ops.convert_to_tensor(e.value) for e in self.eigenvector]
            eigenvalue = ops.convert_to_tensor(self.eigenvalue.value)
            ready = self.refreshes.value > 0
            state_updates, check_scalars = [], []
        return v, eigenvalue, ready, state_updates, check_scalars

    # -- serialization ---------------------------------------------------------
    def get_config(self):
        return {
            "alpha": self.alpha,
            "every": self.every,
            "power_iterations": self.power_iterations,
            "rule": self.rule,
            "seed": self.seed,
            "warmup_iterations": self.warmup_iterations,
            "refresh_batch_size": self.refresh_batch_size,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"EigenCorrection({args})"
