"""``kernels.merge_chunk`` compiled with numba, bit for bit.

numba is a dependency, so this is the default CPU path; ``MERGEKIT_CABS_TORCH_KERNELS=1``
(read by ``kernels.compiled_nm_module``) forces the torch path instead.

Both kernels work on tiles of the flat tensors: base and task vectors are read once per tile
into float32 scratch (``tau = f32(tuned) - f32(base)``), each task's keys are formed as in
``kernels`` (float32 bits of ``|tau|`` or of a random draw; free positions lifted by
``_CLAIMED_OFFSET`` above every claimed one), winners are selected, and the tile is combined
with the float32 operations, in order, of ``kernels.linear_combine`` / ``kernels.ties_combine``.

* n:m (``_nm_merge``): each block's threshold by a search of vectorised counts (galloping
  from the last block's threshold, then bisection, stopping as soon as a count hits the
  quota); blocks are independent, so threads split them without changing a bit.
* Per tensor, magnitude and random (``_tensor_merge``, one block spanning the tensor): each
  task's threshold by a parallel 16 + 16 bit radix selection, the lowest-index-first rule by a
  prefix sum of per-group tie counts. Keys and random draws are recomputed in every pass
  rather than stored; the only tensor-sized buffers are the float32 output and one bit per
  task and element (the masks).

Tensors reach the kernels as raw addresses, so one compiled specialisation serves every
dtype and every number of tasks (a tuple of arrays would compile again for each ``k``).

The JIT cache is written beside this module, or, where that is not writable (a read-only
site-packages), to numba's user-wide cache directory (``tests/test_compiled_nm.py`` checks it).
"""

from __future__ import annotations

from typing import Optional, Sequence

import numba
import numpy as np
import torch
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from mergekit_cabs.kernels import (
    _CLAIMED_OFFSET,
    MIX32_MULTIPLIERS,
    MIX32_SHIFTS,
    RANDOM_SCORE_BITS,
    random_score_keys,
    tail_keep_counts,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)

_TILE = 4096  # elements per tile: scratch of k + 3 float32 rows stays in L1/L2
_OFFSET = np.uint32(_CLAIMED_OFFSET)
_NO_KEY = np.uint32(0xFFFFFFFF)  # above every key (the largest is a free NaN, 0xFF800000)
_ABS = np.uint32(0x7FFFFFFF)
_U32 = np.uint64(0xFFFFFFFF)
_SHIFTS = tuple(np.uint64(s) for s in MIX32_SHIFTS)
_MULTIPLIERS = tuple(np.uint64(c) for c in MIX32_MULTIPLIERS)
_DRAW_SHIFT = np.uint64(32 - RANDOM_SCORE_BITS)
_DRAW_STEP = np.float32(2.0 ** -RANDOM_SCORE_BITS)
_GALLOP_STEP = np.int64(1 << 20)  # first step away from a block's hint: ~1/8 of a binade of keys
_RADIX_BITS = 16  # per-tensor selection: two histogram passes of 2^16 bins


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
    """``kernels.mix32`` of a 32-bit word held in uint64."""
    x ^= x >> _SHIFTS[0]
    x = (x * _MULTIPLIERS[0]) & _U32
    x ^= x >> _SHIFTS[1]
    x = (x * _MULTIPLIERS[1]) & _U32
    return x ^ (x >> _SHIFTS[2])


@njit(cache=True)
def _random_draws(k1, k2, first, length, tile):
    """``kernels.random_scores`` of positions ``first..first+length``:
    ``u = (mix32((mix32(p ^ k1) + k2) mod 2^32) >> 8) * 2^-24``."""
    for j in range(length):
        position = np.uint64(first + j)
        bits = _mix32((_mix32(position ^ k1) + k2) & _U32) >> _DRAW_SHIFT
        tile[j] = np.float32(bits) * _DRAW_STEP


@njit(cache=True)
def _lifted_keys(score_bits, free_offset, length, keys):
    """``keys[j]`` = float32 bits of ``|score_j|`` + ``free_offset[j]``: ``kernels``' key
    (claimed positions minus ``_CLAIMED_OFFSET``) shifted up by that offset to stay unsigned;
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
def _combine_tile(base_vals, taus, kept, length, scales, weights, lam, ties, normalize,
                  norm_total, total, merged, divisor, out):
    """``out[:length] = base + lam * combine(deltas)`` with ``deltas_i = (tau_i * s_i) * kept_i``
    (a dropped entry is a signed zero; a non-finite one stays non-finite), ``combine`` the
    float32 operations, in order, of ``kernels.ties_combine`` (sign election, agreeing sum,
    optional division by the agreeing weights) or ``kernels.linear_combine`` (sum, optional
    division by ``norm_total``). Overwrites ``taus`` with the deltas."""
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
def _nm_merge(addresses, bf16, numel, ns, tail_ns, block_size, scales, weights, lam, ties,
              normalize, norm_total, conflict_aware, n_groups, out):
    """n:m merge of the flat tensors at ``addresses`` (base, then the ``k`` fine-tunes):
    task ``i`` keeps ``ns[i]`` of every full block (``tail_ns[i]`` of the short last one),
    in order, a position kept by an earlier task ranking below every free one when
    ``conflict_aware``. Thread groups take contiguous runs of whole tiles of whole blocks."""
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
        total = np.empty(tile_size, np.float32)
        merged = np.empty(tile_size, np.float32)
        divisor = np.empty(tile_size, np.float32)
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
            _combine_tile(base_vals, taus, kept, length, scales, weights, lam, ties, normalize,
                          norm_total, total, merged, divisor, out[start:start + length])


@njit(cache=True)
def _group_span(group, n_groups, numel):
    """Element range of one thread group: whole tiles, contiguous, in group order."""
    n_tiles = (numel + _TILE - 1) // _TILE
    return (group * n_tiles // n_groups) * _TILE, min(((group + 1) * n_tiles // n_groups) * _TILE, numel)


@njit(cache=True)
def _free_offsets(claims, task, start, length, conflict_aware, free_offset):
    """``free_offset[j]`` = ``_CLAIMED_OFFSET`` unless a task before ``task`` kept position
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
def _task_tile_keys(addresses, bf16, task, start, length, draw_keys, claims, conflict_aware,
                    need_tau, base_vals, tau, draws, free_offset, keys):
    """Keys of ``task`` on one tile (``|tau|`` or its random draws, lifted when free) and,
    in ``tau``, its float32 task vector there (for random keys only if ``need_tau``)."""
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
def _tensor_merge(addresses, bf16, numel, quotas, draw_keys, scales, weights, lam, ties,
                  normalize, norm_total, conflict_aware, n_groups, out):
    """Per-tensor merge (one block spanning the flat tensor) of the tensors at ``addresses``.

    Task ``i`` keeps its ``quotas[i]`` largest keys: ``|tau_i|``, or its random draws when
    ``draw_keys`` holds a ``(k1, k2)`` row per task (DARE). Its threshold comes from a radix
    selection on the high then the low 16 key bits (two histogram passes split over thread
    groups); the lowest-index-first rule among keys equal to it, from a prefix sum of the
    groups' tie counts; a third pass records the kept positions, one bit per task and element
    in ``claims``, and, on the same tiles, counts the next task's high digits. Keys are
    recomputed in every pass, not stored. A last pass combines."""
    k = addresses.shape[0] - 1
    claims = np.zeros(((k + 7) // 8, numel), np.uint8)
    histograms = np.zeros((n_groups, 1 << _RADIX_BITS), np.int64)
    ties_before = np.zeros(n_groups + 1, np.int64)
    low_bits = np.uint32((1 << _RADIX_BITS) - 1)
    for i in range(-1, k):  # step i selects task i (none at -1) and counts task i + 1's high digits
        threshold, room = _NO_KEY, 0
        ties_before[:] = 0
        if i >= 0 and not _is_selective(quotas[i], numel):
            threshold, room = _trivial_threshold(quotas[i], numel)
        elif i >= 0:
            high, above = _from_top(histograms.sum(axis=0), quotas[i])
            histograms[:] = 0
            for group in prange(n_groups):
                base_vals, tau, draws, free_offset, keys = _tile_key_buffers()
                first, stop = _group_span(group, n_groups, numel)
                for start in range(first, stop, _TILE):
                    length = min(_TILE, stop - start)
                    _task_tile_keys(addresses, bf16, i, start, length, draw_keys, claims,
                                    conflict_aware, False, base_vals, tau, draws, free_offset, keys)
                    for j in range(length):
                        if keys[j] >> _RADIX_BITS == high:
                            histograms[group, keys[j] & low_bits] += 1
            low, above_low = _from_top(histograms.sum(axis=0), quotas[i] - above)
            threshold = np.uint32((high << _RADIX_BITS) | low)
            room = quotas[i] - above - above_low
            for group in range(n_groups):  # each group's keys equal to the threshold: its bin `low`
                ties_before[group + 1] = ties_before[group] + histograms[group, low]
        following = i + 1 < k and _is_selective(quotas[i + 1], numel)
        histograms[:] = 0
        for group in prange(n_groups):
            base_vals, tau, draws, free_offset, keys = _tile_key_buffers()
            kept = np.empty(_TILE, np.float32)
            seen = ties_before[group]
            first, stop = _group_span(group, n_groups, numel)
            for start in range(first, stop, _TILE):
                length = min(_TILE, stop - start)
                if i >= 0:
                    _task_tile_keys(addresses, bf16, i, start, length, draw_keys, claims,
                                    conflict_aware, True, base_vals, tau, draws, free_offset, keys)
                    seen = _select(keys, tau, length, threshold, room, seen, kept)
                    bit = np.uint8(1 << (i % 8))
                    row = claims[i // 8, start:start + length]
                    for j in range(length):
                        row[j] |= bit if kept[j] != 0 else np.uint8(0)
                if following:
                    _task_tile_keys(addresses, bf16, i + 1, start, length, draw_keys, claims,
                                    conflict_aware, False, base_vals, tau, draws, free_offset, keys)
                    for j in range(length):
                        histograms[group, keys[j] >> _RADIX_BITS] += 1
    for group in prange(n_groups):
        base_vals = np.empty(_TILE, np.float32)
        taus = np.empty((k, _TILE), np.float32)
        kept = np.empty((k, _TILE), np.float32)
        total = np.empty(_TILE, np.float32)
        merged = np.empty(_TILE, np.float32)
        divisor = np.empty(_TILE, np.float32)
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
            _combine_tile(base_vals, taus, kept, length, scales, weights, lam, ties, normalize,
                          norm_total, total, merged, divisor, out[start:start + length])


def supports(base: torch.Tensor, tuned: Sequence[torch.Tensor]) -> bool:
    """CPU tensors of float32 or bfloat16, all of one dtype."""
    return base.device.type == "cpu" and base.dtype in SUPPORTED_DTYPES and all(
        t.dtype == base.dtype and t.device.type == "cpu" for t in tuned
    )


def compiled_merge_chunk(
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    scales: Sequence[float],
    weights: Sequence[float],
    ns: Sequence[int],
    block_size: Optional[int],
    lam: float,
    ties: bool,
    normalize: bool,
    norm_total: float,
    conflict_aware: bool,
    seeds: Optional[Sequence[int]] = None,
) -> torch.Tensor:
    """Float32 result of the merge of one flat chunk (see ``kernels.merge_chunk``): task ``i``
    keeps ``ns[i]`` of every block of ``block_size``, or, if ``None``, of the whole chunk,
    ranked by ``|tau_i|`` or, when ``seeds`` are given, by ``kernels.random_scores`` of
    ``seeds[i]`` (whole chunk only)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    flat = [t.detach().reshape(-1).contiguous() for t in (base, *tuned)]  # alive for the call
    numel = base.numel()
    addresses = np.array([t.data_ptr() for t in flat], np.int64)
    combine = (np.asarray(scales, np.float32), np.asarray(weights, np.float32), np.float32(lam),
               ties, normalize, np.float32(norm_total), conflict_aware)
    out = np.empty(numel, np.float32)
    quotas = np.asarray(ns, np.int64)
    bf16 = base.dtype == torch.bfloat16
    if block_size is None:
        draw_keys = np.array([random_score_keys(s) for s in seeds or ()], np.uint64).reshape(-1, 2)
        _tensor_merge(addresses, bf16, numel, quotas, draw_keys, *combine,
                      max(1, min(-(-numel // _TILE), 4 * threads)), out)
    else:
        tail_ns = tail_keep_counts(ns, numel % block_size, block_size, conflict_aware)
        _nm_merge(addresses, bf16, numel, quotas, np.asarray(tail_ns, np.int64), block_size,
                  *combine, max(1, min(-(-numel // block_size), 4 * threads)), out)
    return torch.from_numpy(out)
