"""The kinds of training step an optimizer compiles, and the host-side clock
that chooses one before each step.

Periodic work (XSAM's α search, an eigenvector refresh) and the plain steps of
`start` / `every` run as their own compiled step functions, chosen from Python
between steps: a conditional inside one compiled step would trace the passes
of every branch, and XLA:CPU runs backward passes inside a conditional much
more slowly.
"""

import dataclasses


@dataclasses.dataclass(frozen=True)
class StepVariant:
    """One compiled kind of step.

    Attributes:
        phase: the method's phase, named by the method ("default", XSAM's
            "search").
        refresh_iterations: power iterations of an eigenvector refresh run in
            this step (`EigenCorrection`); 0 for none.
        plain: the inner optimizer's own step (one forward–backward), on the
            steps `start` / `every` leave out.
    """

    phase: str = "default"
    refresh_iterations: int = 0
    plain: bool = False

    def __str__(self):
        if self.plain:
            return "plain"
        if self.refresh_iterations:
            return f"{self.phase}+refresh({self.refresh_iterations})"
        return self.phase


DEFAULT = StepVariant()
PLAIN = StepVariant(plain=True)


class StepClock:
    """Steps counted on the host, read by whatever decides when periodic work
    is due (`select_variant` of the optimizer, its method and its correction).

    Attributes:
        step: the global training step (the optimizer's `iterations`).
        epoch_step: steps of the current epoch.
        sam_steps, epoch_sam_steps: sharpness-aware (not plain) steps so far,
            in all and in the current epoch.
        total_steps: the steps of the current `fit`, when known, else None.
    """

    def __init__(self):
        self.step = 0
        self.epoch_step = 0
        self.sam_steps = 0
        self.epoch_sam_steps = 0
        self.total_steps = None

    def start_epoch(self):
        self.epoch_step = self.epoch_sam_steps = 0

    def tick(self, variant):
        """Counts a step of `variant` (a `StepVariant`) as done."""
        self.step += 1
        self.epoch_step += 1
        if not variant.plain:
            self.sam_steps += 1
            self.epoch_sam_steps += 1
