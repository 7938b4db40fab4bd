"""Keep counts of one tensor, and whether conflict-aware masks are disjoint there.

Pure Python. Disjointness is a property of keep counts, not of densities: with
conflict-aware selection the masks of a block are disjoint exactly when the tasks' keep
counts fit in it, ``sum_i n_i <= m``; otherwise ``sum_i n_i - m`` kept entries of the block
must fall on positions an earlier task kept (fewer only where exact zeros run out).

- n:m: blocks are ``m = block_size`` elements, ``n_i = round(d_i * m)``; the short last
  block of ``r = numel % m`` elements keeps ``kernels.tail_keep_counts`` (for
  conflict-aware methods shared out by largest remainder, so the tail fits whenever the
  full blocks do).
- magnitude and random: the whole tensor is one block, ``m = numel``,
  ``n_i = round(d_i * numel)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from mergekit_cabs.kernels import Recipe, keep_count, tail_keep_counts


@dataclass(frozen=True)
class TensorKeepCounts:
    """Per-task keep counts of a tensor's full blocks and of its short tail block."""

    block_size: int  # m: elements of a full block
    counts: tuple[int, ...]  # n_i of a full block
    full_blocks: int
    tail: int  # r: elements of the short last block (0: none)
    tail_counts: tuple[int, ...]

    @property
    def excess(self) -> int:
        """Kept entries beyond the positions available, summed over blocks:
        ``full_blocks * max(0, sum n_i - m) + max(0, sum t_i - r)``; 0 iff disjoint."""
        full = self.full_blocks * max(0, sum(self.counts) - self.block_size)
        return full + max(0, sum(self.tail_counts) - self.tail)

    @property
    def kept(self) -> int:
        """Entries kept by all tasks together (with multiplicity)."""
        return self.full_blocks * sum(self.counts) + sum(self.tail_counts)


def tensor_keep_counts(
    recipe: Recipe, densities: Sequence[float], block_size: Optional[int], numel: int
) -> TensorKeepCounts:
    """The keep counts a tensor of ``numel`` elements gets from ``recipe`` at ``densities``."""
    if not recipe.sparsifier.blocks:
        counts = tuple(keep_count(d, numel) for d in densities)
        return TensorKeepCounts(numel, counts, 1 if numel else 0, 0, ())
    counts = tuple(keep_count(d, block_size) for d in densities)
    tail = numel % block_size
    tail_counts = tuple(tail_keep_counts(counts, tail, block_size, recipe.conflict_aware)
                        if tail else ())
    return TensorKeepCounts(block_size, counts, numel // block_size, tail, tail_counts)


def counts_fit(densities: Sequence[float], block_size: int) -> bool:
    """``sum_i round(d_i * m) <= m``: conflict-aware n:m masks are disjoint at ``m``."""
    return sum(keep_count(d, block_size) for d in densities) <= block_size


def disjoint_block_size(densities: Sequence[float], block_size: int, *,
                        power_of_two: bool = False, limit: int = 1 << 16) -> Optional[int]:
    """The smallest ``m' >= block_size`` (a power of two if asked) whose keep counts fit
    (``counts_fit``); None if none up to ``limit``."""
    if power_of_two:
        candidates = (1 << k for k in range(limit.bit_length()) if 1 << k >= block_size)
    else:
        candidates = iter(range(block_size, limit + 1))
    return next((m for m in candidates if counts_fit(densities, m)), None)


# A conflict-aware model whose free positions are fewer than this many times its keep
# count is "starved": the causal-LM benchmark (docs/quality.md) measured the harm where
# four models at 0.25 leave the last exactly its quota (ratio 1), and none at 4 x 0.175
# (ratio 2.7) or 4 x 0.10 (ratio 7).
STARVED_FREE_RATIO = 2.0


@dataclass(frozen=True)
class Starved:
    """A model that conflict-aware pruning leaves few free positions: its index in merge
    order, the share of each block free when its turn comes, and its own keep share."""

    index: int
    free_share: float
    keep_share: float


def starved_models(densities: Sequence[float], block_size: Optional[int]) -> list[Starved]:
    """Models whose free share of a block (``m - sum_{i<j} n_i`` over ``m``; with no
    ``block_size``, ``1 - sum_{i<j} d_i``) is below ``STARVED_FREE_RATIO`` times their keep
    share, in merge order. A model with density 0 keeps nothing and is never starved."""
    if block_size:
        shares = [keep_count(d, block_size) / block_size for d in densities]
    else:
        shares = list(densities)
    found, taken = [], 0.0
    for index, share in enumerate(shares):
        free = max(0.0, 1.0 - taken)
        if share > 0 and free < STARVED_FREE_RATIO * share:
            found.append(Starved(index, free, share))
        taken += share
    return found
