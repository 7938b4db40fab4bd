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
  a search on the keys' high 16 bits in lockstep over the tile's blocks (independent
  counts overlap instead of waiting on each other; the bracket updates are arithmetic, not
  branches; interpolated probes alternate with bisections), started from the previous
  tile's range of thresholds and stopping as soon as a count hits the quota; the blocks
  where the quota falls among keys sharing a high half finish on the low halves of those
  keys, at once when those are all alike (a bf16 fine-tune's few-ulp ``tau``). The kept
  ties, lowest index first, come from a bit mask per 64 keys. Blocks are independent, so
  threads split them without changing a bit.
* Per tensor, magnitude and random (``_tensor_merge``, one block spanning the tensor): each
  task's threshold by a parallel 16 + 16 bit radix selection whose low digits come from the
  keys gathered, in the pass that counts the high digits, inside a window predicted from a
  sample (a second pass only where the window missed), the lowest-index-first rule by a
  prefix sum of per-group tie counts. Keys and random draws are recomputed in every pass
  rather than stored; the only tensor-sized buffers are the output, one bit per task and
  element (the masks) and the gathered candidates (at most 1/16 of the keys).

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
from llvmlite import ir
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
_COMMON_LOW = np.uint32(CLAIMED_OFFSET & 0xFFFF)  # the low digit of a free key whose tau is exact in 16 bits
_NO_KEY = np.uint32(0xFFFFFFFF)  # above every key (the largest is a free NaN, 0xFF800000)
_ABS = np.uint32(0x7FFFFFFF)
_EXPONENT = np.uint32(0x7F800000)  # all exponent bits set: inf or NaN
_U32 = np.uint64(0xFFFFFFFF)
_SHIFTS = tuple(np.uint64(s) for s in MIX32_SHIFTS)
_MULTIPLIERS = tuple(np.uint64(c) for c in MIX32_MULTIPLIERS)
_DRAW_SHIFT = np.uint64(32 - RANDOM_SCORE_BITS)
_DRAW_STEP = np.float32(2.0 ** -RANDOM_SCORE_BITS)
_KEY16_TOP = 0xFFFF  # the largest high (or low) half of a key
_RADIX_BITS = 16  # per-tensor selection: two histogram digits of 16 bits
# Per-tensor selection: one run of _SAMPLE_RUN keys (two cache lines of bf16) in _SAMPLE_STRIDE
# (a prime: the runs fall at every column offset of a row-major matrix) predicts a task's
# threshold in tensors of at least _SAMPLE_MIN keys; the high digits within _SAMPLE_SIGMAS
# deviations of its rank in the sample (binomial; for |tau| each run counted as _SAMPLE_RUN
# alike keys: neighbours share a row's scale) are gathered, if they number at most
# _WINDOW_DIGITS.
_SAMPLE_RUN = 64
_SAMPLE_STRIDE = 127
_SAMPLE_MIN = 1 << 18
_SAMPLE_SIGMAS = 4
_WINDOW_DIGITS = 256
_CANDIDATE_SHARE = 16  # a thread group stores up to 1/16 of its keys (and a tile) as candidates
GATHERED, PASSED = 1, 2  # how _low_digit_counts found a task's low digits


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


class _Candidates(NamedTuple):
    """Per-tensor selection: the keys of the task counted next whose high digit lies in
    ``window`` (int64 ``[first, last]`` digits; none when ``first > last``), gathered while
    its high digits are counted, so that its low digits need no pass of their own. Per
    thread group: ``common_lows`` counts, per window digit, the keys whose low digit is
    ``_COMMON_LOW`` (most of a bf16 fine-tune's: its ``tau`` is a few ulps, exact in 16
    bits); the others are counted in ``counts`` and the first ``keys.shape[1]`` of them
    stored in ``keys``."""

    window: np.ndarray
    counts: np.ndarray
    keys: np.ndarray
    common_lows: np.ndarray


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
def _count_and_neighbours(keys16, first, width, value):
    """``(count, up, down)`` over ``keys16[first:first + width]``: how many keys are
    ``>= value``, the least of those and the greatest key below ``value`` (0xFFFF and 0
    where there is none), in one branch-free pass (masked min and max). The count is an
    int32 (an int64 one would vectorise in 8 lanes instead of 32); unsigned indices need no
    wraparound test, which would also stop vectorisation, and no view is made (a view is
    reference-counted)."""
    count = np.int32(0)
    up, down = np.uint16(_KEY16_TOP), np.uint16(0)
    start = np.uint64(first)
    for j in range(np.uint64(width)):
        key = keys16[start + j]
        at_least = key >= value
        count = np.int32(count + np.int32(at_least))
        up = min(up, key if at_least else np.uint16(_KEY16_TOP))
        down = max(down, np.uint16(0) if at_least else key)
    return count, np.int64(up), np.int64(down)


# The search state of a tile's blocks: one int64 array, row per field (a tuple of arrays
# would be unpacked, and reference-counted, in every per-block call). ``_AT_LO`` and
# ``_ABOVE``: the counts at ``lo`` and at ``hi + 1`` (the block's width and 0 before any
# probe), for the interpolated probes and so that the finish need not count again.
_LO, _HI, _EXACT, _QUOTA, _ABOVE, _AT_LO = 0, 1, 2, 3, 4, 5
SEARCH_ROWS = 6


@njit(cache=True, inline="always")
def _probe(keys16, block_size, length, b, value, search):
    """Narrow block ``b``'s bracket ``[lo, hi]`` of its 16-bit cut (the largest ``c`` with
    ``#{key16 >= c} >= quota``: the quota-th largest key) by the count at ``value``: above
    the quota, the cut is at least the least key ``>= value``; below it, at most the
    greatest key under ``value`` (the bracket's ends snap to keys of the block, so a few
    distinct values, as in a bf16 fine-tune's few-ulp ``tau``, settle in a few probes);
    equal, the winners are exactly the keys ``>= value`` whatever lies below (``exact``).
    In arithmetic, not branches: which case holds is a coin toss, and a mispredicted branch
    costs more than the count. The count is kept as the count at the new ``lo`` or at the
    new ``hi + 1``; ``value`` must lie in ``(lo, hi]``."""
    first = b * block_size
    count, up, down = _count_and_neighbours(keys16, first, min(block_size, length - first), np.uint16(value))
    quota = search[_QUOTA, b]
    at_least, hit = np.int64(count >= quota), np.int64(count == quota)
    lo, hi = search[_LO, b], search[_HI, b]
    raised = value + (1 - hit) * (up - value)
    search[_LO, b] = lo + at_least * (raised - lo)
    search[_HI, b] = hi + hit * (value - hi) + (1 - at_least) * (down - hi)
    search[_EXACT, b] = search[_EXACT, b] | hit
    search[_ABOVE, b] = search[_ABOVE, b] + (1 - at_least) * (count - search[_ABOVE, b])
    search[_AT_LO, b] = search[_AT_LO, b] + at_least * (count - search[_AT_LO, b])


@njit(cache=True, inline="always")
def _next_probe(search, b, interpolate):
    """Where to count block ``b`` next, inside ``(lo, hi]``: the midpoint, or, when
    ``interpolate``, where the counts at ``lo`` and at ``hi + 1`` put the quota if the keys
    between them were spread evenly (smooth task vectors: a probe or two from the cut)."""
    lo, hi = search[_LO, b], search[_HI, b]
    if not interpolate:
        return (lo + hi + 1) >> 1
    at_lo = search[_AT_LO, b]
    share = (at_lo - search[_QUOTA, b]) / (at_lo - search[_ABOVE, b])  # in [0, 1)
    return lo + 1 + np.int64(share * (hi - lo))


@njit(cache=True)
def _search16(keys16, block_size, length, n_blocks, search, open_blocks):
    """Narrow every block's bracket until all are one value, in rounds over the blocks
    still open (their indices compacted into ``open_blocks``): the blocks' counts are
    independent, so one block's count overlaps the next one's instead of waiting on it
    (a block-at-a-time search is latency-bound), and a settled block costs nothing more.
    Rounds alternate an interpolated probe with a bisection: on smooth keys interpolation
    lands near the cut (30 % fewer probes on Gaussian task vectors, 10 % on a bf16
    fine-tune's few-ulp steps), and the bisections keep the rounds under twice 17."""
    n_open = 0
    for b in range(n_blocks):
        open_blocks[n_open] = b
        n_open += search[_LO, b] < search[_HI, b]
    interpolate = True
    while n_open > 0:
        for i in range(n_open):
            b = open_blocks[i]
            _probe(keys16, block_size, length, b, _next_probe(search, b, interpolate), search)
        still_open = 0
        for i in range(n_open):
            b = open_blocks[i]
            open_blocks[still_open] = b
            still_open += search[_LO, b] < search[_HI, b]
        n_open = still_open
        interpolate = not interpolate


@njit(cache=True)
def _start_brackets(keys16, block_size, length, n_blocks, quota, tail_quota, guess, search):
    """Each block's quota and bracket: the whole 16-bit range, narrowed by probes at the
    bounds of ``guess`` (the previous tile's cuts: neighbouring blocks have similar
    thresholds); a trivial block (nothing or everything kept) gets ``[0, 0]``."""
    for b in range(n_blocks):
        width = min(block_size, length - b * block_size)
        q = quota if width == block_size else tail_quota
        search[_QUOTA, b] = q
        search[_LO, b], search[_EXACT, b], search[_ABOVE, b], search[_AT_LO, b] = 0, 0, 0, width
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


@njit(cache=True, inline="always")
def _shared_low(keys, keys16, first, width, cut):
    """The low half shared by every key of the block whose high half is ``cut``, or -1 when
    they differ. The common case: a bf16 fine-tune's ``tau`` is a few ulps of its weight,
    exact in 16 bits, so every low half is 0 and the finish needs no ranking. Branch-free
    (a masked min and max)."""
    smallest, largest = np.uint32(_KEY16_TOP), np.uint32(0)
    for j in range(np.uint64(first), np.uint64(first + width)):
        match = keys16[j] == cut
        low = keys[j] & np.uint32(_KEY16_TOP)
        smallest = min(smallest, low if match else np.uint32(_KEY16_TOP))
        largest = max(largest, low if match else np.uint32(0))
    return np.int64(smallest) if smallest == largest else np.int64(-1)


@njit(cache=True)
def _finish_cuts(keys, keys16, block_size, length, n_blocks, search, lows, cuts):
    """``(t, room)`` of every block (keep ``key > t`` and the first ``room`` keys equal to
    ``t``) into ``cuts`` from its 16-bit cut ``v``: if that count was exact, every key
    ``>= v << 16``; else the ``above`` keys over ``v`` (counted by the search) and, among
    those whose high half is ``v``, the largest low halves that complete the quota: all of
    them alike (``_shared_low``) or ranked after collecting them into ``lows``. One call
    per tile: a call per block would reference-count its arrays every time."""
    for b in range(n_blocks):
        first = b * block_size
        width = min(block_size, length - first)
        quota, cut = search[_QUOTA, b], search[_LO, b]
        if quota <= 0 or quota >= width:
            cuts[0, b], cuts[1, b] = _trivial_threshold(quota, width)
            continue
        if search[_EXACT, b]:
            cuts[0, b], cuts[1, b] = (cut << 16) - 1, 0
            continue
        need = quota - search[_ABOVE, b]
        low = _shared_low(keys, keys16, first, width, cut)
        if low < 0:
            count = 0
            for j in range(np.uint64(first), np.uint64(first + width)):  # compaction, branch-free
                lows[count] = np.uint16(keys[j] & np.uint32(_KEY16_TOP))
                count += keys16[j] == cut
            low, need = _kth_largest16(lows, count, need)
        cuts[0, b], cuts[1, b] = (cut << 16) | low, need


@njit(cache=True)
def _tile_cuts(keys, keys16, block_size, length, quota, tail_quota, guess, search, lows, cuts):
    """One task's ``(t, room)`` of every block of a tile into ``cuts`` (two rows), by a
    lockstep search on the keys' high halves and an exact finish on the low halves
    (``lows``: a block of scratch); ``guess`` becomes the range of this tile's 16-bit cuts."""
    n_blocks = (length + block_size - 1) // block_size
    _start_brackets(keys16, block_size, length, n_blocks, quota, tail_quota, guess, search)
    # cuts[0] is free until _finish_cuts fills it: it holds the search's open blocks
    _search16(keys16, block_size, length, n_blocks, search, cuts[0])
    _finish_cuts(keys, keys16, block_size, length, n_blocks, search, lows, cuts)
    guess[0], guess[1] = _KEY16_TOP, 0
    for b in range(n_blocks):
        if search[_LO, b] > 0:  # a searched block (a trivial one's cut is 0)
            guess[0], guess[1] = min(guess[0], search[_LO, b]), max(guess[1], search[_LO, b])


@intrinsic
def _popcount(typingctx, word):
    """The set bits of a uint64."""
    def codegen(context, builder, signature, args):
        return builder.ctpop(args[0])

    return types.uint64(types.uint64), codegen


@intrinsic
def _trailing_zeros(typingctx, word):
    """The index of a nonzero uint64's lowest set bit."""
    def codegen(context, builder, signature, args):
        return builder.cttz(args[0], ir.Constant(ir.IntType(1), 1))

    return types.uint64(types.uint64), codegen


@njit(cache=True, inline="always")
def _tie_cutoff(keys, first, width, threshold, need):
    """``(cutoff, ties)``: the index just past the ``need``-th key equal to ``threshold`` in
    ``[first, first + width)`` and ``need``; ``(first + width, all ties)`` when there are
    fewer; ``(first, 0)`` when ``need <= 0``. Ties are found as a bit mask per 64 keys, so
    the search is a few word operations, not a running count carried key by key."""
    if need <= 0:
        return first, 0
    found = 0
    for word in range(first, first + width, 64):
        size = min(64, first + width - word)
        bits = np.uint64(0)
        for j in range(np.uint64(size)):
            bits |= np.uint64(keys[np.uint64(word) + j] == threshold) << j
        ties = np.int64(_popcount(bits))
        if found + ties >= need:
            for _ in range(need - found - 1):  # drop the ties before the need-th
                bits &= bits - np.uint64(1)
            return word + np.int64(_trailing_zeros(bits)) + 1, need
        found += ties
    return first + width, found


@njit(cache=True, inline="always")
def _select(keys, tau, first, width, threshold, room, ties_seen, kept):
    """``kept[j]`` (``first <= j < first + width``) = 1.0 where ``key_j > t``, or
    ``key_j == t`` and it is at most the ``room``-th such tie counting from ``ties_seen``
    (lowest index first), and ``tau_j != 0`` (zeros are never kept); else 0.0. Returns the
    running tie count (once it reaches ``room`` only that matters: no later tie is kept).
    One branch-free pass once the last kept tie is known; indices are unsigned: no
    wraparound test, no view."""
    cutoff, ties = _tie_cutoff(keys, first, width, threshold, room - ties_seen)
    end = np.uint64(cutoff)
    for j in range(np.uint64(first), np.uint64(first + width)):
        key = keys[j]
        chosen = (key > threshold) | ((key == threshold) & (j < end))
        kept[j] = np.float32(chosen & (tau[j] != 0))
    return ties_seen + ties


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
    halves), the masks (float32, a row per task), the search state (``SEARCH_ROWS`` rows),
    a block of low halves, and the cuts."""
    return (np.empty(tile_size, np.uint32), np.empty(tile_size, np.uint16),
            np.empty((k, tile_size), np.float32), np.empty((SEARCH_ROWS, tile_blocks), np.int64),
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


@njit(cache=True)
def _task_cut(sources, ranking, task, claims, histograms, ties_before, candidates):
    """``(t, room)`` of ``task``'s selection (none for ``task < 0``), ``histograms`` holding
    the thread groups' counts of its high key digits: the threshold's high digit from their
    sum, then the low digits within it (``_low_digit_counts``), and in ``ties_before[g]``
    the keys equal to ``t`` in groups before ``g`` (their prefix sum; all 0 where no search
    is needed)."""
    numel = sources.numel
    n_groups = histograms.shape[0]
    ties_before[:] = 0
    if task < 0:
        return _NO_KEY, 0
    quota = ranking.quotas[task]
    if not _is_selective(quota, numel):
        return _trivial_threshold(quota, numel)
    high, above = _from_top(histograms.sum(axis=0), quota)
    _low_digit_counts(sources, ranking, task, claims, high, candidates, histograms)
    low, above_low = _from_top(histograms.sum(axis=0), quota - above)
    for group in range(n_groups):  # each group's keys equal to the threshold: its bin `low`
        ties_before[group + 1] = ties_before[group] + histograms[group, low]
    return np.uint32((high << _RADIX_BITS) | low), quota - above - above_low


@njit(cache=True)
def _low_digit_counts(sources, ranking, task, claims, high, candidates, histograms):
    """``histograms[g]`` = thread group ``g``'s counts of the low digits of ``task``'s keys
    whose high digit is ``high`` (``histograms`` holds the high-digit counts on entry): from
    the gathered ``candidates`` (``GATHERED``) where ``high`` is in their window and none
    was left unstored, else by a pass over the tensor (``_low_digit_pass``, ``PASSED``)."""
    window, counts, stored, common_lows = candidates
    if not (window[0] <= high <= window[1] and counts.max() <= stored.shape[1]):
        _low_digit_pass(sources, ranking, task, claims, high, histograms)
        return PASSED
    histograms[:] = 0
    for group in range(histograms.shape[0]):
        histograms[group, _COMMON_LOW] = common_lows[group, high - window[0]]
        for c in range(counts[group]):
            key = stored[group, c]
            if key >> _RADIX_BITS == high:
                histograms[group, key & np.uint32(_KEY16_TOP)] += 1
    return GATHERED


@njit(parallel=True, cache=True)
def _low_digit_pass(sources, ranking, task, claims, high, histograms):
    """``histograms[g]`` = thread group ``g``'s counts of the low digits of ``task``'s keys
    whose high digit is ``high``, by a pass over the tensor."""
    numel = sources.numel
    n_groups = histograms.shape[0]
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
                    histograms[group, keys[j] & np.uint32(_KEY16_TOP)] += 1


@njit(cache=True)
def _new_candidates(n_groups, numel):
    """Empty ``_Candidates`` for a tensor of ``numel`` keys in ``n_groups`` thread groups
    (the stored keys' pages are touched only as they fill)."""
    capacity = numel // n_groups // _CANDIDATE_SHARE + _TILE
    return _Candidates(np.array([1, 0], np.int64), np.zeros(n_groups, np.int64),
                       np.empty((n_groups, capacity), np.uint32),
                       np.zeros((n_groups, _WINDOW_DIGITS), np.int64))


@njit(cache=True)
def _sample_claims(sources, ranking, claims, task, cut, ties_total, start, buffers, claimed, kept_ties):
    """``claimed[j]``: whether ``task`` probably keeps position ``start + j`` (a run of
    ``_SAMPLE_RUN``) by its ``cut`` (``(t, room)`` of ``ties_total`` keys equal to ``t``):
    every key above ``t`` and an even ``room / ties_total`` share of the ties (the ties kept
    lie first in the tensor, but a prediction needs only their share). ``kept_ties`` (one
    int64) carries the share's running remainder from run to run."""
    threshold, room = cut
    _task_tile_keys(sources, ranking, claims, task, start, _SAMPLE_RUN, True, buffers)
    tau, keys = buffers[1], buffers[4]
    for j in range(_SAMPLE_RUN):
        tie = keys[j] == threshold
        kept_ties[0] += room if tie else 0
        share = tie and kept_ties[0] >= ties_total
        kept_ties[0] -= ties_total if share else 0
        claimed[j] = (keys[j] > threshold or share) and tau[j] != 0


@njit(cache=True)
def _predict_window(sources, ranking, claims, task, cut, ties_total, candidates):
    """Reset ``candidates`` for ``task + 1`` with the window of high digits its quota
    probably reaches: those of the keys within ``_SAMPLE_SIGMAS`` deviations of its rank on
    one run of keys in ``_SAMPLE_STRIDE``, the keys taken as they will be when counted
    (claimed where ``task`` probably keeps them, ``_sample_claims``). No window where
    ``task + 1`` needs no search, the tensor is too small for a sample or the window would
    span more than ``_WINDOW_DIGITS`` digits (then its low digits take a pass)."""
    window, counts, _, common_lows = candidates
    window[0], window[1] = 1, 0
    counts[:] = 0
    common_lows[:] = 0
    numel, following = sources.numel, task + 1
    if (following >= ranking.quotas.shape[0] or not _is_selective(ranking.quotas[following], numel)
            or numel < _SAMPLE_MIN):
        return
    histogram = np.zeros(1 << _RADIX_BITS, np.int64)
    buffers = _tile_key_buffers()
    free_offset, keys = buffers[3], buffers[4]
    claimed = np.zeros(_SAMPLE_RUN, np.bool_)
    kept_ties = np.zeros(1, np.int64)
    sampled = 0
    for start in range(0, numel - _SAMPLE_RUN + 1, _SAMPLE_STRIDE * _SAMPLE_RUN):
        if task >= 0 and ranking.conflict_aware:
            _sample_claims(sources, ranking, claims, task, cut, ties_total, start, buffers, claimed, kept_ties)
        _task_tile_keys(sources, ranking, claims, following, start, _SAMPLE_RUN, False, buffers)
        for j in range(_SAMPLE_RUN):
            histogram[(keys[j] - (free_offset[j] if claimed[j] else np.uint32(0))) >> _RADIX_BITS] += 1
        sampled += _SAMPLE_RUN
    rank = max(1, ranking.quotas[following] * sampled // numel)
    alike = 1 if ranking.draw_keys.shape[0] > 0 else _SAMPLE_RUN  # random draws: independent keys
    margin = _SAMPLE_SIGMAS * np.int64(np.sqrt(alike * rank)) + _SAMPLE_RUN
    top, _ = _from_top(histogram, max(1, rank - margin))
    bottom, _ = _from_top(histogram, min(sampled, rank + margin))
    if top - bottom < _WINDOW_DIGITS:
        window[0], window[1] = bottom, top


@njit(cache=True)
def _gather_candidates(keys, length, window, stored, common_lows, n):
    """Add the tile's ``keys`` whose high digit lies in ``window`` to one thread group's
    candidates (its rows ``stored`` and ``common_lows``; ``n`` keys with another low digit
    than ``_COMMON_LOW`` so far, stored while there is room). Returns the new ``n``."""
    first, span = window[0], window[1] - window[0]
    capacity = stored.shape[0]
    for j in range(length):
        key = keys[j]
        digit = np.int64(key >> _RADIX_BITS) - first
        if np.uint64(digit) <= np.uint64(span):
            if key & np.uint32(_KEY16_TOP) == _COMMON_LOW:
                common_lows[digit] += 1
            else:
                if n < capacity:
                    stored[n] = key
                n += 1
    return n


@njit(parallel=True, cache=True)
def _record_and_count_next(sources, ranking, task, cut, claims, histograms, ties_before, candidates):
    """With ``task``'s ``cut`` (``(t, room)``; none for ``task < 0``) record its kept
    positions as its bit in ``claims`` and, on the same tiles, count the high key digits of
    ``task + 1`` (where it needs a search) into ``histograms``, one row per thread group,
    and gather its keys in the window of ``candidates``."""
    numel = sources.numel
    n_groups = histograms.shape[0]
    threshold, room = cut
    k = sources.addresses.shape[0] - 1
    following = task + 1 < k and _is_selective(ranking.quotas[task + 1], numel)
    # one field per statement: numba 0.68 drops writes to arrays unpacked from a tuple in a parallel function
    window = candidates.window
    counts = candidates.counts
    stored = candidates.keys
    common_lows = candidates.common_lows
    gathering = following and window[0] <= window[1]
    histograms[:] = 0
    for group in prange(n_groups):
        buffers = _tile_key_buffers()
        tau, keys = buffers[1], buffers[4]
        kept = np.empty(_TILE, np.float32)
        seen = ties_before[group]
        gathered = 0
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
                if gathering:
                    gathered = _gather_candidates(keys, length, window, stored[group], common_lows[group], gathered)
        counts[group] = gathered


@njit(parallel=True, cache=True)
def _select_last_and_combine(sources, ranking, cut, claims, ties_before, params, n_groups, output):
    """``output`` = the combine (``_combine_tile``) of every tile, the last task's mask
    selected there with its ``cut`` (``(t, room)``, ``ties_before`` from ``_task_cut``) and
    the others' read from ``claims``: the last task needs no pass of its own to record its
    mask. Returns whether any merged value is not finite."""
    addresses, bf16, numel = sources
    k = addresses.shape[0] - 1
    last = k - 1
    threshold, room = cut
    nonfinite = np.zeros(n_groups, np.bool_)
    for group in prange(n_groups):
        buffers = _tile_key_buffers()
        base_vals, keys = buffers[0], buffers[4]
        taus = np.empty((k, _TILE), np.float32)
        kept = np.empty((k, _TILE), np.float32)
        scratch = _combine_scratch(_TILE)
        seen = ties_before[group]
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, _TILE):
            length = min(_TILE, stop - start)
            _task_tile_keys(sources, ranking, claims, last, start, length, True, buffers)
            taus[last, :length] = buffers[1][:length]
            seen = _select(keys, taus[last], 0, length, threshold, room, seen, kept[last])
            for i in range(last):
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
    bits (``_task_cut``): the high digits counted by thread groups in one pass, the low
    digits within the threshold's high digit taken from the keys gathered in that pass
    inside a window predicted from a sample (``_predict_window``), or, where the window
    missed, by a second pass. The lowest-index-first rule among keys equal to the threshold
    comes from a prefix sum of the groups' tie counts. A pass records the kept positions,
    one bit per task and element in ``claims``, and, on the same tiles, counts the next
    task's high digits (``_record_and_count_next``). Keys are recomputed in every pass, not
    stored. The last task's mask is selected in the pass that combines into ``output``
    (``_select_last_and_combine``), which says whether any merged value is not finite."""
    k = sources.addresses.shape[0] - 1
    claims = np.zeros(((k + 7) // 8, sources.numel), np.uint8)
    histograms = np.zeros((n_groups, 1 << _RADIX_BITS), np.int32)  # per group: half the cache of int64
    ties_before = np.zeros(n_groups + 1, np.int64)
    candidates = _new_candidates(n_groups, sources.numel)
    for i in range(-1, k - 1):  # step i selects task i (none at -1) and counts task i + 1's high digits
        cut = _task_cut(sources, ranking, i, claims, histograms, ties_before, candidates)
        _predict_window(sources, ranking, claims, i, cut, ties_before[n_groups], candidates)
        _record_and_count_next(sources, ranking, i, cut, claims, histograms, ties_before, candidates)
    cut = _task_cut(sources, ranking, k - 1, claims, histograms, ties_before, candidates)
    return _select_last_and_combine(sources, ranking, cut, claims, ties_before, params, n_groups, output)


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
