"""The ascent every method climbs (docs/algorithms.md, "SAM", "ASAM").

SAM's step (Foret et al., ICLR 2021) `e = ρ g / (‖g‖ + eps)`; ASAM's
(Kwon et al., ICML 2021) `e = ρ T² g / (‖T g‖ + eps)`, `T = |θ| + η`; and
the k-step ascent θ_{i+1} = θ_i + e_i of length ρ/k each, from the clean
pass at θ to the perturbed pass at θ_k.
"""

import dataclasses

from keras import ops

from keras_sam import backend
from keras_sam import vectors
from keras_sam.vectors import EPS


@dataclasses.dataclass
class Ascent:
    """The result of the ascent phase of one step.

    `clean_*` are at θ, the rest at the last ascent point θ_k = θ + Σ e_i.
    """

    clean_loss: object
    clean_aux: object
    clean_grads: list
    displacement: list  # θ_k − θ, accumulated from the perturbations.
    loss: object  # L_B(θ_k)
    grads: list  # g_k = ∇L_B(θ_k)
    grads_norm: object  # ‖g_k‖
    check_scalars: list  # Every loss and norm of the step: all finite or skip.
    # Where a gate decided (a boolean tensor): whether the step climbed; if
    # not, the rest is the clean pass' (g_k = g_0, θ_k − θ = ρ g_0/‖g_0‖).
    climbed: object = None
    state_updates: list = dataclasses.field(default_factory=list)  # the gate's


def perturbation(grads, radius):
    """SAM's ascent step `e = r g / (‖g‖ + eps)`; returns `e` and ‖g‖."""
    grads_norm = vectors.norm(grads)
    return vectors.scale(grads, radius / (grads_norm + EPS)), grads_norm


def adaptive_perturbation(point, grads, radius, eta, scaled_by_weight):
    """ASAM's ascent step `e = r T² g / (‖T g‖ + eps)`, `T = |θ| + η` at `point`
    on the variables flagged in `scaled_by_weight` (T = 1 on the others);
    returns `e` and ‖T g‖."""
    t = [
        ops.abs(p) + ops.cast(eta, p.dtype) if scaled else None
        for p, scaled in zip(point, scaled_by_weight)
    ]
    tg = [g if ti is None else ti * g for g, ti in zip(grads, t)]
    tg_norm = vectors.norm(tg)
    factor = radius / (tg_norm + EPS)
    e = [
        x * ops.cast(factor, x.dtype) if ti is None else ti * x * ops.cast(factor, x.dtype)
        for x, ti in zip(tg, t)
    ]
    return e, tg_norm


def ascend(grad_fn, params, radius, steps, perturb, final_grad_fn=None, gate=None):
    """The clean pass at `params`, then `steps` ascent steps of length
    `radius` each, `perturb(point, grads, radius) -> (e, divisor)`, and the
    pass at the last point. `grad_fn(values) -> ((loss, aux), grads)`; the
    last pass is `final_grad_fn`'s if given (sub-batch ascent: Brock et al.
    2021, Bahri et al. 2022). `gate(‖g_0‖)` (optional) returns None or
    (climbs, state updates): the climb's passes then run in a conditional,
    and where `climbs` is false the step stays with the clean pass (AE-SAM).
    Returns an `Ascent`."""
    final_grad_fn = final_grad_fn or grad_fn
    (clean_loss, clean_aux), clean_grads = grad_fn(params)

    def climb():
        return _climb(grad_fn, final_grad_fn, params, clean_loss, clean_grads, radius, steps,
                      perturb)

    gated = gate(vectors.norm(clean_grads)) if gate is not None and steps else None
    if gated is None:
        climbed, state_updates = None, []
        loss, grads, displacement, scalars = climb()
    else:
        climbed, state_updates = gated

        def stay():
            e, _ = perturb(params, clean_grads, radius)
            return clean_loss, clean_grads, e, [_float32(clean_loss)] * (2 * steps)

        loss, grads, displacement, scalars = backend.collective_cond(climbed, climb, stay)
    grads_norm = vectors.norm(grads)
    return Ascent(
        clean_loss=clean_loss,
        clean_aux=clean_aux,
        clean_grads=clean_grads,
        displacement=displacement,
        loss=loss,
        grads=grads,
        grads_norm=grads_norm,
        check_scalars=[clean_loss, *scalars, grads_norm],
        climbed=climbed,
        state_updates=state_updates,
    )


def _float32(x):
    return ops.cast(x, "float32")


def _climb(grad_fn, final_grad_fn, params, clean_loss, clean_grads, radius, steps, perturb):
    """The ascent from the clean pass: (loss, grads, displacement, the
    divisors and losses to check)."""
    scalars = []
    loss, grads, displacement = clean_loss, clean_grads, None
    for i in range(steps):
        point = params if displacement is None else vectors.add(params, displacement)
        e, divisor = perturb(point, grads, radius)
        displacement = e if displacement is None else vectors.add(displacement, e)
        pass_fn = final_grad_fn if i == steps - 1 else grad_fn
        (loss, _), grads = pass_fn(vectors.add(params, displacement))
        scalars += [_float32(divisor), _float32(loss)]
    return loss, grads, displacement, scalars


def clean_pass(grad_fn, params):
    """The clean pass alone, as an `Ascent` that stays at θ (no
    displacement): for steps that do not climb."""
    return ascend(grad_fn, params, radius=0.0, steps=0, perturb=None)
