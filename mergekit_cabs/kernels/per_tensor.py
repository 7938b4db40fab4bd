"""The per-tensor merge of the torch path (magnitude and random), in passes over chunks.

One block spans the whole tensor, so the selection cannot be cut into independent pieces
as n:m can; instead each task's threshold is found by a two-pass radix select over chunks,
and the masks are kept as bits, so that memory stays bounded whatever the tensor's size.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mergekit_cabs.kernels.combine import masked_merge
from mergekit_cabs.kernels.masks import random_scores
from mergekit_cabs.kernels.rules import CLAIMED_OFFSET, MergeArgs, Recipe, keep_count, score_bits

# Keys are ranked by a two-pass radix select: a histogram of the high 16 bits finds the bin
# holding the threshold, a histogram of the low 16 bits inside that bin finds the threshold.
RADIX_BITS = 16
RADIX_BINS = 1 << RADIX_BITS
# Masks of up to this many tasks share one byte per position (bit i: task i kept it).
TASKS_PER_MASK_PLANE = 8


def chunk_spans(numel: int, chunk_elements: Optional[int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans of ``chunk_elements`` (all of ``numel`` when ``None``) covering ``numel``."""
    step = max(chunk_elements or numel, 1)
    return [(lo, min(lo + step, numel)) for lo in range(0, numel, step)]


def high_digit(keys: torch.Tensor) -> torch.Tensor:
    """``(key >> 16) + 2^15`` (arithmetic shift), in ``[0, 2^16)``: with ``low_digit``,
    ordering by ``(high, low)`` is the signed order of int32 keys."""
    return (keys >> RADIX_BITS) + RADIX_BINS // 2


def low_digit(keys: torch.Tensor) -> torch.Tensor:
    """``key & 0xFFFF``, in ``[0, 2^16)``."""
    return keys & (RADIX_BINS - 1)


def count_into(histogram: torch.Tensor, digits: torch.Tensor, counted: Optional[torch.Tensor] = None) -> None:
    """``histogram[d] += #{j : digits_j == d (and counted_j)}``, in place.

    ``index_add_`` rather than ``bincount``: on CUDA ``bincount`` reads its input's range
    back to the host, a synchronisation per call; ``index_add_`` stays on the device.
    """
    ones = torch.ones(1, dtype=histogram.dtype, device=histogram.device).expand(digits.numel())
    histogram.index_add_(0, digits, ones if counted is None else counted.to(histogram.dtype))


def bin_from_top(histogram: torch.Tensor, rank: int) -> tuple[int, int]:
    """``(b, above)``: the bin holding the ``rank``-th largest counted value (``rank >= 1``),
    ``b = max{b : sum_{b' >= b} h[b'] >= rank}``, and ``above = sum_{b' > b} h[b']``."""
    from_top = histogram.flip(0).cumsum(0)
    position = torch.searchsorted(from_top, torch.tensor([rank], device=histogram.device))
    found = torch.cat([position, from_top[position] - histogram.flip(0)[position]])
    position, above = (int(v) for v in found.tolist())
    return histogram.numel() - 1 - position, above


@dataclass(frozen=True)
class RankCut:
    """Where the ``n`` best keys end: keys above ``threshold`` are kept, and of the
    ``ties`` keys equal to it the first ``room`` in index order."""

    threshold: int
    room: int
    ties: int


def rank_cut(keys: torch.Tensor, high_counts: torch.Tensor, n: int,
             spans: Sequence[tuple[int, int]]) -> RankCut:
    """The cut of the ``n`` largest ``keys`` (``1 <= n <= numel``), given the histogram of
    their high digits: one more pass over ``spans`` counts low digits in the threshold's bin."""
    high_bin, above_bin = bin_from_top(high_counts, n)
    low_counts = torch.zeros_like(high_counts)
    for lo, hi in spans:
        count_into(low_counts, low_digit(keys[lo:hi]), high_digit(keys[lo:hi]) == high_bin)
    low_bin, above_low = bin_from_top(low_counts, n - above_bin)
    threshold = ((high_bin - RADIX_BINS // 2) << RADIX_BITS) | low_bin
    ties = int(low_counts[low_bin])
    return RankCut(threshold, n - above_bin - above_low, ties)


def ties_per_chunk(keys: torch.Tensor, cut: RankCut, spans: Sequence[tuple[int, int]]) -> list[int]:
    """``#{j in span : key_j == threshold}`` for each span where ties compete for room
    (zeros where they all fit), read back to the host at once."""
    if cut.ties <= cut.room:
        return [0] * len(spans)
    return torch.stack([(keys[lo:hi] == cut.threshold).sum() for lo, hi in spans]).tolist()


def kept_by_rank(keys: torch.Tensor, cut: RankCut, ties_before: int, ties_here: int) -> torch.Tensor:
    """Bool mask of one chunk's keys within ``cut``, given the threshold ties of earlier
    chunks and of this one, so that ties go to the lowest indices of the whole tensor:
    ``key > t  or  (key == t  and  ties_before + #{j' <= j : key_j' == t} <= room)``.
    Only a chunk where the room runs out needs the running count."""
    if ties_before >= cut.room:
        return keys > cut.threshold
    if ties_before + ties_here <= cut.room:
        return keys >= cut.threshold
    at = keys == cut.threshold
    return (keys > cut.threshold) | (at & (at.cumsum(0) <= cut.room - ties_before))


class MaskPlanes:
    """The masks of ``k`` tasks over ``numel`` positions, bit ``i % 8`` of byte row ``i // 8``."""

    def __init__(self, tasks: int, numel: int, device: torch.device):
        rows = -(-tasks // TASKS_PER_MASK_PLANE)
        self.bytes = torch.zeros((rows, numel), dtype=torch.uint8, device=device)

    def claimed(self, lo: int, hi: int) -> torch.Tensor:
        """Bool: some task kept the position (only tasks already recorded have bits set)."""
        return functools.reduce(torch.bitwise_or, self.bytes[:, lo:hi]) != 0

    def record(self, task: int, lo: int, kept: torch.Tensor) -> None:
        """Set ``task``'s bit where ``kept`` (a bool chunk starting at ``lo``)."""
        plane, bit = divmod(task, TASKS_PER_MASK_PLANE)
        self.bytes[plane, lo:lo + kept.numel()] |= kept.to(torch.uint8) << bit

    def mask(self, task: int, lo: int, hi: int) -> torch.Tensor:
        """``task``'s mask on ``[lo, hi)`` as 0/1 uint8."""
        plane, bit = divmod(task, TASKS_PER_MASK_PLANE)
        return (self.bytes[plane, lo:hi] >> bit) & 1


class PerTensorMerge:
    """One flat tensor's per-tensor merge: the state its passes share (see ``per_tensor_merge``)."""

    def __init__(self, recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor], args: MergeArgs):
        self.recipe, self.base, self.tuned, self.args = recipe, base, tuned, args
        self.spans = chunk_spans(base.numel(), args.chunk_elements)
        self.planes = MaskPlanes(len(tuned), base.numel(), base.device)

    def task_vector(self, task: int, lo: int, hi: int) -> torch.Tensor:
        return self.tuned[task][lo:hi].to(torch.float32) - self.base[lo:hi].to(torch.float32)

    def chunk_keys(self, task: int, lo: int, hi: int) -> torch.Tensor:
        """``task``'s score keys on ``[lo, hi)``, claimed positions shifted down when conflict-aware."""
        if self.recipe.sparsifier.random:
            score = random_scores((hi - lo,), self.args.seeds[task], self.base.device, offset=lo)
        else:
            score = self.task_vector(task, lo, hi)
        keys = score_bits(score)
        if self.recipe.conflict_aware:
            keys = torch.where(self.planes.claimed(lo, hi), keys - CLAIMED_OFFSET, keys)
        return keys

    def select(self, task: int, n: int, keys: torch.Tensor) -> None:
        """Record ``task``'s ``n`` best nonzero positions, ``keys`` its scratch buffer."""
        high_counts = torch.zeros(RADIX_BINS, dtype=torch.int64, device=self.base.device)
        for lo, hi in self.spans:
            keys[lo:hi] = chunk_keys = self.chunk_keys(task, lo, hi)
            count_into(high_counts, high_digit(chunk_keys))
        cut = rank_cut(keys, high_counts, n, self.spans)
        ties_before = 0
        for (lo, hi), ties_here in zip(self.spans, ties_per_chunk(keys, cut, self.spans)):
            kept = kept_by_rank(keys[lo:hi], cut, ties_before, ties_here) & (self.task_vector(task, lo, hi) != 0)
            self.planes.record(task, lo, kept)
            ties_before += ties_here

    def select_all(self) -> None:
        """Record every task's mask, in task order (conflict-aware tasks see the earlier ones)."""
        numel = self.base.numel()
        keys = torch.empty(numel, dtype=torch.int32, device=self.base.device)
        for task, density in enumerate(self.args.densities):
            n = min(keep_count(density, max(numel, 1)), numel)
            if n > 0:
                self.select(task, n, keys)

    def merged(self, out: torch.Tensor) -> torch.Tensor:
        """The last pass: each chunk through ``masked_merge`` with the recorded masks, into ``out``."""
        for lo, hi in self.spans:
            base32 = self.base[lo:hi].to(torch.float32)
            taus = [t[lo:hi].to(torch.float32) - base32 for t in self.tuned]
            masks = [self.planes.mask(task, lo, hi) for task in range(len(self.tuned))]
            out[lo:hi] = masked_merge(self.recipe, base32, taus, masks, self.args)
        return out


def per_tensor_merge(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                     args: MergeArgs, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The magnitude or random (DARE) merge of one flat tensor, in passes over chunks of
    ``args.chunk_elements``.

    Equal bit for bit to ``masked_merge`` of ``task_masks`` on the whole tensor. For each
    task in order: a pass computes its keys (``score_bits`` of ``|tau_i|`` or of the draws
    ``random_scores(..., offset)``, claimed positions shifted down by ``CLAIMED_OFFSET``)
    into one int32 buffer shared by all tasks and counts their high digits; ``rank_cut``
    finds the threshold and its ties (``ties_per_chunk`` where they compete for room); a
    pass keeps ``kept_by_rank & (tau_i != 0)`` as bit ``i`` of a byte-per-position mask
    plane. A last pass merges each chunk with ``masked_merge`` into the result, in
    ``base``'s dtype (``out`` where given, flat like ``base``). Besides inputs and result this holds one int32 and ``ceil(k / 8)``
    uint8 tensor-sized buffers plus a few chunk-sized temporaries, whatever the tensor's
    size. On CUDA nothing leaves the device but a few scalars per task and, where ties
    compete, one count per chunk, read back in one transfer.
    """
    merge = PerTensorMerge(recipe, base, tuned, args)
    merge.select_all()
    return merge.merged(torch.empty_like(base) if out is None else out)
