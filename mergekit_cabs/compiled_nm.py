"""The n:m merge compiled with numba: ``kernels.merge_chunk`` for the n:m sparsifier in one
pass over memory, bit for bit.

Optional (``pip install mergekit-cabs[fast]``). Each block of ``m`` elements is read once:
its ``k`` task vectors are formed in float32, each task's ``n`` winners are chosen by a
branch-free bisection of the threshold key (the same integer keys, claimed offset and
lowest-index-first tie rule as ``kernels.block_top_mask``), and the block is combined with the
same float32 operations in the same order as ``kernels.linear_combine`` /
``kernels.ties_combine``. Blocks are independent, so threads split them without changing a bit.
"""

from __future__ import annotations

from typing import Sequence

import numba
import numpy as np
import torch
from numba import njit, prange

from mergekit_cabs.kernels import _CLAIMED_OFFSET

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


@njit(parallel=True, cache=True)
def _nm_merge(base, tuned, bf16, ns, block_size, scales, weights, lam, ties, normalize,
              norm_total, conflict_aware, n_groups, out):
    numel = base.shape[0]
    k = len(tuned)
    n_blocks = (numel + block_size - 1) // block_size
    offset = np.uint32(_CLAIMED_OFFSET)
    for group in prange(n_groups):
        base_bits = np.empty(block_size, np.uint32)
        base_vals = base_bits.view(np.float32)
        tuned_bits = np.empty(block_size, np.uint32)
        tuned_vals = tuned_bits.view(np.float32)
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
                _load_block(tuned[i], start, length, bf16, tuned_bits, tuned_vals)
                for j in range(length):
                    taus[i, j] = tuned_vals[j] - base_vals[j]
            claimed[:length] = False
            for i in range(k):
                quota = ns[i]
                if length < block_size:
                    quota = int(np.floor(ns[i] * length / block_size + 0.5))
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
                else:
                    merged = deltas[0]
                    for i in range(1, k):
                        merged = merged + deltas[i]
                    if normalize:
                        merged = merged / norm_total
                out[start + j] = base_vals[j] + lam * merged


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


def nm_merge_chunk(
    base: torch.Tensor,
    tuned: Sequence[torch.Tensor],
    scales: Sequence[float],
    weights: Sequence[float],
    ns: Sequence[int],
    block_size: int,
    lam: float,
    ties: bool,
    normalize: bool,
    norm_total: float,
    conflict_aware: bool,
) -> torch.Tensor:
    """Float32 result of the n:m merge of one flat chunk (see ``kernels.merge_chunk``)."""
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    n_blocks = -(-base.numel() // block_size)
    out = np.empty(base.numel(), np.float32)
    _nm_merge(
        _as_array(base), tuple(_as_array(t) for t in tuned), base.dtype == torch.bfloat16,
        np.asarray(ns, np.int64), block_size, np.asarray(scales, np.float32),
        np.asarray(weights, np.float32), np.float32(lam), ties, normalize,
        np.float32(norm_total), conflict_aware, min(n_blocks, 16 * threads), out,
    )
    return torch.from_numpy(out)
