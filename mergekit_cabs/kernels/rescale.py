"""The norm rescale (``rescale: l1`` or ``l2``): each pruned task vector scaled, per tensor,
to carry the norm of its dense task vector.

For model ``i`` of one tensor, with ``p`` = 1 (``l1``) or 2 (``l2``),

    c_i = (sum_j |tau_ij|^p / sum_j |M_ij tau_ij|^p) ^ (1/p),   c_i = 1 where nothing is kept,

and ``c_i`` takes the place of the sparsifier's own factor (DARE's ``1 / density``) in the
merge's scale ``s_i * w_i`` (``rules.merge_scales``): at weight 1 the kept entries then add
as much of each task, by that norm, as dense task arithmetic adds. A model that
conflict-aware pruning left only small leftovers gets a large ``c_i``.

Exactness. ``tau`` is float32 (``tuned - base``, as every path computes it). The sums run in
float64 over fixed spans of the flattened tensor (``norm_spans``: whole n:m blocks, at most
``NORM_SPAN`` elements), each span summed by ``stable_sum`` (rows of ``STABLE_ROW``, then the
row sums, then the short rest: an order that does not depend on the thread count), the
spans added in order. Every caller (the merge's ``with_norm_factors``, the search's pruning)
sums through ``NormSums``, so equal inputs give equal factors, bit for bit.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import torch

from mergekit_cabs.kernels.rules import MergeArgs, Recipe

NORM_SPAN = 1 << 22
STABLE_ROW = 1024
RESCALE_NORMS = {"l1": 1, "l2": 2}


def stable_sum(values: torch.Tensor) -> float:
    """The float64 sum of a flat tensor in an order fixed by its length alone: each row of
    ``STABLE_ROW`` on its own, then the row sums, then the remaining ``< STABLE_ROW`` values."""
    values = values.to(torch.float64)
    full = values.numel() // STABLE_ROW * STABLE_ROW
    rows = values[:full].view(-1, STABLE_ROW).sum(dim=1)
    return float(rows.sum()) + float(values[full:].sum())


def norm_spans(recipe: Recipe, numel: int, block_size: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans the sums run over: n:m spans of whole blocks (the tail block alone),
    else plain spans of ``NORM_SPAN``."""
    if recipe.sparsifier.blocks:
        step = max(1, NORM_SPAN // block_size) * block_size
        full = numel // block_size * block_size
        spans = [(lo, min(lo + step, full)) for lo in range(0, full, step)]
        return spans + ([(full, numel)] if full < numel else [])
    return [(lo, min(lo + NORM_SPAN, numel)) for lo in range(0, numel, NORM_SPAN)]


def powered(values: torch.Tensor, p: int) -> torch.Tensor:
    """``|x|`` (exact in float32) or ``x^2`` (in float64) of every value."""
    return values.abs() if p == 1 else values.to(torch.float64).square()


@dataclasses.dataclass
class NormSums:
    """Running ``sum |tau_i|^p`` and ``sum |M_i tau_i|^p`` per model, for ``p`` in 1 and 2."""

    models: int

    def __post_init__(self):
        self.dense = {p: [0.0] * self.models for p in (1, 2)}
        self.kept = {p: [0.0] * self.models for p in (1, 2)}

    def add_span(self, taus: Sequence[torch.Tensor], masks: Sequence[torch.Tensor]) -> None:
        """Add one span's float32 task vectors and their masks (bool or 0/1)."""
        for i, (tau, mask) in enumerate(zip(taus, masks)):
            kept = tau * mask.to(tau.dtype)
            for p in (1, 2):
                self.dense[p][i] += stable_sum(powered(tau, p))
                self.kept[p][i] += stable_sum(powered(kept, p))

    def factors(self, norm: str) -> tuple[float, ...]:
        """``c_i`` of every model for ``norm`` (``l1`` or ``l2``)."""
        p = RESCALE_NORMS[norm]
        return tuple((dense / kept) ** (1 / p) if kept > 0 else 1.0
                     for dense, kept in zip(self.dense[p], self.kept[p]))


def nm_norm_sums(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor], args: MergeArgs) -> NormSums:
    """``NormSums`` of an n:m merge, its masks computed span by span (blocks are independent)."""
    from mergekit_cabs.kernels.masks import task_masks

    sums = NormSums(len(tuned))
    for lo, hi in norm_spans(recipe, base.numel(), args.block_size):
        base32 = base[lo:hi].to(torch.float32)
        taus = [t[lo:hi].to(torch.float32) - base32 for t in tuned]
        sums.add_span(taus, task_masks(recipe, taus, args.densities, args.block_size, args.seeds))
    return sums


def per_tensor_norm_sums(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                         args: MergeArgs) -> NormSums:
    """``NormSums`` of a per-tensor merge, its masks selected over the whole tensor in passes
    (``per_tensor.PerTensorMerge``), then read back span by span."""
    from mergekit_cabs.kernels.per_tensor import PerTensorMerge

    merge = PerTensorMerge(recipe, base, tuned, args)
    merge.select_all()
    sums = NormSums(len(tuned))
    for lo, hi in norm_spans(recipe, base.numel(), args.block_size):
        taus = [merge.task_vector(task, lo, hi) for task in range(len(tuned))]
        sums.add_span(taus, [merge.planes.mask(task, lo, hi) for task in range(len(tuned))])
    return sums


def with_norm_factors(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                      args: MergeArgs) -> MergeArgs:
    """``args`` with ``norm_factors`` of ``args.rescale`` (unchanged without a rescale)."""
    if args.rescale is None or args.norm_factors:
        return args
    sums = (nm_norm_sums if recipe.sparsifier.blocks else per_tensor_norm_sums)(
        recipe, base.reshape(-1), [t.reshape(-1) for t in tuned], args)
    return dataclasses.replace(args, norm_factors=sums.factors(args.rescale))


def check_rescale(rescale: Optional[str]) -> None:
    if rescale is not None and rescale not in RESCALE_NORMS:
        raise ValueError(f"rescale must be one of {', '.join(RESCALE_NORMS)} or None; got {rescale!r}")


