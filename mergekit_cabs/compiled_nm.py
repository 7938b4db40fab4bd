"""``kernels.merge_chunk`` compiled with numba, bit for bit.

Optional (``pip install mergekit-cabs[fast]``). n:m: each block of ``m`` elements is read
once, its ``k`` task vectors are formed in float32, each task's ``n`` winners are chosen by a
bisection of the threshold key, and the block is combined; blocks are independent, so threads
split them without changing a bit. Magnitude and random (one block spanning the tensor):
each task's threshold by a parallel radix selection, ties by a prefix sum over threads, then
the combine.
Both use the integer keys, claimed offset and lowest-index-first tie rule of
``kernels.block_top_mask`` and the float32 operations, in order, of ``kernels.linear_combine``
/ ``kernels.ties_combine``."""

from __future__ import annotations

from typing import Optional, Sequence

import numba
import numpy as np
import torch
from numba import njit, prange

from mergekit_cabs.kernels import _CLAIMED_OFFSET, tail_keep_counts

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


@njit(cache=True)
def _threshold(keys, length, quota):
    """A threshold ``t`` with ``#{key > t} < quota <= #{key >= t}``, decided bit by bit from
    the highest bit where the keys differ: the quota-th largest key, or, as soon as some
    candidate has exactly ``quota`` keys at or above it, that candidate (same selection, and
    random blocks stop after a few bits instead of ~28)."""
    low, high = keys[0], keys[0]
    for j in range(length):
        low = min(low, keys[j])
        high = max(high, keys[j])
    top = 31
    while top >= 0 and not ((low ^ high) >> np.uint32(top)) & np.uint32(1):
        top -= 1
    threshold = low & ~((np.uint32(2) << np.uint32(top)) - np.uint32(1)) if top < 31 else np.uint32(0)
    for bit in range(top, -1, -1):
        candidate = threshold | (np.uint32(1) << np.uint32(bit))
        count = np.int32(0)
        for j in range(length):
            count += np.int32(keys[j] >= candidate)
        if count == quota:
            return candidate
        threshold = candidate if count > quota else threshold
    return threshold


@njit(cache=True)
def _select_top(keys, length, quota, keep):
    """``keep[j]`` for the ``quota`` largest of ``keys[:length]``, the lowest index first
    among equals (as ``kernels.top_k_rows``)."""
    if quota <= 0:
        keep[:length] = False
        return
    if quota >= length:
        keep[:length] = True
        return
    threshold = _threshold(keys, length, quota)
    room = quota
    for j in range(length):
        room -= keys[j] > threshold
    ties_seen = 0
    for j in range(length):
        tie = keys[j] == threshold
        ties_seen += tie
        keep[j] = (keys[j] > threshold) | (tie & (ties_seen <= room))


@njit(cache=True)
def _load_block(source, start, length, bf16, bits_out, floats_out):
    """``floats_out[:length]`` = float32 values of ``source[start:start + length]``."""
    if bf16:
        for j in range(length):
            bits_out[j] = np.uint32(source[start + j]) << np.uint32(16)
    else:
        for j in range(length):
            floats_out[j] = source[start + j]


@njit(cache=True)
def _load_taus(base_vals, tuned, start, length, bf16, tuned_bits, taus):
    """``taus[:length]`` = float32 ``tuned[start:start + length] - base_vals[:length]``."""
    tuned_vals = tuned_bits.view(np.float32)
    _load_block(tuned, start, length, bf16, tuned_bits, tuned_vals)
    for j in range(length):
        taus[j] = tuned_vals[j] - base_vals[j]


@njit(cache=True)
def _combine(deltas, weights, ties, normalize, norm_total):
    """``combine(deltas)`` of one position, the float32 operations of ``kernels.ties_combine``
    (sign election, agreeing sum, optional division by the agreeing weights) or
    ``kernels.linear_combine`` (sum, optional division by ``norm_total``) in their order."""
    k = len(deltas)
    if ties:
        total = deltas[0]
        for i in range(1, k):
            total = total + deltas[i]
        positive = total >= 0
        merged = np.float32(0.0)
        divisor = np.float32(0.0)
        for i in range(k):
            agree = ((deltas[i] > 0) & positive) | ((deltas[i] < 0) & (not positive))
            agree_f = np.float32(agree)
            merged = merged + deltas[i] * agree_f
            divisor = divisor + agree_f * weights[i]
        if normalize:
            merged = merged / (np.float32(1.0) if divisor == 0 else divisor)
        return merged
    merged = deltas[0]
    for i in range(1, k):
        merged = merged + deltas[i]
    if normalize:
        merged = merged / norm_total
    return merged


@njit(parallel=True, cache=True)
def _nm_merge(base, tuned, bf16, ns, tail_ns, block_size, scales, weights, lam, ties, normalize,
              norm_total, conflict_aware, n_groups, out):
    numel = base.shape[0]
    k = len(tuned)
    n_blocks = (numel + block_size - 1) // block_size
    offset = np.uint32(_CLAIMED_OFFSET)
    for group in prange(n_groups):
        base_bits = np.empty(block_size, np.uint32)
        base_vals = base_bits.view(np.float32)
        tuned_bits = np.empty(block_size, np.uint32)
        taus = np.empty((k, block_size), np.float32)
        tau_bits = taus.view(np.int32)
        keys = np.empty(block_size, np.uint32)
        keep = np.empty((k, block_size), np.bool_)
        claimed = np.empty(block_size, np.bool_)
        deltas = np.empty(k, np.float32)
        first = group * n_blocks // n_groups
        stop = (group + 1) * n_blocks // n_groups
        for block in range(first, stop):
            start = block * block_size
            length = min(block_size, numel - start)
            _load_block(base, start, length, bf16, base_bits, base_vals)
            for i in range(k):
                _load_taus(base_vals, tuned[i], start, length, bf16, tuned_bits, taus[i])
            claimed[:length] = False
            for i in range(k):
                quota = ns[i] if length == block_size else tail_ns[i]
                # kernels' key minus the claimed offset, shifted up by that offset to stay
                # non-negative: free keys lie above every claimed one, order unchanged.
                for j in range(length):
                    free = not (conflict_aware and claimed[j])
                    keys[j] = np.uint32(tau_bits[i, j] & 0x7FFFFFFF) + np.uint32(free) * offset
                _select_top(keys, length, quota, keep[i])
                for j in range(length):
                    kept = keep[i, j] & (taus[i, j] != 0)
                    keep[i, j] = kept
                    claimed[j] |= kept
            for j in range(length):
                for i in range(k):
                    deltas[i] = (taus[i, j] * scales[i]) * np.float32(1.0 if keep[i, j] else 0.0)
                out[start + j] = base_vals[j] + lam * _combine(deltas, weights, ties, normalize, norm_total)


_TILE = 4096


@njit(cache=True)
def _group_span(group, n_groups, numel):
    """Element range of one thread group: whole tiles, contiguous, in group order."""
    n_tiles = (numel + _TILE - 1) // _TILE
    return (group * n_tiles // n_groups) * _TILE, min(((group + 1) * n_tiles // n_groups) * _TILE, numel)


@njit(cache=True)
def _from_top(histogram, quota):
    """The bin holding the ``quota``-th largest entry, and how many entries lie above it."""
    above = 0
    for b in range(histogram.shape[0] - 1, -1, -1):
        if above + histogram[b] >= quota:
            return b, above
        above += histogram[b]
    return 0, above


@njit(parallel=True, cache=True)
def _magnitude_merge(base, tuned, bf16, quotas, score_bits, scales, weights, lam, ties, normalize,
                     norm_total, conflict_aware, n_groups, out):
    """Per-tensor masks (one block spanning the flat tensor), then the combine.

    Task ``i`` ranks its positions by ``|tau_i|``, or by the float32 bits ``score_bits[i]``
    when given (the DARE variants' random draws; an empty array otherwise).

    Task ``i``'s threshold, its ``quotas[i]``-th largest key, comes from a radix selection on
    16 + 16 bits (two histogram passes split over threads); the lowest-index-first rule
    among keys equal to it, from a prefix sum of per-group tie counts. Same masks as
    ``kernels.block_top_mask`` with one block, in a few O(numel) passes per task, with no
    float32 copy of a task vector kept."""
    numel = base.shape[0]
    k = len(tuned)
    offset = np.uint32(_CLAIMED_OFFSET)
    keys = np.empty(numel, np.uint32)
    keep = np.empty((k, numel), np.bool_)
    claimed = np.zeros(numel, np.bool_)
    histograms = np.empty((n_groups, 1 << 16), np.int64)
    ties_before = np.zeros(n_groups + 1, np.int64)
    scored = score_bits.shape[0] > 0
    for i in range(k):
        quota = quotas[i]
        histograms[:] = 0
        for group in prange(n_groups):
            base_bits = np.empty(_TILE, np.uint32)
            tuned_bits = np.empty(_TILE, np.uint32)
            taus = np.empty(_TILE, np.float32)
            tau_bits = taus.view(np.int32)
            first, stop = _group_span(group, n_groups, numel)
            for start in range(first, stop, _TILE):
                length = min(_TILE, stop - start)
                _load_block(base, start, length, bf16, base_bits, base_bits.view(np.float32))
                _load_taus(base_bits.view(np.float32), tuned[i], start, length, bf16, tuned_bits, taus)
                for j in range(length):
                    free = not (conflict_aware and claimed[start + j])
                    bits = score_bits[i, start + j] if scored else tau_bits[j]
                    key = np.uint32(bits & 0x7FFFFFFF) + np.uint32(free) * offset
                    keys[start + j] = key
                    keep[i, start + j] = taus[j] != 0  # zeros are never kept
                    histograms[group, key >> np.uint32(16)] += 1
        high, above = _from_top(histograms.sum(axis=0), quota)
        histograms[:] = 0
        for group in prange(n_groups):
            first, stop = _group_span(group, n_groups, numel)
            for j in range(first, stop):
                if keys[j] >> np.uint32(16) == high:
                    histograms[group, keys[j] & np.uint32(0xFFFF)] += 1
        low, above_low = _from_top(histograms.sum(axis=0), quota - above)
        threshold = (np.uint32(high) << np.uint32(16)) | np.uint32(low)
        room = quota - above - above_low
        # _select_top's edge cases: keep none, or every non-zero entry.
        keep_any, keep_all = quota > 0, quota >= numel
        for group in range(n_groups):  # each group's keys equal to the threshold: its bin `low`
            ties_before[group + 1] = ties_before[group] + histograms[group, low]
        for group in prange(n_groups):
            first, stop = _group_span(group, n_groups, numel)
            seen = ties_before[group]
            for j in range(first, stop):
                key = keys[j]
                tie = key == threshold
                seen += tie
                chosen = keep_all | ((key > threshold) | (tie & (seen <= room)))
                kept = chosen & keep_any & keep[i, j]
                keep[i, j] = kept
                claimed[j] |= kept
    for group in prange(n_groups):
        base_bits = np.empty(_TILE, np.uint32)
        tuned_bits = np.empty(_TILE, np.uint32)
        taus = np.empty((k, _TILE), np.float32)
        deltas = np.empty(k, np.float32)
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, _TILE):
            length = min(_TILE, stop - start)
            base_vals = base_bits.view(np.float32)
            _load_block(base, start, length, bf16, base_bits, base_vals)
            for i in range(k):
                _load_taus(base_vals, tuned[i], start, length, bf16, tuned_bits, taus[i])
            for j in range(length):
                for i in range(k):
                    deltas[i] = (taus[i, j] * scales[i]) * np.float32(1.0 if keep[i, start + j] else 0.0)
                out[start + j] = base_vals[j] + lam * _combine(deltas, weights, ties, normalize, norm_total)


def supports(base: torch.Tensor, tuned: Sequence[torch.Tensor]) -> bool:
    """CPU tensors of float32 or bfloat16, all of one dtype."""
    return base.device.type == "cpu" and base.dtype in SUPPORTED_DTYPES and all(
        t.dtype == base.dtype and t.device.type == "cpu" for t in tuned
    )


def _as_array(tensor: torch.Tensor) -> np.ndarray:
    flat = tensor.detach().reshape(-1).contiguous()
    if flat.dtype == torch.bfloat16:
        return flat.view(torch.int16).numpy().view(np.uint16)
    return flat.numpy()


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
    scores: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Float32 result of the merge of one flat chunk (see ``kernels.merge_chunk``): task ``i``
    keeps ``ns[i]`` of every block of ``block_size``, or, if ``None``, of the whole chunk,
    ranked by ``|tau_i|`` or by row ``i`` of ``scores`` (non-negative float32, ``(k, numel)``;
    whole chunk only)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    numel = base.numel()
    args = (_as_array(base), tuple(_as_array(t) for t in tuned), base.dtype == torch.bfloat16,
            np.asarray(ns, np.int64))
    combine = (np.asarray(scales, np.float32), np.asarray(weights, np.float32), np.float32(lam),
               ties, normalize, np.float32(norm_total), conflict_aware)
    out = np.empty(numel, np.float32)
    if block_size is None:
        score_bits = (torch.empty(0, 0) if scores is None else scores).view(torch.int32).numpy()
        _magnitude_merge(*args, score_bits, *combine,
                         max(1, min(-(-numel // _TILE), 16 * threads)), out)
    else:
        tail_ns = tail_keep_counts(ns, numel % block_size, block_size, conflict_aware)
        _nm_merge(*args, np.asarray(tail_ns, np.int64), block_size, *combine,
                  min(-(-numel // block_size), 16 * threads), out)
    return torch.from_numpy(out)
