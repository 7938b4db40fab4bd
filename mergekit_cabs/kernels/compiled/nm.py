"""The compiled n:m kernel: every block of a tile keeps its quota of the largest keys.

Per task and tile (1024 elements), every block's threshold at once: a search on the keys'
high 16 bits in lockstep over the tile's blocks (independent counts overlap instead of
waiting on each other; the bracket updates are arithmetic, not branches; interpolated probes
alternate with bisections), started from the previous tile's range of thresholds and
stopping as soon as a count hits the quota; the blocks where the quota falls among keys
sharing a high half finish on the low halves of those keys, at once when those are all alike
(a bf16 fine-tune's few-ulp ``tau``). The kept ties, lowest index first, come from a bit
mask per 64 keys (``common.select``). Blocks are independent, so threads split them without
changing a bit.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from mergekit_cabs.kernels.compiled.common import (
    ABS,
    KEY16_TOP,
    OFFSET,
    TILE,
    combine_scratch,
    combine_tile,
    load_floats,
    load_tau,
    select,
    store_tile,
    trivial_threshold,
)

# The sha256 of ``common`` and the constants of ``rules``, which this file's cached kernels embed:
# numba sees a change there only as a change here (``common``'s docstring; tests/test_compiled.py).
EMBEDDED_SHA256 = "bd119455005acca0ba232caaf72cc2456fb35cb3d24e227d52f4db9df26fc6f0"


@njit(cache=True, inline="always")
def _count_and_neighbours(keys16, first, width, value):
    """``(count, up, down)`` over ``keys16[first:first + width]``: how many keys are
    ``>= value``, the least of those and the greatest key below ``value`` (0xFFFF and 0
    where there is none), in one branch-free pass (masked min and max). The count is an
    int32 (an int64 one would vectorise in 8 lanes instead of 32); unsigned indices need no
    wraparound test, which would also stop vectorisation, and no view is made (a view is
    reference-counted)."""
    count = np.int32(0)
    up, down = np.uint16(KEY16_TOP), np.uint16(0)
    start = np.uint64(first)
    for j in range(np.uint64(width)):
        key = keys16[start + j]
        at_least = key >= value
        count = np.int32(count + np.int32(at_least))
        up = min(up, key if at_least else np.uint16(KEY16_TOP))
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
        search[_HI, b] = 0 if q <= 0 or q >= width else KEY16_TOP
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
    smallest, largest = np.uint32(KEY16_TOP), np.uint32(0)
    for j in range(np.uint64(first), np.uint64(first + width)):
        match = keys16[j] == cut
        low = keys[j] & np.uint32(KEY16_TOP)
        smallest = min(smallest, low if match else np.uint32(KEY16_TOP))
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
            cuts[0, b], cuts[1, b] = trivial_threshold(quota, width)
            continue
        if search[_EXACT, b]:
            cuts[0, b], cuts[1, b] = (cut << 16) - 1, 0
            continue
        need = quota - search[_ABOVE, b]
        low = _shared_low(keys, keys16, first, width, cut)
        if low < 0:
            count = 0
            for j in range(np.uint64(first), np.uint64(first + width)):  # compaction, branch-free
                lows[count] = np.uint16(keys[j] & np.uint32(KEY16_TOP))
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
    guess[0], guess[1] = KEY16_TOP, 0
    for b in range(n_blocks):
        if search[_LO, b] > 0:  # a searched block (a trivial one's cut is 0)
            guess[0], guess[1] = min(guess[0], search[_LO, b]), max(guess[1], search[_LO, b])


@njit(cache=True)
def _nm_tile_masks(blocks, task, taus, free_offset, length, buffers, guess):
    """Task ``task``'s n:m mask of one tile into ``kept[task]``, claiming its positions in
    ``free_offset`` when the merge is conflict-aware; ``buffers`` from ``_nm_buffers``."""
    ns, tail_ns, block_size, conflict_aware = blocks
    keys, keys16, kept, search, lows, cuts = buffers
    tau_bits = taus[task].view(np.uint32)
    for j in range(length):
        key = (tau_bits[j] & ABS) + free_offset[j]
        keys[j] = key
        keys16[j] = np.uint16(key >> np.uint32(16))
    _tile_cuts(keys, keys16, block_size, length, ns[task], tail_ns[task], guess, search, lows, cuts)
    tau, task_kept = taus[task], kept[task]
    for b in range(0, (length + block_size - 1) // block_size):
        first = b * block_size
        select(keys, tau, first, min(block_size, length - first), np.uint32(cuts[0, b]),
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
def nm_merge(sources, blocks, params, n_groups, output):
    """n:m merge (``blocks``, a ``Blocks``) of the flat tensors of ``sources`` into
    ``output`` (an ``Output``): task ``i`` keeps ``ns[i]`` of every full block
    (``tail_ns[i]`` of the short last one), in order, a position kept by an earlier task
    ranking below every free one when ``conflict_aware``. Thread groups take contiguous
    runs of whole tiles of whole blocks. Returns whether any merged value is not finite."""
    addresses, bf16, numel = sources
    block_size = blocks.block_size
    k = addresses.shape[0] - 1
    n_blocks = (numel + block_size - 1) // block_size
    tile_blocks = max(1, TILE // block_size)
    tile_size = tile_blocks * block_size
    nonfinite = np.zeros(n_groups, np.bool_)
    for group in prange(n_groups):
        base_vals = np.empty(tile_size, np.float32)
        taus = np.empty((k, tile_size), np.float32)
        free_offset = np.empty(tile_size, np.uint32)
        buffers = _nm_buffers(k, tile_size, tile_blocks, block_size)
        guesses = np.zeros((k, 2), np.int64)
        guesses[:, 0] = KEY16_TOP  # no guess yet
        scratch = combine_scratch(tile_size)
        first_block = group * n_blocks // n_groups
        stop_block = (group + 1) * n_blocks // n_groups
        for tile_block in range(first_block, stop_block, tile_blocks):
            start = tile_block * block_size
            length = min(stop_block * block_size, numel, start + tile_size) - start
            load_floats(addresses[0], start, length, bf16, base_vals)
            for i in range(k):
                load_tau(addresses[i + 1], start, length, bf16, base_vals, taus[i])
            free_offset[:length] = OFFSET
            for i in range(k):
                _nm_tile_masks(blocks, i, taus, free_offset, length, buffers, guesses[i])
            combine_tile(params, base_vals, taus, buffers[2], length, scratch)
            nonfinite[group] |= store_tile(scratch[1], length, output, start)
    return nonfinite.any()
