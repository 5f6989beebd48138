"""The ascent every method climbs (docs/algorithms.md, "SAM", "ASAM").

SAM's step (Foret et al., ICLR 2021) `e = ρ g / (‖g‖ + eps)`; ASAM's
(Kwon et al., ICML 2021) `e = ρ T² g / (‖T g‖ + eps)`, `T = |θ| + η`; and
the k-step ascent θ_{i+1} = θ_i + e_i of length ρ/k each, from the clean
pass at θ to the perturbed pass at θ_k.
"""

import dataclasses

from keras import ops

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


def ascend(grad_fn, params, radius, steps, perturb, final_grad_fn=None):
    """The clean pass at `params`, then `steps` ascent steps of length
    `radius` each, `perturb(point, grads, radius) -> (e, divisor)`, and the
    pass at the last point. `grad_fn(values) -> ((loss, aux), grads)`; the
    last pass is `final_grad_fn`'s if given (sub-batch ascent: Brock et al.
    2021, Bahri et al. 2022). Returns an `Ascent`."""
    final_grad_fn = final_grad_fn or grad_fn
    (clean_loss, clean_aux), clean_grads = grad_fn(params)
    check_scalars = [clean_loss]
    loss, grads, displacement = clean_loss, clean_grads, None
    for i in range(steps):
        point = params if displacement is None else vectors.add(params, displacement)
        e, divisor = perturb(point, grads, radius)
        check_scalars.append(divisor)
        displacement = e if displacement is None else vectors.add(displacement, e)
        pass_fn = final_grad_fn if i == steps - 1 else grad_fn
        (loss, _), grads = pass_fn(vectors.add(params, displacement))
        check_scalars.append(loss)
    grads_norm = vectors.norm(grads)
    check_scalars.append(grads_norm)
    return Ascent(
        clean_loss=clean_loss,
        clean_aux=clean_aux,
        clean_grads=clean_grads,
        displacement=displacement,
        loss=loss,
        grads=grads,
        grads_norm=grads_norm,
        check_scalars=check_scalars,
    )


def clean_pass(grad_fn, params):
    """The clean pass alone, as an `Ascent` that stays at θ (no
    displacement): for steps that do not climb."""
    return ascend(grad_fn, params, radius=0.0, steps=0, perturb=None)
