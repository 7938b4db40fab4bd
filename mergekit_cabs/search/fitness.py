"""The CABS+ fitness of a candidate's per-task losses (pure Python).

``Delta_t = (L_t - L_t0) / L_t0`` is task ``t``'s relative loss change against the start
``lambda0``; ``f_t = alpha * Delta_t`` if ``Delta_t > 0`` else ``beta * Delta_t``;
``F = sum_t f_t`` (summed in task order, in double precision), minimised. With
``alpha >> beta`` a loss that rises on one task costs far more than an equal fall on
another earns, so no task is traded away. ``F(lambda0) = 0``.
"""

from __future__ import annotations

import math
from typing import Sequence


def relative_changes(losses: Sequence[float], start_losses: Sequence[float]) -> list[float]:
    """``Delta_t = (L_t - L_t0) / L_t0`` for every task, in order."""
    if len(losses) != len(start_losses):
        raise ValueError(f"{len(losses)} losses for {len(start_losses)} tasks")
    return [(loss - start) / start for loss, start in zip(losses, start_losses)]


def fitness(losses: Sequence[float], start_losses: Sequence[float], alpha: float, beta: float) -> float:
    """``F = sum_t (alpha * Delta_t if Delta_t > 0 else beta * Delta_t)``; ``inf`` when any
    loss is not finite (a candidate that breaks the model is never chosen)."""
    if not all(math.isfinite(loss) for loss in losses):
        return math.inf
    return sum(alpha * d if d > 0 else beta * d for d in relative_changes(losses, start_losses))
