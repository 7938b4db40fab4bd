"""The compiled path: the torch path's ``merge_chunk`` in numba, bit for bit.

numba is a dependency, so this is the default CPU path; ``MERGEKIT_CABS_TORCH_KERNELS=1``
(read by ``dispatch.compiled_module``) forces the torch path instead. ``supports`` says per
recipe and tensors whether this path implements the merge: the sparsifiers of ``_KERNELS``
and the combines of ``_TIES_FLAG``, on CPU float32/bfloat16 tensors. Any other recipe runs
on the torch path, so a sparsifier added there never runs here ranked by ``|tau|``.

Both kernels work on tiles of the flat tensors: base and task vectors are read once per tile
into float32 scratch (``tau = f32(tuned) - f32(base)``), each task's keys are formed as in
``rules`` (float32 bits of ``|tau|`` or of a random draw; free positions lifted by
``CLAIMED_OFFSET`` above every claimed one), winners are selected, and the tile is combined
with the float32 operations, in order, of ``combine.linear_combine`` / ``combine.ties_combine``.

* n:m (``_nm_merge``): each block's threshold by a search of vectorised counts (galloping
  from the last block's threshold, then bisection, stopping as soon as a count hits the
  quota); blocks are independent, so threads split them without changing a bit.
* Per tensor, magnitude and random (``_tensor_merge``, one block spanning the tensor): each
  task's threshold by a parallel 16 + 16 bit radix selection, the lowest-index-first rule by a
  prefix sum of per-group tie counts. Keys and random draws are recomputed in every pass
  rather than stored; the only tensor-sized buffers are the float32 output and one bit per
  task and element (the masks).

Tensors reach the kernels as raw addresses, so one compiled specialisation serves every
dtype and every number of tasks (a tuple of arrays would compile again for each ``k``); the
kernels' arguments travel in the named tuples ``_Sources``, ``_Blocks``, ``_Ranking`` and
``_CombineParams``, whose field types do not depend on ``k`` either.

The JIT cache is written beside this module, or, where that is not writable (a read-only
site-packages), to numba's user-wide cache directory (``tests/test_compiled_nm.py`` checks it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from mergekit_cabs.kernels.rules import (
    CLAIMED_OFFSET,
    MIX32_MULTIPLIERS,
    MIX32_SHIFTS,
    RANDOM_SCORE_BITS,
    Combine,
    MergeArgs,
    Recipe,
    Sparsifier,
    normalizer,
    random_score_keys,
    tail_keep_counts,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


@dataclass(frozen=True)
class _Kernel:
    """How a sparsifier runs here: in n:m blocks (``_nm_merge``) or in one block spanning
    the tensor (``_tensor_merge``), ranked by ``|tau|`` or by random draws."""

    blocks: bool
    random_draws: bool


_KERNELS = {
    Sparsifier.NM: _Kernel(blocks=True, random_draws=False),
    Sparsifier.MAGNITUDE: _Kernel(blocks=False, random_draws=False),
    Sparsifier.RANDOM: _Kernel(blocks=False, random_draws=True),
}
_TIES_FLAG = {Combine.SUM: False, Combine.TIES: True}  # the combines ``_combine_tile`` implements

_TILE = 4096  # elements per tile: scratch of k + 3 float32 rows stays in L1/L2
_OFFSET = np.uint32(CLAIMED_OFFSET)
_NO_KEY = np.uint32(0xFFFFFFFF)  # above every key (the largest is a free NaN, 0xFF800000)
_ABS = np.uint32(0x7FFFFFFF)
_U32 = np.uint64(0xFFFFFFFF)
_SHIFTS = tuple(np.uint64(s) for s in MIX32_SHIFTS)
_MULTIPLIERS = tuple(np.uint64(c) for c in MIX32_MULTIPLIERS)
_DRAW_SHIFT = np.uint64(32 - RANDOM_SCORE_BITS)
_DRAW_STEP = np.float32(2.0 ** -RANDOM_SCORE_BITS)
_GALLOP_STEP = np.int64(1 << 20)  # first step away from a block's hint: ~1/8 of a binade of keys
_RADIX_BITS = 16  # per-tensor selection: two histogram passes of 2^16 bins


class _Sources(NamedTuple):
    """The flat input tensors: ``addresses`` (int64: base, then the ``k`` fine-tunes),
    ``bf16`` (else float32), ``numel``."""

    addresses: np.ndarray
    bf16: bool
    numel: int


class _Blocks(NamedTuple):
    """n:m selection: task ``i`` keeps ``ns[i]`` of every full block of ``block_size``,
    ``tail_ns[i]`` of the short last one; claimed positions rank last if ``conflict_aware``."""

    ns: np.ndarray
    tail_ns: np.ndarray
    block_size: int
    conflict_aware: bool


class _Ranking(NamedTuple):
    """Per-tensor selection: task ``i`` keeps its ``quotas[i]`` largest keys, of its random
    draws when ``draw_keys`` holds a ``(k1, k2)`` row per task, else of ``|tau_i|``."""

    quotas: np.ndarray
    draw_keys: np.ndarray
    conflict_aware: bool


class _CombineParams(NamedTuple):
    """``s_i * w_i`` (``scales``), ``w_i`` (``weights``), ``lam``, TIES or sum (``ties``),
    ``normalize`` and the linear combine's divisor ``norm_total``, in float32."""

    scales: np.ndarray
    weights: np.ndarray
    lam: np.float32
    ties: bool
    normalize: bool
    norm_total: np.float32


@intrinsic
def _pointer(typingctx, address):
    """The integer ``address`` (a tensor's ``data_ptr()``) as a void pointer."""

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(types.int64), codegen


@njit(cache=True)
def _load_floats(address, start, length, bf16, tile):
    """``tile[:length]`` = float32 values of elements ``start..start+length`` of the flat
    bf16 (upper half of a float32) or float32 tensor at ``address``."""
    if bf16:
        source = numba.carray(_pointer(address + 2 * start), length, np.uint16)
        bits = tile.view(np.uint32)
        for j in range(length):
            bits[j] = np.uint32(source[j]) << np.uint32(16)
    else:
        source32 = numba.carray(_pointer(address + 4 * start), length, np.float32)
        for j in range(length):
            tile[j] = source32[j]


@njit(cache=True)
def _load_tau(address, start, length, bf16, base_vals, tau):
    """``tau[:length] = f32(tuned) - f32(base)`` on the tile, ``tuned`` at ``address``."""
    _load_floats(address, start, length, bf16, tau)
    for j in range(length):
        tau[j] = tau[j] - base_vals[j]


@njit(cache=True)
def _mix32(x):
    """``rules.mix32`` of a 32-bit word held in uint64."""
    x ^= x >> _SHIFTS[0]
    x = (x * _MULTIPLIERS[0]) & _U32
    x ^= x >> _SHIFTS[1]
    x = (x * _MULTIPLIERS[1]) & _U32
    return x ^ (x >> _SHIFTS[2])


@njit(cache=True)
def _random_draws(k1, k2, first, length, tile):
    """``masks.random_scores`` of positions ``first..first+length``:
    ``u = (mix32((mix32(p ^ k1) + k2) mod 2^32) >> 8) * 2^-24``."""
    for j in range(length):
        position = np.uint64(first + j)
        bits = _mix32((_mix32(position ^ k1) + k2) & _U32) >> _DRAW_SHIFT
        tile[j] = np.float32(bits) * _DRAW_STEP


@njit(cache=True)
def _lifted_keys(score_bits, free_offset, length, keys):
    """``keys[j]`` = float32 bits of ``|score_j|`` + ``free_offset[j]``: the torch path's key
    (claimed positions minus ``CLAIMED_OFFSET``) shifted up by that offset to stay unsigned;
    free positions (offset) rank above every claimed one (0), order otherwise unchanged."""
    for j in range(length):
        keys[j] = (score_bits[j] & _ABS) + free_offset[j]


@njit(cache=True)
def _from_top(histogram, quota):
    """The bin holding the ``quota``-th largest entry and how many entries lie above it."""
    above = 0
    for b in range(histogram.shape[0] - 1, -1, -1):
        if above + histogram[b] >= quota:
            return b, above
        above += histogram[b]
    return 0, above


@njit(cache=True)
def _trivial_threshold(quota, length):
    """``(t, room)`` keeping none of ``length`` keys (``quota <= 0``) or all of them."""
    if quota <= 0:
        return _NO_KEY, 0
    return np.uint32(0), length


@njit(cache=True)
def _count_at_least(keys, length, threshold):
    """``#{j < length : keys[j] >= threshold}`` (branch-free: vectorises)."""
    count = 0
    for j in range(length):
        count += keys[j] >= threshold
    return count


@njit(cache=True)
def _block_threshold(keys, length, quota, hint):
    """``(t, room)`` of a top-``quota`` selection of ``keys[:length]``: keep ``key > t`` and
    the first ``room`` keys equal to ``t``.

    Search, one vectorised count per step, for the largest ``t`` with ``#{key >= t} >= quota``
    (the quota-th largest key; then ``room = quota - #{key > t}``) inside ``[min, max]``. It
    stops early at a ``c`` with exactly ``quota`` keys ``>= c``: those are the winners,
    whatever the keys below, so ``(c - 1, 0)``. Neighbouring blocks have similar thresholds,
    so the first probe is ``hint`` (the last block's), then probes gallop away from it in
    growing steps until the count crosses ``quota``, then bisection. The result does not
    depend on ``hint``; the step count does: ~log2(|t - hint| / gap at t), not 32."""
    if quota <= 0 or quota >= length:
        return _trivial_threshold(quota, length)
    low, high = keys[0], keys[0]
    for j in range(length):
        low = min(low, keys[j])
        high = max(high, keys[j])
    lo, hi = np.int64(low), np.int64(high)
    probe, step = np.int64(hint), _GALLOP_STEP
    galloping, rising, first = True, True, True
    while lo < hi:
        galloping = galloping and lo < probe <= hi
        middle = probe if galloping else (lo + hi + 1) >> 1
        count = _count_at_least(keys, length, np.uint32(middle))
        if count == quota:
            return np.uint32(middle - 1), 0
        if count > quota:
            lo = middle
        else:
            hi = middle - 1
        rising = count > quota if first else rising
        first = False
        galloping = galloping and (count > quota) == rising
        probe = middle + step if rising else middle - step
        step <<= 2
    return np.uint32(lo), quota - _count_at_least(keys, length, np.uint32(lo + 1))


@njit(cache=True)
def _select(keys, tau, length, threshold, room, ties_seen, kept):
    """``kept[j]`` = 1.0 where ``key_j > t``, or ``key_j == t`` and it is at most the
    ``room``-th such tie counting from ``ties_seen`` (lowest index first), and ``tau_j != 0``
    (zeros are never kept); else 0.0. Returns the running tie count (once it reaches
    ``room`` only that matters: no later tie is kept).

    Only a run whose ties straddle the ``room``-th needs the running count; otherwise all of
    its ties are in (``key >= t``) or all out (``key > t``), branch-free."""
    if ties_seen >= room:  # no tie of this run is kept
        for j in range(length):
            kept[j] = np.float32((keys[j] > threshold) & (tau[j] != 0))
        return ties_seen
    ties = 0
    for j in range(length):
        ties += keys[j] == threshold
    if ties_seen + ties <= room:  # every tie of this run is kept
        for j in range(length):
            kept[j] = np.float32((keys[j] >= threshold) & (tau[j] != 0))
        return ties_seen + ties
    for j in range(length):
        key = keys[j]
        tie = key == threshold
        ties_seen += tie
        chosen = (key > threshold) | (tie & (ties_seen <= room))
        kept[j] = np.float32(chosen & (tau[j] != 0))
    return ties_seen


@njit(cache=True)
def _combine_scratch(size):
    """Scratch of ``_combine_tile``: the running total, the merged sum and the TIES divisor."""
    return np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, np.float32)


@njit(cache=True)
def _combine_tile(params, base_vals, taus, kept, length, scratch, out):
    """``out[:length] = base + lam * combine(deltas)`` with ``deltas_i = (tau_i * s_i) * kept_i``
    (a dropped entry is a signed zero; a non-finite one stays non-finite), ``combine`` the
    float32 operations, in order, of ``combine.ties_combine`` (sign election, agreeing sum,
    optional division by the agreeing weights) or ``combine.linear_combine`` (sum, optional
    division by ``norm_total``); ``params`` a ``_CombineParams``. Overwrites ``taus`` with
    the deltas."""
    scales, weights, lam, ties, normalize, norm_total = params
    total, merged, divisor = scratch
    k = taus.shape[0]
    for i in range(k):
        for j in range(length):
            taus[i, j] = (taus[i, j] * scales[i]) * kept[i, j]
    for j in range(length):
        total[j] = taus[0, j]
    for i in range(1, k):
        for j in range(length):
            total[j] = total[j] + taus[i, j]
    if ties:
        merged[:length] = 0
        divisor[:length] = 0
        for i in range(k):
            for j in range(length):
                delta = taus[i, j]
                agree = np.float32((delta > 0) if total[j] >= 0 else (delta < 0))
                merged[j] = merged[j] + delta * agree
                divisor[j] = divisor[j] + agree * weights[i]
        if normalize:
            for j in range(length):
                merged[j] = merged[j] / (np.float32(1.0) if divisor[j] == 0 else divisor[j])
    else:
        for j in range(length):
            merged[j] = total[j] / norm_total if normalize else total[j]
    for j in range(length):
        out[j] = base_vals[j] + lam * merged[j]


@njit(parallel=True, cache=True)
def _nm_merge(sources, blocks, params, n_groups, out):
    """n:m merge (``blocks``, a ``_Blocks``) of the flat tensors of ``sources``: task ``i``
    keeps ``ns[i]`` of every full block (``tail_ns[i]`` of the short last one), in order, a
    position kept by an earlier task ranking below every free one when ``conflict_aware``.
    Thread groups take contiguous runs of whole tiles of whole blocks."""
    addresses, bf16, numel = sources
    ns, tail_ns, block_size, conflict_aware = blocks
    k = addresses.shape[0] - 1
    n_blocks = (numel + block_size - 1) // block_size
    tile_blocks = max(1, _TILE // block_size)
    tile_size = tile_blocks * block_size
    for group in prange(n_groups):
        base_vals = np.empty(tile_size, np.float32)
        taus = np.empty((k, tile_size), np.float32)
        kept = np.empty((k, tile_size), np.float32)
        keys = np.empty(tile_size, np.uint32)
        free_offset = np.empty(tile_size, np.uint32)
        hints = np.zeros(k, np.int64)  # each task's last threshold: the next block's first probe
        scratch = _combine_scratch(tile_size)
        first_block = group * n_blocks // n_groups
        stop_block = (group + 1) * n_blocks // n_groups
        for tile_block in range(first_block, stop_block, tile_blocks):
            start = tile_block * block_size
            length = min(stop_block * block_size, numel, start + tile_size) - start
            _load_floats(addresses[0], start, length, bf16, base_vals)
            for i in range(k):
                _load_tau(addresses[i + 1], start, length, bf16, base_vals, taus[i])
            free_offset[:length] = _OFFSET
            for i in range(k):
                hint = hints[i]
                _lifted_keys(taus[i].view(np.uint32), free_offset, length, keys)
                for lo in range(0, length, block_size):
                    width = min(block_size, length - lo)
                    quota = ns[i] if width == block_size else tail_ns[i]
                    block_keys = keys[lo:lo + width]
                    threshold, room = _block_threshold(block_keys, width, quota, hint)
                    hint = np.int64(threshold) + 1
                    _select(block_keys, taus[i, lo:lo + width], width, threshold, room, 0,
                            kept[i, lo:lo + width])
                hints[i] = hint
                if conflict_aware:
                    for j in range(length):
                        free_offset[j] = np.uint32(0) if kept[i, j] != 0 else free_offset[j]
            _combine_tile(params, base_vals, taus, kept, length, scratch, out[start:start + length])


@njit(cache=True)
def _group_span(group, n_groups, numel):
    """Element range of one thread group: whole tiles, contiguous, in group order."""
    n_tiles = (numel + _TILE - 1) // _TILE
    return (group * n_tiles // n_groups) * _TILE, min(((group + 1) * n_tiles // n_groups) * _TILE, numel)


@njit(cache=True)
def _free_offsets(claims, task, start, length, conflict_aware, free_offset):
    """``free_offset[j]`` = ``CLAIMED_OFFSET`` unless a task before ``task`` kept position
    ``start + j`` (bit ``i`` of ``claims[i // 8]``) and the merge is conflict-aware, else 0."""
    free_offset[:length] = _OFFSET
    if not conflict_aware or task == 0:
        return
    for row in range(task // 8 + 1):
        earlier = np.uint8(0xFF) if row < task // 8 else np.uint8((1 << (task % 8)) - 1)
        bits = claims[row, start:start + length]
        for j in range(length):
            free_offset[j] = np.uint32(0) if bits[j] & earlier else free_offset[j]


@njit(cache=True)
def _tile_key_buffers():
    """One thread group's scratch for ``_task_tile_keys``: base values, tau and draws
    (float32), free offsets and keys (uint32), a tile each."""
    return (np.empty(_TILE, np.float32), np.empty(_TILE, np.float32), np.empty(_TILE, np.float32),
            np.empty(_TILE, np.uint32), np.empty(_TILE, np.uint32))


@njit(cache=True)
def _task_tile_keys(sources, ranking, claims, task, start, length, need_tau, buffers):
    """Keys of ``task`` on one tile (``|tau|`` or its random draws, lifted when free) into
    ``buffers``' keys and, in its ``tau``, the float32 task vector there (for random keys
    only if ``need_tau``); ``buffers`` from ``_tile_key_buffers``."""
    addresses, bf16, _ = sources
    _, draw_keys, conflict_aware = ranking
    base_vals, tau, draws, free_offset, keys = buffers
    _free_offsets(claims, task, start, length, conflict_aware, free_offset)
    random = draw_keys.shape[0] > 0
    if need_tau or not random:
        _load_floats(addresses[0], start, length, bf16, base_vals)
        _load_tau(addresses[task + 1], start, length, bf16, base_vals, tau)
    if random:
        _random_draws(draw_keys[task, 0], draw_keys[task, 1], start, length, draws)
        _lifted_keys(draws.view(np.uint32), free_offset, length, keys)
    else:
        _lifted_keys(tau.view(np.uint32), free_offset, length, keys)


@njit(cache=True)
def _is_selective(quota, numel):
    """Whether a top-``quota`` selection of ``numel`` keys needs a threshold search."""
    return 0 < quota < numel


@njit(parallel=True, cache=True)
def _task_cut(sources, ranking, task, claims, histograms, ties_before):
    """``(t, room)`` of ``task``'s selection (none for ``task < 0``), ``histograms`` holding
    the thread groups' counts of its high key digits: the threshold's high digit from their
    sum, then a pass counting low digits within it, and in ``ties_before[g]`` the keys equal
    to ``t`` in groups before ``g`` (their prefix sum; all 0 where no search is needed)."""
    numel = sources.numel
    n_groups = histograms.shape[0]
    ties_before[:] = 0
    if task < 0:
        return _NO_KEY, 0
    quota = ranking.quotas[task]
    if not _is_selective(quota, numel):
        return _trivial_threshold(quota, numel)
    low_bits = np.uint32((1 << _RADIX_BITS) - 1)
    high, above = _from_top(histograms.sum(axis=0), quota)
    histograms[:] = 0
    for group in prange(n_groups):
        buffers = _tile_key_buffers()
        keys = buffers[4]
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, _TILE):
            length = min(_TILE, stop - start)
            _task_tile_keys(sources, ranking, claims, task, start, length, False, buffers)
            for j in range(length):
                if keys[j] >> _RADIX_BITS == high:
                    histograms[group, keys[j] & low_bits] += 1
    low, above_low = _from_top(histograms.sum(axis=0), quota - above)
    for group in range(n_groups):  # each group's keys equal to the threshold: its bin `low`
        ties_before[group + 1] = ties_before[group] + histograms[group, low]
    return np.uint32((high << _RADIX_BITS) | low), quota - above - above_low


@njit(parallel=True, cache=True)
def _record_and_count_next(sources, ranking, task, cut, claims, histograms, ties_before):
    """With ``task``'s ``cut`` (``(t, room)``; none for ``task < 0``) record its kept
    positions as its bit in ``claims`` and, on the same tiles, count the high key digits of
    ``task + 1`` (where it needs a search) into ``histograms``, one row per thread group."""
    numel = sources.numel
    n_groups = histograms.shape[0]
    threshold, room = cut
    k = sources.addresses.shape[0] - 1
    following = task + 1 < k and _is_selective(ranking.quotas[task + 1], numel)
    histograms[:] = 0
    for group in prange(n_groups):
        buffers = _tile_key_buffers()
        tau, keys = buffers[1], buffers[4]
        kept = np.empty(_TILE, np.float32)
        seen = ties_before[group]
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, _TILE):
            length = min(_TILE, stop - start)
            if task >= 0:
                _task_tile_keys(sources, ranking, claims, task, start, length, True, buffers)
                seen = _select(keys, tau, length, threshold, room, seen, kept)
                bit = np.uint8(1 << (task % 8))
                row = claims[task // 8, start:start + length]
                for j in range(length):
                    row[j] |= bit if kept[j] != 0 else np.uint8(0)
            if following:
                _task_tile_keys(sources, ranking, claims, task + 1, start, length, False, buffers)
                for j in range(length):
                    histograms[group, keys[j] >> _RADIX_BITS] += 1


@njit(parallel=True, cache=True)
def _combine_claims(sources, claims, params, n_groups, out):
    """``out`` = the combine (``_combine_tile``) of every tile with the masks in ``claims``."""
    addresses, bf16, numel = sources
    k = addresses.shape[0] - 1
    for group in prange(n_groups):
        base_vals = np.empty(_TILE, np.float32)
        taus = np.empty((k, _TILE), np.float32)
        kept = np.empty((k, _TILE), np.float32)
        scratch = _combine_scratch(_TILE)
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, _TILE):
            length = min(_TILE, stop - start)
            _load_floats(addresses[0], start, length, bf16, base_vals)
            for i in range(k):
                _load_tau(addresses[i + 1], start, length, bf16, base_vals, taus[i])
                bit = np.uint8(1 << (i % 8))
                row = claims[i // 8, start:start + length]
                for j in range(length):
                    kept[i, j] = np.float32((row[j] & bit) != 0)
            _combine_tile(params, base_vals, taus, kept, length, scratch, out[start:start + length])


@njit(cache=True)
def _tensor_merge(sources, ranking, params, n_groups, out):
    """Per-tensor merge (one block spanning the flat tensor, ``ranking`` a ``_Ranking``).

    Task ``i``'s threshold comes from a radix selection on the high then the low 16 key
    bits (two histogram passes split over thread groups, ``_task_cut``); the
    lowest-index-first rule among keys equal to it, from a prefix sum of the groups' tie
    counts; a third pass records the kept positions, one bit per task and element in
    ``claims``, and, on the same tiles, counts the next task's high digits
    (``_record_and_count_next``). Keys are recomputed in every pass, not stored. A last
    pass combines (``_combine_claims``)."""
    k = sources.addresses.shape[0] - 1
    claims = np.zeros(((k + 7) // 8, sources.numel), np.uint8)
    histograms = np.zeros((n_groups, 1 << _RADIX_BITS), np.int64)
    ties_before = np.zeros(n_groups + 1, np.int64)
    for i in range(-1, k):  # step i selects task i (none at -1) and counts task i + 1's high digits
        cut = _task_cut(sources, ranking, i, claims, histograms, ties_before)
        _record_and_count_next(sources, ranking, i, cut, claims, histograms, ties_before)
    _combine_claims(sources, claims, params, n_groups, out)


def supports(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor]) -> bool:
    """Whether this path implements ``recipe`` (its sparsifier in ``_KERNELS``, its combine
    in ``_TIES_FLAG``) on these tensors: CPU, float32 or bfloat16, all of one dtype."""
    return (
        recipe.sparsifier in _KERNELS and recipe.combine in _TIES_FLAG
        and base.device.type == "cpu" and base.dtype in SUPPORTED_DTYPES
        and all(t.dtype == base.dtype and t.device.type == "cpu" for t in tuned)
    )


def _combine_params(recipe: Recipe, args: MergeArgs) -> _CombineParams:
    return _CombineParams(np.asarray(args.scales(recipe), np.float32),
                          np.asarray(args.weights, np.float32), np.float32(args.lam),
                          _TIES_FLAG[recipe.combine], args.normalize,
                          np.float32(normalizer(args.weights)))


def _thread_groups(units: int, threads: int) -> int:
    """Work items of a parallel kernel: four per thread, at most one per block or tile."""
    return max(1, min(units, 4 * threads))


def merge_chunk(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                args: MergeArgs) -> torch.Tensor:
    """Float32 result of the merge of one flat chunk (see ``torch_path.merge_chunk``): task
    ``i`` keeps ``n_i`` of every block of ``args.block_size`` or, for the per-tensor
    sparsifiers, of the whole chunk, ranked by ``|tau_i|`` or by ``masks.random_scores`` of
    ``args.seeds[i]``. ``supports(recipe, base, tuned)`` must hold."""
    if not supports(recipe, base, tuned):
        raise ValueError(f"the compiled kernels do not implement {recipe} on these tensors; "
                         "check compiled.supports first")
    kernel = _KERNELS[recipe.sparsifier]
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    flat = [t.detach().reshape(-1).contiguous() for t in (base, *tuned)]  # alive for the call
    numel = base.numel()
    sources = _Sources(np.array([t.data_ptr() for t in flat], np.int64), base.dtype == torch.bfloat16, numel)
    quotas = np.asarray(args.keep_counts(recipe, numel), np.int64)
    out = np.empty(numel, np.float32)
    if kernel.blocks:
        m = args.block_size
        tail_ns = tail_keep_counts(quotas.tolist(), numel % m, m, recipe.conflict_aware)
        blocks = _Blocks(quotas, np.asarray(tail_ns, np.int64), m, recipe.conflict_aware)
        _nm_merge(sources, blocks, _combine_params(recipe, args), _thread_groups(-(-numel // m), threads), out)
    else:
        seeds = args.seeds if kernel.random_draws else ()
        draw_keys = np.array([random_score_keys(s) for s in seeds], np.uint64).reshape(-1, 2)
        ranking = _Ranking(quotas, draw_keys, recipe.conflict_aware)
        _tensor_merge(sources, ranking, _combine_params(recipe, args), _thread_groups(-(-numel // _TILE), threads), out)
    return torch.from_numpy(out)
