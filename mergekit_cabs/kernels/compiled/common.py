"""What the compiled kernels share: their arguments, tensors read and written by raw address,
the float32 keys and random draws of ``rules``, the tie rule's selection, the combine and the
store.

Tensors reach the kernels as raw addresses, so one compiled specialisation serves every
dtype and every number of tasks (a tuple of arrays would compile again for each ``k``); the
kernels' arguments travel in the named tuples here (``Sources``, ``Output``, ``Blocks``,
``Ranking``, ``CombineParams``), whose field types do not depend on ``k`` either.
Per-block helpers take plain arrays and are inlined: numba reference-counts every array it
unpacks from a tuple or slices into a view, and per block that costs more than the count.

numba keys the cache of a kernel on the text of the kernel's own file alone, yet the cached
code embeds every helper it calls and every global it reads, frozen: ``nm`` and
``per_tensor`` therefore carry ``EMBEDDED_SHA256``, a digest of this file and of the
constants of ``rules``, which ``tests/test_compiled.py`` holds equal to them, so that a
change here changes their files and numba compiles them again.
"""

from __future__ import annotations

from typing import NamedTuple

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mergekit_cabs.kernels.rules import CLAIMED_OFFSET, MIX32_MULTIPLIERS, MIX32_SHIFTS, RANDOM_SCORE_BITS

TILE = 1024  # elements per tile: a thread's scratch (about 2k + 6 rows) stays in L1
OFFSET = np.uint32(CLAIMED_OFFSET)
COMMON_LOW = np.uint32(CLAIMED_OFFSET & 0xFFFF)  # the low digit of a free key whose tau is exact in 16 bits
NO_KEY = np.uint32(0xFFFFFFFF)  # above every key (the largest is a free NaN, 0xFF800000)
ABS = np.uint32(0x7FFFFFFF)
_EXPONENT = np.uint32(0x7F800000)  # all exponent bits set: inf or NaN
_U32 = np.uint64(0xFFFFFFFF)
_SHIFTS = tuple(np.uint64(s) for s in MIX32_SHIFTS)
_MULTIPLIERS = tuple(np.uint64(c) for c in MIX32_MULTIPLIERS)
_DRAW_SHIFT = np.uint64(32 - RANDOM_SCORE_BITS)
_DRAW_STEP = np.float32(2.0 ** -RANDOM_SCORE_BITS)
KEY16_TOP = 0xFFFF  # the largest high (or low) half of a key


class Sources(NamedTuple):
    """The flat input tensors: ``addresses`` (int64: base, then the ``k`` fine-tunes),
    ``bf16`` (else float32), ``numel``."""

    addresses: np.ndarray
    bf16: bool
    numel: int


class Output(NamedTuple):
    """The flat output tensor: ``address`` (int64), ``bf16`` (else float32)."""

    address: int
    bf16: bool


class Blocks(NamedTuple):
    """n:m selection: task ``i`` keeps ``ns[i]`` of every full block of ``block_size``,
    ``tail_ns[i]`` of the short last one; claimed positions rank last if ``conflict_aware``."""

    ns: np.ndarray
    tail_ns: np.ndarray
    block_size: int
    conflict_aware: bool


class Ranking(NamedTuple):
    """Per-tensor selection: task ``i`` keeps its ``quotas[i]`` largest keys, of its random
    draws when ``draw_keys`` holds a ``(k1, k2)`` row per task, else of ``|tau_i|``."""

    quotas: np.ndarray
    draw_keys: np.ndarray
    conflict_aware: bool


class CombineParams(NamedTuple):
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
def load_floats(address, start, length, bf16, tile):
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
def load_tau(address, start, length, bf16, base_vals, tau):
    """``tau[:length] = f32(tuned) - f32(base)`` on the tile, ``tuned`` at ``address``."""
    load_floats(address, start, length, bf16, tau)
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
def random_draws(k1, k2, first, length, tile):
    """``masks.random_scores`` of positions ``first..first+length``:
    ``u = (mix32((mix32(p ^ k1) + k2) mod 2^32) >> 8) * 2^-24``."""
    for j in range(length):
        position = np.uint64(first + j)
        bits = _mix32((_mix32(position ^ k1) + k2) & _U32) >> _DRAW_SHIFT
        tile[j] = np.float32(bits) * _DRAW_STEP


@njit(cache=True)
def lifted_keys(score_bits, free_offset, length, keys):
    """``keys[j]`` = float32 bits of ``|score_j|`` + ``free_offset[j]``: the torch path's key
    (claimed positions minus ``CLAIMED_OFFSET``) shifted up by that offset to stay unsigned;
    free positions (offset) rank above every claimed one (0), order otherwise unchanged."""
    for j in range(length):
        keys[j] = (score_bits[j] & ABS) + free_offset[j]


@njit(cache=True, inline="always")
def trivial_threshold(quota, length):
    """``(t, room)`` keeping none of ``length`` keys (``quota <= 0``) or all of them."""
    if quota <= 0:
        return NO_KEY, 0
    return np.uint32(0), length


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
def select(keys, tau, first, width, threshold, room, ties_seen, kept):
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
def combine_scratch(size):
    """Scratch of ``combine_tile``: the running total, the merged sum and the TIES divisor."""
    return np.empty(size, np.float32), np.empty(size, np.float32), np.empty(size, np.float32)


@njit(cache=True)
def combine_tile(params, base_vals, taus, kept, length, scratch):
    """``merged[:length] = base + lam * combine(deltas)`` (``merged`` the second row of
    ``scratch``) with ``deltas_i = (tau_i * s_i) * kept_i`` (a dropped entry is a signed
    zero; a non-finite one stays non-finite), ``combine`` the float32 operations, in order,
    of ``combine.ties_combine`` (sign election, agreeing sum, optional division by the
    agreeing weights) or ``combine.linear_combine`` (sum, optional division by
    ``norm_total``); ``params`` a ``CombineParams``. Overwrites ``taus`` with the deltas."""
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
def store_tile(values, length, output, start):
    """Elements ``start..start+length`` of the flat output (``Output``) = ``values``,
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
            half = np.uint16(0x7FC0) if (word & ABS) > _EXPONENT else rounded
            target[j] = half
            nonfinite = nonfinite | ((half & np.uint16(0x7F80)) == np.uint16(0x7F80))
    else:
        target32 = numba.carray(_pointer(address + 4 * start), length, np.uint32)
        for j in range(length):
            target32[j] = bits[j]
            nonfinite = nonfinite | ((bits[j] & _EXPONENT) == _EXPONENT)
    return nonfinite
