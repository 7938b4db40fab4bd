"""Tensor kernels of CABS and its baselines: pure torch, no MergeKit.

Notation. ``tau_i = theta_i - theta_base`` is the task vector of fine-tuned model ``i``
(``i = 1..k`` in the order the models are listed). A *mask* ``M_i`` is a bool tensor of the
shape of ``tau_i``. The merge is

    theta = theta_base + lambda * combine_i( s_i * w_i * M_i * tau_i )

with ``w_i`` the model's weight and ``s_i = 1 / density_i`` for DARE (else 1).

Selection rule shared by every sparsifier. Each position gets a *score* (``|tau|`` for the
magnitude and n:m sparsifiers, a seeded uniform draw for DARE). Scores are compared as the
integer bit pattern of their non-negative float32 value, which orders them exactly like the
floats. A block keeps its ``n`` largest scores; among equal scores the lowest index wins.
Positions where ``tau == 0`` are never kept: they carry nothing and so claim nothing.

Every function creates new tensors on its input's device and works on CPU and CUDA alike.
"""

from __future__ import annotations

import functools
import math
import os
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Sequence

import torch

# Claimed positions are shifted below every free one; int32 score bits of a non-negative
# float are in [0, 0x7F800000], so subtracting this keeps both ranges in int32 and ordered.
_CLAIMED_OFFSET = 0x7F800001


class Sparsifier(str, Enum):
    """Which positions of a task vector survive."""

    NM = "n:m"  # top n of |tau| in every block of m contiguous elements
    MAGNITUDE = "magnitude"  # top round(density * numel) of |tau| in the whole tensor
    RANDOM = "random"  # uniformly random round(density * numel) positions (DARE)


class Combine(str, Enum):
    """How the masked, weighted task vectors are added up."""

    SUM = "sum"
    TIES = "ties"


@dataclass(frozen=True)
class Recipe:
    """One point of sparsifier x conflict-aware x combine."""

    sparsifier: Sparsifier
    conflict_aware: bool
    combine: Combine

    @property
    def rescales(self) -> bool:
        """DARE rescales kept entries by 1 / density; nothing else rescales."""
        return self.sparsifier is Sparsifier.RANDOM


def round_half_up(x: float) -> int:
    """``floor(x + 1/2)``: the rounding used for every kept count (0.5 -> 1, 2.5 -> 3)."""
    return math.floor(x + 0.5)


def keep_count(density: float, block_size: int) -> int:
    """``n = round(density * m)``: entries kept in a full block of ``m``."""
    return round_half_up(density * block_size)


def tail_keep_count(n: int, tail: int, block_size: int) -> int:
    """``round(n * r / m)``: entries kept in the short last block of ``r`` elements."""
    return round_half_up(n * tail / block_size)


def tail_keep_counts(
    ns: Sequence[int], tail: int, block_size: int, conflict_aware: bool
) -> list[int]:
    """Keep counts of the short last block of ``r = tail`` elements, one per task.

    Each task's exact share is ``q_i = n_i * r / m``. Independent tasks round it alone,
    ``round(q_i)``. Conflict-aware tasks share the block, so their counts are shared out
    by largest remainder: ``T = round(sum_i q_i)`` entries in all, ``floor(q_i)`` each, and
    one more to each of the ``T - sum floor(q_i)`` largest remainders (lower index first
    among equal ones). Then ``sum_i n_i <= m`` implies ``sum <= r``: the tail is disjoint
    whenever the full blocks are, and a single task keeps ``round(q_1)`` either way.
    """
    if not conflict_aware:
        return [tail_keep_count(n, tail, block_size) for n in ns]
    # Exact in integers: q_i = (n_i * r) / m, floor and remainder by divmod.
    floors, remainders = zip(*(divmod(n * tail, block_size) for n in ns)) if ns else ((), ())
    total = round_half_up(sum(ns) * tail / block_size)
    extra = total - sum(floors)
    by_remainder = sorted(range(len(ns)), key=lambda i: (-remainders[i], i))
    counts = list(floors)
    for i in by_remainder[:extra]:
        counts[i] += 1
    return counts


def score_bits(score: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 key of a non-negative float32 score (``|tau|`` or a draw)."""
    return score.to(torch.float32).abs().view(torch.int32)


def top_k_rows(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``keys`` in every row of a 2-D tensor.

    Ties at the threshold are broken towards the lowest column index, so the mask is a
    pure function of ``keys`` (``torch.topk`` alone leaves ties unspecified):
    ``keep = key > t  or  (key == t  and  #{j' <= j : key_j' == t} <= k - #{key > t})``
    with ``t`` the k-th largest key of the row.
    """
    rows, width = keys.shape
    if k <= 0 or width == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(keys, dtype=torch.bool)
    threshold = keys.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    above = keys > threshold
    at = keys == threshold
    room = k - above.sum(dim=1, keepdim=True)
    keep = above | at
    # Only rows with more ties at the threshold than room need the (costly) running count.
    crowded = (at.sum(dim=1, keepdim=True) > room).squeeze(1).nonzero().squeeze(1)
    if crowded.numel():
        ties = at[crowded]
        keep[crowded] = above[crowded] | (ties & (ties.cumsum(dim=1) <= room[crowded]))
    return keep


def block_top_mask(
    keys: torch.Tensor, n: int, block_size: int, tail_n: Optional[int] = None
) -> torch.Tensor:
    """n:m selection over the row-major flattening of ``keys``.

    Full blocks (rows of ``view(-1, m)``) keep ``n`` each; a tail of ``r = numel % m``
    elements is a short block keeping ``tail_n`` (default ``round(n * r / m)``). Returns a
    bool mask of ``keys.shape``.
    """
    flat = keys.reshape(-1)
    full = (flat.numel() // block_size) * block_size
    mask = torch.empty_like(flat, dtype=torch.bool)
    if full:
        mask[:full] = top_k_rows(flat[:full].view(-1, block_size), n).view(-1)
    if full < flat.numel():
        tail = flat[full:]
        k = tail_keep_count(n, tail.numel(), block_size) if tail_n is None else tail_n
        mask[full:] = top_k_rows(tail.view(1, -1), k).view(-1)
    return mask.view(keys.shape)


def nm_mask(tau: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Balanced n:m magnitude mask: per block of ``m`` the ``n`` largest ``|tau|``, zeros never kept."""
    return block_top_mask(score_bits(tau), n, block_size) & (tau != 0)


def magnitude_mask(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Per-tensor magnitude mask: the ``round(density * numel)`` largest ``|tau|``, zeros never kept."""
    numel = max(tau.numel(), 1)
    return nm_mask(tau, keep_count(density, numel), numel)


# Constants of the 32-bit integer hash ``mix32`` (Wellons' "lowbias32": xor-shift-multiply
# rounds with low avalanche bias) and the odd constant that spreads a seed into two keys.
MIX32_SHIFTS = (16, 15, 16)
MIX32_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
SEED_SPREAD = 0x9E3779B9
RANDOM_SCORE_BITS = 24
MAX_RANDOM_POSITIONS = 1 << 32
_U32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in [0, 2^32), in two 16-bit halves of ``c`` so that
    no product leaves int64 (no reliance on signed overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _U32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective hash of 32-bit words held in int64: xor-shift, multiply, xor-shift, multiply,
    xor-shift (constants ``MIX32_*``), every step mod 2^32."""
    a, b, c = MIX32_SHIFTS
    x = x ^ (x >> a)
    x = _mul32(x, MIX32_MULTIPLIERS[0])
    x = x ^ (x >> b)
    x = _mul32(x, MIX32_MULTIPLIERS[1])
    return x ^ (x >> c)


def mix32_int(x: int) -> int:
    """``mix32`` of one Python int (for seeds)."""
    return int(mix32(torch.tensor([x & _U32], dtype=torch.int64))[0])


def random_score_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys of a seed: ``k1 = mix32(seed)``, ``k2 = mix32(seed ^ SEED_SPREAD)``."""
    return mix32_int(seed), mix32_int(seed ^ SEED_SPREAD)


def random_scores(
    shape: torch.Size, seed: int, device: torch.device, offset: int = 0
) -> torch.Tensor:
    """Uniform draws in [0, 1) on a 2^-24 grid, a pure function of (seed, flat position).

    Counter-based: position ``p = offset + j`` (row-major ``j``) gets
    ``u = (mix32((mix32(p ^ k1) + k2) mod 2^32) >> 8) * 2^-24`` with ``(k1, k2)`` from
    ``random_score_keys(seed)``. Any slice of a tensor can be drawn alone (``offset``), on
    any device and thread count, with the same values; the compiled kernel computes the
    same formula in registers. Two rounds of the hash keep the draws of different seeds
    unrelated (one round would make them the same sequence, permuted).
    """
    numel = math.prod(shape)
    if offset + numel > MAX_RANDOM_POSITIONS:
        raise ValueError(
            f"random scores cover 2^32 positions per tensor; a tensor of {offset + numel} "
            "elements is beyond that"
        )
    k1, k2 = random_score_keys(seed)
    position = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    bits = mix32((mix32(position ^ k1) + k2) & _U32) >> (32 - RANDOM_SCORE_BITS)
    return (bits.to(torch.float32) * 2.0 ** -RANDOM_SCORE_BITS).view(shape)


def random_mask(tau: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE mask: ``round(density * numel)`` uniformly random positions, zeros never kept.

    Fixing the count (sampling without replacement) rather than drawing independent
    Bernoulli(density) keeps the density exact; the expectation is DARE's.
    """
    numel = max(tau.numel(), 1)
    keys = score_bits(random_scores(tau.shape, seed, tau.device))
    return block_top_mask(keys, keep_count(density, numel), numel) & (tau != 0)


def tensor_seed(seed: int, tensor_name: str, task_index: int) -> int:
    """A per-(tensor, task) seed that does not depend on execution order or threads."""
    return zlib.crc32(f"{seed}:{tensor_name}:{task_index}".encode())


def conflict_aware_masks(
    taus: Sequence[torch.Tensor],
    ns: Sequence[int],
    block_size: int,
    scores: Optional[Sequence[torch.Tensor]] = None,
) -> list[torch.Tensor]:
    """Sequential conflict-aware n:m masks (CABS's CA).

    Task ``i`` (in order) keeps ``n_i`` positions per block: first its best *free* positions
    (not kept by any task ``j < i``), and only when ``n_i`` exceeds the free count, the rest
    from claimed positions, best first. Its kept nonzero positions become claimed. With
    ``sum_i n_i <= m`` the masks are disjoint, hence ``<M_i tau_i, M_j tau_j> = 0``; the
    short tail block shares its counts by ``tail_keep_counts`` so that it is disjoint too.
    ``scores`` defaults to ``|tau_i|``; pass random draws for the DARE variant.
    """
    claimed = torch.zeros_like(taus[0], dtype=torch.bool)
    tail_ns = tail_keep_counts(ns, taus[0].numel() % block_size, block_size, True)
    masks = []
    for index, (tau, n) in enumerate(zip(taus, ns)):
        keys = score_bits(tau if scores is None else scores[index])
        keys = torch.where(claimed, keys - _CLAIMED_OFFSET, keys)
        mask = block_top_mask(keys, n, block_size, tail_ns[index]) & (tau != 0)
        claimed |= mask
        masks.append(mask)
    return masks


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


def normalizer(weights: Sequence[float]) -> float:
    """``sum_i w_i`` as the divisor of a normalized sum, with ``|sum| < 1e-8 -> 1``."""
    total = math.fsum(weights)
    return 1.0 if abs(total) < 1e-8 else total


def task_masks(
    recipe: Recipe,
    taus: Sequence[torch.Tensor],
    densities: Sequence[float],
    block_size: int,
    seeds: Sequence[int] = (),
) -> list[torch.Tensor]:
    """Masks of ``taus`` (each one tensor, or one chunk of whole n:m blocks) for ``recipe``."""
    if recipe.sparsifier is Sparsifier.NM:
        m = block_size
    else:
        m = max(taus[0].numel(), 1)
    ns = [keep_count(d, m) for d in densities]
    if recipe.conflict_aware:
        scores = None
        if recipe.sparsifier is Sparsifier.RANDOM:
            scores = [random_scores(t.shape, s, t.device) for t, s in zip(taus, seeds)]
        return conflict_aware_masks(taus, ns, m, scores)
    if recipe.sparsifier is Sparsifier.RANDOM:
        return [random_mask(t, d, s) for t, d, s in zip(taus, densities, seeds)]
    return [nm_mask(t, n, m) for t, n in zip(taus, ns)]


# Set to 1 to run the torch path on CPU too (the reference; what runs without numba).
TORCH_KERNELS_ENV = "MERGEKIT_CABS_TORCH_KERNELS"


@functools.lru_cache(maxsize=None)
def compiled_nm_module():
    """``mergekit_cabs.compiled_nm`` (numba), or ``None`` (torch only) when numba cannot be
    imported or ``MERGEKIT_CABS_TORCH_KERNELS=1``."""
    if os.environ.get(TORCH_KERNELS_ENV, "") not in ("", "0"):
        return None
    try:
        from mergekit_cabs import compiled_nm
    except ImportError:
        return None
    return compiled_nm


def merge_scales(recipe: Recipe, weights: Sequence[float], densities: Sequence[float]) -> list[float]:
    """``s_i * w_i``: the weight, times ``1 / density`` where the recipe rescales (DARE)."""
    return [w / d if recipe.rescales and d > 0 else w for w, d in zip(weights, densities)]


def merge_chunk(
    recipe: Recipe,
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    block_size: int,
    lam: float,
    normalize: bool,
    seeds: Sequence[int] = (),
    compiled: Optional[bool] = None,
    chunk_elements: Optional[int] = None,
) -> torch.Tensor:
    """``base + lambda * combine(s_i * w_i * M_i * tau_i)`` for one chunk: whole n:m blocks,
    or the whole flat tensor for the per-tensor sparsifiers.

    A dropped entry of a delta is ``(s_i * w_i * tau_i) * 0``, a signed zero. ``compiled``
    picks the numba kernel (same bits; ``None``: when installed and the tensors are CPU
    float32/bfloat16) or this torch code (``False``). The result is float32, except from
    the per-tensor torch path (``per_tensor_merge``, in passes of ``chunk_elements``),
    which writes its chunks straight into ``base``'s dtype; the caller casts either way.
    """
    if recipe.sparsifier is Sparsifier.RANDOM and len(seeds) != len(tuned):
        raise ValueError(f"random masks need one seed per model: {len(seeds)} seeds for {len(tuned)} models")
    fast = compiled_nm_module() if compiled is not False else None
    if compiled and fast is None:
        raise RuntimeError(f"compiled=True needs numba importable and {TORCH_KERNELS_ENV} unset")
    if fast is not None and fast.supports(base, tuned):
        # Per-tensor magnitude and random are n:m with one block spanning the tensor.
        m = block_size if recipe.sparsifier is Sparsifier.NM else None
        return fast.compiled_merge_chunk(
            base, tuned, merge_scales(recipe, weights, densities), weights,
            [keep_count(d, m or max(base.numel(), 1)) for d in densities], m, lam,
            recipe.combine is Combine.TIES, normalize, normalizer(weights), recipe.conflict_aware,
            seeds if recipe.sparsifier is Sparsifier.RANDOM else None,
        )
    if recipe.sparsifier is not Sparsifier.NM:
        return per_tensor_merge(recipe, base, tuned, weights, densities, lam, normalize, seeds,
                                chunk_elements)
    base32 = base.to(torch.float32)
    taus = [t.to(torch.float32) - base32 for t in tuned]
    masks = task_masks(recipe, taus, densities, block_size, seeds)
    return masked_merge(recipe, base32, taus, masks, weights, densities, lam, normalize)


def masked_merge(
    recipe: Recipe,
    base32: torch.Tensor,
    taus: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float,
    normalize: bool,
) -> torch.Tensor:
    """``base + lambda * combine_i((s_i * w_i * tau_i) * M_i)`` in float32, elementwise, so
    any slice of the inputs gives that slice of the result. ``masks`` are bool or 0/1 ints."""
    deltas = [
        (tau * scale) * mask.to(torch.float32)
        for tau, mask, scale in zip(taus, masks, merge_scales(recipe, weights, densities))
    ]
    if recipe.combine is Combine.TIES:
        merged = ties_combine(deltas, weights, normalize)
    else:
        merged = linear_combine(deltas, weights, normalize)
    return base32 + lam * merged


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


def per_tensor_merge(
    recipe: Recipe,
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    lam: float,
    normalize: bool,
    seeds: Sequence[int],
    chunk_elements: Optional[int],
) -> torch.Tensor:
    """The magnitude or random (DARE) merge of one flat tensor, in passes over chunks.

    Equal bit for bit to ``masked_merge`` of ``task_masks`` on the whole tensor. For each
    task in order: a pass computes its keys (``score_bits`` of ``|tau_i|`` or of the draws
    ``random_scores(..., offset)``, claimed positions shifted down by ``_CLAIMED_OFFSET``)
    into one int32 buffer shared by all tasks and counts their high digits; ``rank_cut``
    finds the threshold and its ties (``ties_per_chunk`` where they compete for room); a
    pass keeps ``kept_by_rank & (tau_i != 0)`` as bit ``i`` of a byte-per-position mask plane. A last pass merges each chunk with
    ``masked_merge`` into the result, in ``base``'s dtype. Besides inputs and result this
    holds one int32 and ``ceil(k / 8)`` uint8 tensor-sized buffers plus a few chunk-sized
    temporaries, whatever the tensor's size. On CUDA nothing leaves the device but a few
    scalars per task and, where ties compete, one count per chunk, read back in one transfer.
    """
    numel, device = base.numel(), base.device
    spans = chunk_spans(numel, chunk_elements)
    planes = torch.zeros((-(-len(tuned) // TASKS_PER_MASK_PLANE), numel), dtype=torch.uint8, device=device)
    keys = torch.empty(numel, dtype=torch.int32, device=device)

    def task_vector(task: int, lo: int, hi: int) -> torch.Tensor:
        return tuned[task][lo:hi].to(torch.float32) - base[lo:hi].to(torch.float32)

    def task_mask(task: int, lo: int, hi: int) -> torch.Tensor:
        plane, bit = divmod(task, TASKS_PER_MASK_PLANE)
        return (planes[plane, lo:hi] >> bit) & 1

    for task, density in enumerate(densities):
        n = min(keep_count(density, max(numel, 1)), numel)
        if n <= 0:
            continue
        high_counts = torch.zeros(RADIX_BINS, dtype=torch.int64, device=device)
        for lo, hi in spans:
            if recipe.sparsifier is Sparsifier.RANDOM:
                score = random_scores((hi - lo,), seeds[task], device, offset=lo)
            else:
                score = task_vector(task, lo, hi)
            chunk_keys = score_bits(score)
            if recipe.conflict_aware:
                claimed = functools.reduce(torch.bitwise_or, planes[:, lo:hi]) != 0
                chunk_keys = torch.where(claimed, chunk_keys - _CLAIMED_OFFSET, chunk_keys)
            keys[lo:hi] = chunk_keys
            count_into(high_counts, high_digit(chunk_keys))
        cut = rank_cut(keys, high_counts, n, spans)
        plane, bit = divmod(task, TASKS_PER_MASK_PLANE)
        ties_before = 0
        for (lo, hi), ties_here in zip(spans, ties_per_chunk(keys, cut, spans)):
            kept = kept_by_rank(keys[lo:hi], cut, ties_before, ties_here) & (task_vector(task, lo, hi) != 0)
            planes[plane, lo:hi] |= kept.to(torch.uint8) << bit
            ties_before += ties_here
    del keys
    out = torch.empty_like(base)
    for lo, hi in spans:
        base32 = base[lo:hi].to(torch.float32)
        taus = [t[lo:hi].to(torch.float32) - base32 for t in tuned]
        masks = [task_mask(task, lo, hi) for task in range(len(tuned))]
        out[lo:hi] = masked_merge(recipe, base32, taus, masks, weights, densities, lam, normalize)
    return out


def merge_tensor(
    recipe: Recipe,
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    weights: Sequence[float],
    densities: Sequence[float],
    block_size: int = 1,
    lam: float = 1.0,
    normalize: bool = False,
    seeds: Sequence[int] = (),
    chunk_blocks: Optional[int] = None,
    compiled: Optional[bool] = None,
) -> torch.Tensor:
    """Merge one tensor; the result has ``base``'s dtype, device and shape.

    n:m blocks are independent, so the flattened tensor is processed ``chunk_blocks``
    full blocks at a time (then the tail) with a result identical to one pass. The
    magnitude and random sparsifiers rank the whole tensor: the compiled kernel takes it
    in one call, the torch path in passes over chunks of ``chunk_blocks * block_size``
    elements (``per_tensor_merge``), again with an identical result.
    """
    flat_base = base.reshape(-1)
    flat_tuned = [t.reshape(-1) for t in tuned]
    if recipe.sparsifier is not Sparsifier.NM:
        merged = merge_chunk(recipe, flat_base, flat_tuned, weights, densities, block_size, lam,
                             normalize, seeds, compiled,
                             chunk_elements=chunk_blocks and chunk_blocks * block_size)
        return merged.to(base.dtype).view(base.shape)
    out = torch.empty_like(flat_base)
    spans = [(0, flat_base.numel())]
    if chunk_blocks:
        full = (flat_base.numel() // block_size) * block_size
        step = chunk_blocks * block_size
        spans = [(lo, min(lo + step, full)) for lo in range(0, full, step)]
        if full < flat_base.numel():
            spans.append((full, flat_base.numel()))
    for lo, hi in spans:
        out[lo:hi] = merge_chunk(
            recipe,
            flat_base[lo:hi],
            [t[lo:hi] for t in flat_tuned],
            weights,
            densities,
            block_size,
            lam,
            normalize,
            seeds,
            compiled,
        )
    return out.view(base.shape)
