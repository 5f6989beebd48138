"""The kinds of training step an optimizer compiles; the training step's
clock (`keras_sam.training.clock`) chooses one before each step.

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
