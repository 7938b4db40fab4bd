"""The compiled n:m kernel: its threshold search (lockstep on the keys' high halves, exact
finish on the low halves) picks, in every block of a tile, exactly the reference's
top-``quota`` keys, lowest index first among equal keys, whatever the previous tile's guess;
and spans of whole blocks merge as the whole tensor does."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from compiled_paths import bits
from inputs import fine_tunes
from mergekit_cabs import kernels
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier

compiled = pytest.importorskip("mergekit_cabs.kernels.compiled")
common, nm = compiled.common, compiled.nm

SEARCH_SETTINGS = settings(max_examples=200, deadline=None, derandomize=True)


def reference_winners(keys, quota):
    """Positions of the ``quota`` largest keys, ties to the lowest index (slow, obvious)."""
    order = sorted(range(len(keys)), key=lambda j: (-int(keys[j]), j))
    return set(order[:max(quota, 0)])


@st.composite
def tiles(draw):
    """(keys, block_size, quota, tail_quota, guess): keys drawn from a few high halves and a
    few low halves, so blocks share high halves (the exact finish) and whole keys (ties)."""
    block_size = draw(st.integers(1, 96))
    n_blocks = draw(st.integers(1, 6))
    length = block_size * n_blocks - draw(st.integers(0, block_size - 1))
    highs = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4))
    lows = draw(st.lists(st.integers(0, 0xFFFF), min_size=1, max_size=4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    keys = (rng.choice(highs, length).astype(np.uint32) << 16) | rng.choice(lows, length).astype(np.uint32)
    quota = draw(st.integers(0, block_size))
    tail = length - (n_blocks - 1) * block_size
    tail_quota = draw(st.integers(0, tail)) if tail < block_size else quota
    guess = draw(st.one_of(st.just((0xFFFF, 0)), st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))))
    return keys, block_size, quota, tail_quota, sorted(guess) if guess != (0xFFFF, 0) else guess


def search_winners(keys, block_size, quota, tail_quota, guess):
    """Per block, the positions the compiled search and ``common.select`` keep (every tau nonzero)."""
    length = keys.size
    n_blocks = -(-length // block_size)
    keys16 = (keys >> 16).astype(np.uint16)
    search = np.zeros((nm.SEARCH_ROWS, n_blocks), np.int64)
    lows = np.zeros(block_size, np.uint16)
    cuts = np.zeros((2, n_blocks), np.int64)
    nm._tile_cuts(keys, keys16, block_size, length, quota, tail_quota,
                  np.array(guess, np.int64), search, lows, cuts)
    kept = np.zeros(length, np.float32)
    ones = np.ones(length, np.float32)
    for b in range(n_blocks):
        first = b * block_size
        common.select(keys, ones, first, min(block_size, length - first), np.uint32(cuts[0, b]),
                      cuts[1, b], 0, kept)
    return [set(np.flatnonzero(kept[b * block_size:(b + 1) * block_size]).tolist()) for b in range(n_blocks)]


@SEARCH_SETTINGS
@given(tiles())
def test_tile_search_keeps_the_reference_top_quota_of_every_block(tile):
    keys, block_size, quota, tail_quota, guess = tile
    got = search_winners(keys, block_size, quota, tail_quota, guess)
    for b, winners in enumerate(got):
        block = keys[b * block_size:(b + 1) * block_size]
        q = quota if block.size == block_size else tail_quota
        assert winners == reference_winners(block, q), (b, q)


def test_tile_search_does_not_depend_on_the_guess():
    rng = np.random.default_rng(7)
    keys = (rng.integers(0x3000, 0x3100, 1024).astype(np.uint32) << 16) | rng.integers(0, 4, 1024).astype(np.uint32)
    no_guess = search_winners(keys, 64, 16, 16, (0xFFFF, 0))
    for guess in [(0, 0), (0x3000, 0x3000), (0x30F0, 0xFFFF), (0x3050, 0x3060)]:
        assert search_winners(keys, 64, 16, 16, guess) == no_guess


@pytest.mark.slow
def test_compiled_nm_merge_of_block_spans_equals_one_call():
    # merge_tensor hands the compiled kernel the whole tensor; callers that cut it into spans
    # of whole blocks (nm_chunk_spans) must get the same bits
    shape, k, block_size, densities, weights = ((97, 64), 3, 16, [0.25, 0.25, 0.3], [1.0, 1.0, 1.0])
    base, tuned = fine_tunes(shape, k, torch.bfloat16, "tie-heavy", 5)
    recipe = Recipe(Sparsifier.NM, True, Combine.TIES)
    args = MergeArgs(weights, densities, block_size, 0.8, False, [0, 1, 2])
    flat = [t.reshape(-1) for t in (base, *tuned)]
    whole = torch.empty_like(flat[0])
    compiled.merge_chunk(recipe, flat[0], flat[1:], args, whole)
    for chunk_blocks in (1, 5, 64):
        pieces = torch.empty_like(flat[0])
        spans = kernels.nm_chunk_spans(flat[0].numel(), block_size, chunk_blocks)
        assert len(spans) > 1 or chunk_blocks == 64
        for lo, hi in spans:
            compiled.merge_chunk(recipe, flat[0][lo:hi], [t[lo:hi] for t in flat[1:]], args, pieces[lo:hi])
        assert torch.equal(bits(pieces), bits(whole)), chunk_blocks
