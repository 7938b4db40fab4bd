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
with the float32 operations, in order, of ``combine.linear_combine`` / ``combine.ties_combine``,
then written in the output's dtype (bf16 rounded as torch rounds) while the same loop tests it
for NaN and inf: the merge's finiteness check costs no pass of its own.

* n:m (``_nm_merge``): per task and tile (1024 elements), every block's threshold at once:
  a bisection on the keys' high 16 bits in lockstep over the tile's blocks (independent
  counts overlap instead of waiting on each other; the bracket updates are arithmetic, not
  branches), started from the previous tile's range of thresholds and stopping as soon as a
  count hits the quota; the blocks where the quota falls among keys sharing a high half
  finish on the low halves of those few keys. Blocks are independent, so threads split
  them without changing a bit.
* Per tensor, magnitude and random (``_tensor_merge``, one block spanning the tensor): each
  task's threshold by a parallel 16 + 16 bit radix selection, the lowest-index-first rule by a
  prefix sum of per-group tie counts. Keys and random draws are recomputed in every pass
  rather than stored; the only tensor-sized buffers are the output and one bit per task and
  element (the masks).

Tensors reach the kernels as raw addresses, so one compiled specialisation serves every
dtype and every number of tasks (a tuple of arrays would compile again for each ``k``); the
kernels' arguments travel in the named tuples ``_Sources``, ``_Output``, ``_Blocks``,
``_Ranking`` and ``_CombineParams``, whose field types do not depend on ``k`` either.
Per-block helpers take plain arrays and are inlined: numba reference-counts every array it
unpacks from a tuple or slices into a view, and per block that costs more than the count.

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

_TILE = 1024  # elements per tile: a thread's scratch (about 2k + 6 rows) stays in L1
_OFFSET = np.uint32(CLAIMED_OFFSET)
_NO_KEY = np.uint32(0xFFFFFFFF)  # above every key (the largest is a free NaN, 0xFF800000)
_ABS = np.uint32(0x7FFFFFFF)
_EXPONENT = np.uint32(0x7F800000)  # all exponent bits set: inf or NaN
_U32 = np.uint64(0xFFFFFFFF)
_SHIFTS = tuple(np.uint64(s) for s in MIX32_SHIFTS)
_MULTIPLIERS = tuple(np.uint64(c) for c in MIX32_MULTIPLIERS)
_DRAW_SHIFT = np.uint64(32 - RANDOM_SCORE_BITS)
_DRAW_STEP = np.float32(2.0 ** -RANDOM_SCORE_BITS)
_KEY16_TOP = 0xFFFF  # the largest high (or low) half of a key
_RADIX_BITS = 16  # per-tensor selection: two histogram passes of 2^16 bins


class _Sources(NamedTuple):
    """The flat input tensors: ``addresses`` (int64: base, then the ``k`` fine-tunes),
    ``bf16`` (else float32), ``numel``."""

    addresses: np.ndarray
    bf16: bool
    numel: int


class _Output(NamedTuple):
    """The flat output tensor: ``address`` (int64), ``bf16`` (else float32)."""

    address: int
    bf16: bool


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


@njit(cache=True, inline="always")
def _trivial_threshold(quota, length):
    """``(t, room)`` keeping none of ``length`` keys (``quota <= 0``) or all of them."""
    if quota <= 0:
        return _NO_KEY, 0
    return np.uint32(0), length


@njit(cache=True, inline="always")
def _count16(keys16, first, width, value):
    """``#{j < width : keys16[first + j] >= value}``, ``value`` a uint16. The count is an
    int32 (an int64 one would vectorise in 8 lanes instead of 32); unsigned indices need no
    wraparound test, which would also stop vectorisation, and no view is made (a view is
    reference-counted)."""
    count = np.int32(0)
    start = np.uint64(first)
    for j in range(np.uint64(width)):
        count = np.int32(count + np.int32(keys16[start + j] >= value))
    return count


# The search state of a tile's blocks: one int64 array, row per field (a tuple of arrays
# would be unpacked, and reference-counted, in every per-block call).
_LO, _HI, _EXACT, _QUOTA = 0, 1, 2, 3


@njit(cache=True, inline="always")
def _probe(keys16, block_size, length, b, value, search):
    """Narrow block ``b``'s bracket ``[lo, hi]`` of its 16-bit cut (the largest ``c`` with
    ``#{key16 >= c} >= quota``) by the count at ``value``: above the quota, the cut is at
    least ``value``; below it, under ``value``; equal, the winners are exactly the keys
    ``>= value`` whatever lies below (``exact``). In arithmetic, not branches: which case
    holds is a coin toss, and a mispredicted branch costs more than the count. A bracket
    that is already one value ``v`` probed at ``v`` stays as it is."""
    first = b * block_size
    count = _count16(keys16, first, min(block_size, length - first), np.uint16(value))
    quota = search[_QUOTA, b]
    at_least, hit = np.int64(count >= quota), np.int64(count == quota)
    lo, hi = search[_LO, b], search[_HI, b]
    search[_LO, b] = lo + at_least * (value - lo)
    search[_HI, b] = hi + hit * (value - hi) + (1 - at_least) * (value - 1 - hi)
    search[_EXACT, b] = search[_EXACT, b] | hit


@njit(cache=True)
def _bisect16(keys16, block_size, length, n_blocks, search, open_blocks):
    """Bisect every block's bracket until all are one value, in rounds over the blocks
    still open (their indices compacted into ``open_blocks``): the blocks' counts are
    independent, so one block's count overlaps the next one's instead of waiting on it
    (a block-at-a-time search is latency-bound), and a settled block costs nothing more."""
    n_open = 0
    for b in range(n_blocks):
        open_blocks[n_open] = b
        n_open += search[_LO, b] < search[_HI, b]
    while n_open > 0:
        for i in range(n_open):
            b = open_blocks[i]
            _probe(keys16, block_size, length, b, (search[_LO, b] + search[_HI, b] + 1) >> 1, search)
        still_open = 0
        for i in range(n_open):
            b = open_blocks[i]
            open_blocks[still_open] = b
            still_open += search[_LO, b] < search[_HI, b]
        n_open = still_open


@njit(cache=True)
def _start_brackets(keys16, block_size, length, n_blocks, quota, tail_quota, guess, search):
    """Each block's quota and bracket: the whole 16-bit range, narrowed by probes at the
    bounds of ``guess`` (the previous tile's cuts: neighbouring blocks have similar
    thresholds); a trivial block (nothing or everything kept) gets ``[0, 0]``."""
    for b in range(n_blocks):
        width = min(block_size, length - b * block_size)
        q = quota if width == block_size else tail_quota
        search[_QUOTA, b] = q
        search[_LO, b], search[_EXACT, b] = 0, 0
        search[_HI, b] = 0 if q <= 0 or q >= width else _KEY16_TOP
    if guess[0] > guess[1]:  # no guess yet
        return
    for bound in (guess[0], guess[1] + 1):
        for b in range(n_blocks):
            if search[_LO, b] < bound <= search[_HI, b]:
                _probe(keys16, block_size, length, b, bound, search)


@njit(cache=True, inline="always")
def _kth_largest16(values, count, need):
    """``(v, room)``: the ``need``-th largest of ``values[:count]`` (``1 <= need < count``)
    and how many entries equal to it are among the ``need`` largest, by each entry's rank
    (``count`` is the few keys sharing one high half: ~3 on smooth task vectors)."""
    for i in range(count):
        above, equal = 0, 0
        for j in range(count):
            above += values[j] > values[i]
            equal += values[j] == values[i]
        if above < need <= above + equal:
            return values[i], need - above
    return 0, 0  # unreachable: some entry holds the need-th rank


@njit(cache=True)
def _finish_cuts(keys, keys16, block_size, length, n_blocks, search, lows, cuts):
    """``(t, room)`` of every block (keep ``key > t`` and the first ``room`` keys equal to
    ``t``) into ``cuts`` from its 16-bit cut ``v``: if that count was exact, every key
    ``>= v << 16``; else the keys above ``v`` and, among those whose high half is ``v``,
    the largest low halves that complete the quota (collected into ``lows``). One call
    per tile: a call per block would reference-count its arrays every time."""
    for b in range(n_blocks):
        first = b * block_size
        width = min(block_size, length - first)
        quota, cut = search[_QUOTA, b], search[_LO, b]
        if quota <= 0 or quota >= width:
            cuts[0, b], cuts[1, b] = _trivial_threshold(quota, width)
        elif search[_EXACT, b]:
            cuts[0, b], cuts[1, b] = (cut << 16) - 1, 0
        else:
            above = _count16(keys16, first, width, np.uint16(cut + 1)) if cut < _KEY16_TOP else 0
            count = 0
            for j in range(np.uint64(first), np.uint64(first + width)):  # compaction, branch-free
                lows[count] = np.uint16(keys[j] & np.uint32(_KEY16_TOP))
                count += keys16[j] == cut
            low, room = _kth_largest16(lows, count, quota - above)
            cuts[0, b], cuts[1, b] = (cut << 16) | low, room


@njit(cache=True)
def _tile_cuts(keys, keys16, block_size, length, quota, tail_quota, guess, search, lows, cuts):
    """One task's ``(t, room)`` of every block of a tile into ``cuts`` (two rows), by a
    lockstep search on the keys' high halves and an exact finish on the low halves
    (``lows``: a block of scratch); ``guess`` becomes the range of this tile's 16-bit cuts."""
    n_blocks = (length + block_size - 1) // block_size
    _start_brackets(keys16, block_size, length, n_blocks, quota, tail_quota, guess, search)
    # cuts[0] is free until _finish_cuts fills it: it holds the bisection's open blocks
    _bisect16(keys16, block_size, length, n_blocks, search, cuts[0])
    _finish_cuts(keys, keys16, block_size, length, n_blocks, search, lows, cuts)
    guess[0], guess[1] = _KEY16_TOP, 0
    for b in range(n_blocks):
        if search[_LO, b] > 0:  # a searched block (a trivial one's cut is 0)
            guess[0], guess[1] = min(guess[0], search[_LO, b]), max(guess[1], search[_LO, b])


@njit(cache=True, inline="always")
def _select(keys, tau, first, width, threshold, room, ties_seen, kept):
    """``kept[j]`` (``first <= j < first + width``) = 1.0 where ``key_j > t``, or
    ``key_j == t`` and it is at most the ``room``-th such tie counting from ``ties_seen``
    (lowest index first), and ``tau_j != 0`` (zeros are never kept); else 0.0. Returns the
    running tie count (once it reaches ``room`` only that matters: no later tie is kept).

    Only a run whose ties straddle the ``room``-th needs the running count; otherwise all of
    its ties are in (``key >= t``) or all out (``key > t``), branch-free. Indices are
    unsigned: no wraparound test, no view."""
    span = range(np.uint64(first), np.uint64(first + width))
    if ties_seen >= room:  # no tie of this run is kept
        for j in span:
            kept[j] = np.float32((keys[j] > threshold) & (tau[j] != 0))
        return ties_seen
    ties = 0
    for j in span:
        ties += keys[j] == threshold
    if ties_seen + ties <= room:  # every tie of this run is kept
        for j in span:
            kept[j] = np.float32((keys[j] >= threshold) & (tau[j] != 0))
        return ties_seen + ties
    for j in span:
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
def _combine_tile(params, base_vals, taus, kept, length, scratch):
    """``merged[:length] = base + lam * combine(deltas)`` (``merged`` the second row of
    ``scratch``) with ``deltas_i = (tau_i * s_i) * kept_i`` (a dropped entry is a signed
    zero; a non-finite one stays non-finite), ``combine`` the float32 operations, in order,
    of ``combine.ties_combine`` (sign election, agreeing sum, optional division by the
    agreeing weights) or ``combine.linear_combine`` (sum, optional division by
    ``norm_total``); ``params`` a ``_CombineParams``. Overwrites ``taus`` with the deltas."""
    scales, weights, lam, ties, normalize, norm_total = params
    total, merged, divisor = scratch
    k = taus.shape[0]
    for i in range(k):
        for j in range(length):
            delta = (taus[i, j] * scales[i]) * kept[i, j]
            taus[i, j] = delta
            total[j] = delta if i == 0 else total[j] + delta
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
        merged[j] = base_vals[j] + lam * merged[j]


@njit(cache=True)
def _store_tile(values, length, output, start):
    """Elements ``start..start+length`` of the flat output (``_Output``) = ``values``,
    rounded to bfloat16 as torch rounds (to nearest, ties to even; NaN to ``0x7FC0``) when
    the output is bf16. Returns whether any stored value is NaN or infinite: the merge's
    finiteness test, on the values as written, with no pass of its own."""
    address, bf16 = output
    bits = values.view(np.uint32)
    nonfinite = False
    if bf16:
        target = numba.carray(_pointer(address + 2 * start), length, np.uint16)
        for j in range(length):
            word = bits[j]
            rounded = np.uint16((word + np.uint32(0x7FFF) + ((word >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16))
            half = np.uint16(0x7FC0) if (word & _ABS) > _EXPONENT else rounded
            target[j] = half
            nonfinite = nonfinite | ((half & np.uint16(0x7F80)) == np.uint16(0x7F80))
    else:
        target32 = numba.carray(_pointer(address + 4 * start), length, np.uint32)
        for j in range(length):
            target32[j] = bits[j]
            nonfinite = nonfinite | ((bits[j] & _EXPONENT) == _EXPONENT)
    return nonfinite


@njit(cache=True)
def _nm_tile_masks(blocks, task, taus, free_offset, length, buffers, guess):
    """Task ``task``'s n:m mask of one tile into ``kept[task]``, claiming its positions in
    ``free_offset`` when the merge is conflict-aware; ``buffers`` from ``_nm_buffers``."""
    ns, tail_ns, block_size, conflict_aware = blocks
    keys, keys16, kept, search, lows, cuts = buffers
    tau_bits = taus[task].view(np.uint32)
    for j in range(length):
        key = (tau_bits[j] & _ABS) + free_offset[j]
        keys[j] = key
        keys16[j] = np.uint16(key >> np.uint32(16))
    _tile_cuts(keys, keys16, block_size, length, ns[task], tail_ns[task], guess, search, lows, cuts)
    tau, task_kept = taus[task], kept[task]
    for b in range(0, (length + block_size - 1) // block_size):
        first = b * block_size
        _select(keys, tau, first, min(block_size, length - first), np.uint32(cuts[0, b]),
                cuts[1, b], 0, task_kept)
    if conflict_aware:
        for j in range(length):
            free_offset[j] = np.uint32(0) if kept[task, j] != 0 else free_offset[j]


@njit(cache=True)
def _nm_buffers(k, tile_size, tile_blocks, block_size):
    """One thread group's scratch of ``_nm_tile_masks``: keys (uint32 and their high
    halves), the masks (float32, a row per task), the search state (rows ``_LO``, ``_HI``,
    ``_EXACT``, ``_QUOTA``), a block of low halves, and the cuts."""
    return (np.empty(tile_size, np.uint32), np.empty(tile_size, np.uint16),
            np.empty((k, tile_size), np.float32), np.empty((4, tile_blocks), np.int64),
            np.empty(block_size, np.uint16),
            np.empty((2, tile_blocks), np.int64))


@njit(parallel=True, cache=True)
def _nm_merge(sources, blocks, params, n_groups, output):
    """n:m merge (``blocks``, a ``_Blocks``) of the flat tensors of ``sources`` into
    ``output`` (an ``_Output``): task ``i`` keeps ``ns[i]`` of every full block
    (``tail_ns[i]`` of the short last one), in order, a position kept by an earlier task
    ranking below every free one when ``conflict_aware``. Thread groups take contiguous
    runs of whole tiles of whole blocks. Returns whether any merged value is not finite."""
    addresses, bf16, numel = sources
    block_size = blocks.block_size
    k = addresses.shape[0] - 1
    n_blocks = (numel + block_size - 1) // block_size
    tile_blocks = max(1, _TILE // block_size)
    tile_size = tile_blocks * block_size
    nonfinite = np.zeros(n_groups, np.bool_)
    for group in prange(n_groups):
        base_vals = np.empty(tile_size, np.float32)
        taus = np.empty((k, tile_size), np.float32)
        free_offset = np.empty(tile_size, np.uint32)
        buffers = _nm_buffers(k, tile_size, tile_blocks, block_size)
        guesses = np.zeros((k, 2), np.int64)
        guesses[:, 0] = _KEY16_TOP  # no guess yet
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
                _nm_tile_masks(blocks, i, taus, free_offset, length, buffers, guesses[i])
            _combine_tile(params, base_vals, taus, buffers[2], length, scratch)
            nonfinite[group] |= _store_tile(scratch[1], length, output, start)
    return nonfinite.any()


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
                seen = _select(keys, tau, 0, length, threshold, room, seen, kept)
                bit = np.uint8(1 << (task % 8))
                row = claims[task // 8, start:start + length]
                for j in range(length):
                    row[j] |= bit if kept[j] != 0 else np.uint8(0)
            if following:
                _task_tile_keys(sources, ranking, claims, task + 1, start, length, False, buffers)
                for j in range(length):
                    histograms[group, keys[j] >> _RADIX_BITS] += 1


@njit(parallel=True, cache=True)
def _combine_claims(sources, claims, params, n_groups, output):
    """``output`` = the combine (``_combine_tile``) of every tile with the masks in ``claims``;
    whether any merged value is not finite."""
    addresses, bf16, numel = sources
    k = addresses.shape[0] - 1
    nonfinite = np.zeros(n_groups, np.bool_)
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
            _combine_tile(params, base_vals, taus, kept, length, scratch)
            nonfinite[group] |= _store_tile(scratch[1], length, output, start)
    return nonfinite.any()


@njit(cache=True)
def _tensor_merge(sources, ranking, params, n_groups, output):
    """Per-tensor merge (one block spanning the flat tensor, ``ranking`` a ``_Ranking``).

    Task ``i``'s threshold comes from a radix selection on the high then the low 16 key
    bits (two histogram passes split over thread groups, ``_task_cut``); the
    lowest-index-first rule among keys equal to it, from a prefix sum of the groups' tie
    counts; a third pass records the kept positions, one bit per task and element in
    ``claims``, and, on the same tiles, counts the next task's high digits
    (``_record_and_count_next``). Keys are recomputed in every pass, not stored. A last
    pass combines into ``output`` (``_combine_claims``) and says whether any merged value
    is not finite."""
    k = sources.addresses.shape[0] - 1
    claims = np.zeros(((k + 7) // 8, sources.numel), np.uint8)
    histograms = np.zeros((n_groups, 1 << _RADIX_BITS), np.int32)  # per group: half the cache of int64
    ties_before = np.zeros(n_groups + 1, np.int64)
    for i in range(-1, k):  # step i selects task i (none at -1) and counts task i + 1's high digits
        cut = _task_cut(sources, ranking, i, claims, histograms, ties_before)
        _record_and_count_next(sources, ranking, i, cut, claims, histograms, ties_before)
    return _combine_claims(sources, claims, params, n_groups, output)


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
                args: MergeArgs, out: torch.Tensor) -> bool:
    """Merge one flat chunk into ``out`` (flat, contiguous, ``base``'s dtype; see
    ``torch_path.merge_chunk``): task ``i`` keeps ``n_i`` of every block of
    ``args.block_size`` or, for the per-tensor sparsifiers, of the whole chunk, ranked by
    ``|tau_i|`` or by ``masks.random_scores`` of ``args.seeds[i]``. Returns whether every
    merged value is finite. ``supports(recipe, base, tuned)`` must hold."""
    if not supports(recipe, base, tuned):
        raise ValueError(f"the compiled kernels do not implement {recipe} on these tensors; "
                         "check compiled.supports first")
    if out.dtype != base.dtype or not out.is_contiguous() or out.numel() != base.numel():
        raise ValueError("out must be a contiguous tensor of base's dtype and size")
    kernel = _KERNELS[recipe.sparsifier]
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    flat = [t.detach().reshape(-1).contiguous() for t in (base, *tuned)]  # alive for the call
    numel = base.numel()
    bf16 = base.dtype == torch.bfloat16
    sources = _Sources(np.array([t.data_ptr() for t in flat], np.int64), bf16, numel)
    output = _Output(out.data_ptr(), bf16)
    quotas = np.asarray(args.keep_counts(recipe, numel), np.int64)
    params = _combine_params(recipe, args)
    if kernel.blocks:
        m = args.block_size
        tail_ns = tail_keep_counts(quotas.tolist(), numel % m, m, recipe.conflict_aware)
        blocks = _Blocks(quotas, np.asarray(tail_ns, np.int64), m, recipe.conflict_aware)
        return not _nm_merge(sources, blocks, params, _thread_groups(-(-numel // m), threads), output)
    seeds = args.seeds if kernel.random_draws else ()
    draw_keys = np.array([random_score_keys(s) for s in seeds], np.uint64).reshape(-1, 2)
    ranking = _Ranking(quotas, draw_keys, recipe.conflict_aware)
    # int32 histogram bins: no group may span 2^31 elements
    groups = max(_thread_groups(-(-numel // _TILE), threads), -(-numel // (1 << 31)))
    return not _tensor_merge(sources, ranking, params, groups, output)
