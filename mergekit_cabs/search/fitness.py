"""The fitness of a candidate's per-task losses against the start's (pure Python).

Every fitness is minimised, is 0 at the start (``L_t = L_t0`` for every task ``t``), sums
its per-task terms in task order in double precision, and is ``inf`` when any loss is not
finite (a candidate that breaks the model is never chosen). ``alpha`` weighs a task whose
loss rises, ``beta`` one whose loss falls:

- ``absolute``: ``d_t = L_t - L_t0`` in the loss's own units; ``f_t = alpha * d_t`` if
  ``d_t > 0`` else ``beta * d_t``; ``F = sum_t f_t``. Defaults ``alpha = beta = 1``: the
  change of the summed loss. A task the merge already solves (a loss of a few
  thousandths) weighs what it can still lose, so it cannot freeze the search.
- ``cabs-plus``: the CABS+ paper's adaptive weight allocation: ``Delta_t = (L_t - L_t0) /
  L_t0``; ``f_t = alpha * Delta_t`` if ``Delta_t > 0`` else ``beta * Delta_t``; ``F = sum_t
  f_t``. Defaults ``alpha = 100``, ``beta = 1``: no task may be traded away. A relative rise
  of a tiny loss (0.0012 -> 0.0077 nats is +550 %) then outweighs every other task's gain,
  which is why the search stays at its start on near-solved tasks (docs/quality.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence


def relative_changes(losses: Sequence[float], start_losses: Sequence[float]) -> list[float]:
    """``Delta_t = (L_t - L_t0) / L_t0`` for every task, in order."""
    check_lengths(losses, start_losses)
    return [(loss - start) / start for loss, start in zip(losses, start_losses)]


def absolute_changes(losses: Sequence[float], start_losses: Sequence[float]) -> list[float]:
    """``d_t = L_t - L_t0`` for every task, in order."""
    check_lengths(losses, start_losses)
    return [loss - start for loss, start in zip(losses, start_losses)]


def check_lengths(losses: Sequence[float], start_losses: Sequence[float]) -> None:
    if len(losses) != len(start_losses):
        raise ValueError(f"{len(losses)} losses for {len(start_losses)} tasks")


def asymmetric_sum(changes: Sequence[float], alpha: float, beta: float) -> float:
    """``sum_t (alpha * c_t if c_t > 0 else beta * c_t)``."""
    return math.fsum(alpha * c if c > 0 else beta * c for c in changes)


@dataclass(frozen=True)
class Fitness:
    """One fitness: how per-task changes are measured, and its default ``alpha``, ``beta``."""

    name: str
    changes: Callable[[Sequence[float], Sequence[float]], list[float]]
    alpha: float
    beta: float
    summary: str

    def __call__(self, losses: Sequence[float], start_losses: Sequence[float], alpha: float,
                 beta: float) -> float:
        if not all(math.isfinite(loss) for loss in losses):
            return math.inf
        return asymmetric_sum(self.changes(losses, start_losses), alpha, beta)


FITNESSES = {f.name: f for f in (
    Fitness("absolute", absolute_changes, 1.0, 1.0, "the change of the summed per-task loss"),
    Fitness("cabs-plus", relative_changes, 100.0, 1.0,
            "the CABS+ paper's relative loss changes, a rise weighed 100 times a fall"),
)}
DEFAULT_FITNESS = "absolute"


def fitness(losses: Sequence[float], start_losses: Sequence[float], alpha: float, beta: float,
            name: str = "cabs-plus") -> float:
    """``FITNESSES[name]`` of ``losses`` against ``start_losses`` with ``alpha`` and ``beta``."""
    return FITNESSES[name](losses, start_losses, alpha, beta)
