"""Combines of the torch path: TIES and linear, and the masked merge of one slice.

Sums run in task order, in float32, so every implementation of these formulas (the
compiled path's ``compiled.common.combine_tile`` included) gives the same bits.
"""

from __future__ import annotations

from typing import Sequence

import torch

from mergekit_cabs.kernels.rules import Combine, MergeArgs, Recipe, normalizer


def ties_combine(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
) -> torch.Tensor:
    """TIES sign election and disjoint merge of weighted, pruned task vectors.

    ``deltas[i] = s_i * w_i * M_i * tau_i``, ``weights[i] = w_i``.
    ``gamma = sign(sum_i deltas[i])`` with ``gamma = +1`` where the sum is 0;
    ``agree_i = (sign(deltas[i]) == gamma)`` (a zero entry never agrees);
    result ``= sum_i agree_i * deltas[i]``, divided by ``sum_i agree_i * w_i`` when
    ``normalize`` (a divisor of 0 becomes 1). Sums run in task order, in float32, so
    every implementation of this formula gives the same bits.
    """
    total = deltas[0].clone()
    for delta in deltas[1:]:
        total += delta
    positive = total >= 0
    merged = torch.zeros_like(total)
    divisor = torch.zeros_like(total) if normalize else None
    for delta, weight in zip(deltas, weights):
        agree = torch.where(positive, delta > 0, delta < 0).to(delta.dtype)
        merged += delta * agree
        if divisor is not None:
            divisor += agree * weight
    if divisor is not None:
        merged /= torch.where(divisor == 0, 1.0, divisor)
    return merged


def linear_combine(
    deltas: Sequence[torch.Tensor], weights: Sequence[float], normalize: bool
) -> torch.Tensor:
    """``sum_i deltas[i]`` in task order, divided by ``sum_i w_i`` when ``normalize``
    (a total below 1e-8 in magnitude counts as 1)."""
    merged = deltas[0].clone()
    for delta in deltas[1:]:
        merged += delta
    if normalize:
        merged /= normalizer(weights)
    return merged


def masked_deltas(recipe: Recipe, taus: Sequence[torch.Tensor], masks: Sequence[torch.Tensor],
                  args: MergeArgs) -> list[torch.Tensor]:
    """``(tau_i * s_i w_i) * M_i`` of every model in float32 (``masks`` bool or 0/1 ints): a
    dropped entry is a signed zero."""
    return [(tau * scale) * mask.to(torch.float32) for tau, mask, scale in zip(taus, masks, args.scales(recipe))]


def combined_deltas(recipe: Recipe, base32: torch.Tensor, deltas: Sequence[torch.Tensor],
                    args: MergeArgs) -> torch.Tensor:
    """``base + lambda * combine_i(deltas_i)`` in float32, the combine of ``recipe``."""
    if recipe.combine is Combine.TIES:
        merged = ties_combine(deltas, args.weights, args.normalize)
    else:
        merged = linear_combine(deltas, args.weights, args.normalize)
    return base32 + args.lam * merged


def masked_merge(
    recipe: Recipe,
    base32: torch.Tensor,
    taus: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    args: MergeArgs,
) -> torch.Tensor:
    """``base + lambda * combine_i((s_i * w_i * tau_i) * M_i)`` in float32, elementwise, so
    any slice of the inputs gives that slice of the result. ``masks`` are bool or 0/1 ints;
    weights, densities (for DARE's ``s_i``), lambda and normalize come from ``args``."""
    return combined_deltas(recipe, base32, masked_deltas(recipe, taus, masks, args), args)
