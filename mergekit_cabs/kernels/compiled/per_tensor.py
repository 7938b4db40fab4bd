"""The compiled per-tensor kernel (magnitude and random: one block spanning the tensor).

Each task's threshold comes from a parallel 16 + 16 bit radix selection whose low digits
come from the keys gathered, in the pass that counts the high digits, inside a window
predicted from a sample (a second pass only where the window missed), and the
lowest-index-first rule from a prefix sum of per-group tie counts. Keys and random draws are
recomputed in every pass rather than stored; the only tensor-sized buffers are the output,
one bit per task and element (the masks) and the gathered candidates (at most 1/16 of the
keys).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit, prange

from mergekit_cabs.kernels.compiled.common import (
    COMMON_LOW,
    KEY16_TOP,
    NO_KEY,
    OFFSET,
    TILE,
    combine_scratch,
    combine_tile,
    lifted_keys,
    load_floats,
    load_tau,
    random_draws,
    select,
    store_tile,
    trivial_threshold,
)

# The sha256 of ``common`` and the constants of ``rules``, which this file's cached kernels embed:
# numba sees a change there only as a change here (``common``'s docstring; tests/test_compiled.py).
EMBEDDED_SHA256 = "bd119455005acca0ba232caaf72cc2456fb35cb3d24e227d52f4db9df26fc6f0"

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


class _Candidates(NamedTuple):
    """Per-tensor selection: the keys of the task counted next whose high digit lies in
    ``window`` (int64 ``[first, last]`` digits; none when ``first > last``), gathered while
    its high digits are counted, so that its low digits need no pass of their own. Per
    thread group: ``common_lows`` counts, per window digit, the keys whose low digit is
    ``COMMON_LOW`` (most of a bf16 fine-tune's: its ``tau`` is a few ulps, exact in 16
    bits); the others are counted in ``counts`` and the first ``keys.shape[1]`` of them
    stored in ``keys``."""

    window: np.ndarray
    counts: np.ndarray
    keys: np.ndarray
    common_lows: np.ndarray


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
def _group_span(group, n_groups, numel):
    """Element range of one thread group: whole tiles, contiguous, in group order."""
    n_tiles = (numel + TILE - 1) // TILE
    return (group * n_tiles // n_groups) * TILE, min(((group + 1) * n_tiles // n_groups) * TILE, numel)


@njit(cache=True)
def _free_offsets(claims, task, start, length, conflict_aware, free_offset):
    """``free_offset[j]`` = ``CLAIMED_OFFSET`` unless a task before ``task`` kept position
    ``start + j`` (bit ``i`` of ``claims[i // 8]``) and the merge is conflict-aware, else 0."""
    free_offset[:length] = OFFSET
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
    return (np.empty(TILE, np.float32), np.empty(TILE, np.float32), np.empty(TILE, np.float32),
            np.empty(TILE, np.uint32), np.empty(TILE, np.uint32))


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
        load_floats(addresses[0], start, length, bf16, base_vals)
        load_tau(addresses[task + 1], start, length, bf16, base_vals, tau)
    if random:
        random_draws(draw_keys[task, 0], draw_keys[task, 1], start, length, draws)
        lifted_keys(draws.view(np.uint32), free_offset, length, keys)
    else:
        lifted_keys(tau.view(np.uint32), free_offset, length, keys)


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
        return NO_KEY, 0
    quota = ranking.quotas[task]
    if not _is_selective(quota, numel):
        return trivial_threshold(quota, numel)
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
        histograms[group, COMMON_LOW] = common_lows[group, high - window[0]]
        for c in range(counts[group]):
            key = stored[group, c]
            if key >> _RADIX_BITS == high:
                histograms[group, key & np.uint32(KEY16_TOP)] += 1
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
        for start in range(first, stop, TILE):
            length = min(TILE, stop - start)
            _task_tile_keys(sources, ranking, claims, task, start, length, False, buffers)
            for j in range(length):
                if keys[j] >> _RADIX_BITS == high:
                    histograms[group, keys[j] & np.uint32(KEY16_TOP)] += 1


@njit(cache=True)
def _new_candidates(n_groups, numel):
    """Empty ``_Candidates`` for a tensor of ``numel`` keys in ``n_groups`` thread groups
    (the stored keys' pages are touched only as they fill)."""
    capacity = numel // n_groups // _CANDIDATE_SHARE + TILE
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
    than ``COMMON_LOW`` so far, stored while there is room). Returns the new ``n``."""
    first, span = window[0], window[1] - window[0]
    capacity = stored.shape[0]
    for j in range(length):
        key = keys[j]
        digit = np.int64(key >> _RADIX_BITS) - first
        if np.uint64(digit) <= np.uint64(span):
            if key & np.uint32(KEY16_TOP) == COMMON_LOW:
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
        kept = np.empty(TILE, np.float32)
        seen = ties_before[group]
        gathered = 0
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, TILE):
            length = min(TILE, stop - start)
            if task >= 0:
                _task_tile_keys(sources, ranking, claims, task, start, length, True, buffers)
                seen = select(keys, tau, 0, length, threshold, room, seen, kept)
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
    """``output`` = the combine (``combine_tile``) of every tile, the last task's mask
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
        taus = np.empty((k, TILE), np.float32)
        kept = np.empty((k, TILE), np.float32)
        scratch = combine_scratch(TILE)
        seen = ties_before[group]
        first, stop = _group_span(group, n_groups, numel)
        for start in range(first, stop, TILE):
            length = min(TILE, stop - start)
            _task_tile_keys(sources, ranking, claims, last, start, length, True, buffers)
            taus[last, :length] = buffers[1][:length]
            seen = select(keys, taus[last], 0, length, threshold, room, seen, kept[last])
            for i in range(last):
                load_tau(addresses[i + 1], start, length, bf16, base_vals, taus[i])
                bit = np.uint8(1 << (i % 8))
                row = claims[i // 8, start:start + length]
                for j in range(length):
                    kept[i, j] = np.float32((row[j] & bit) != 0)
            combine_tile(params, base_vals, taus, kept, length, scratch)
            nonfinite[group] |= store_tile(scratch[1], length, output, start)
    return nonfinite.any()


@njit(cache=True)
def tensor_merge(sources, ranking, params, n_groups, output):
    """Per-tensor merge (one block spanning the flat tensor, ``ranking`` a ``Ranking``).

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
