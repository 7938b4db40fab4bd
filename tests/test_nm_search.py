"""The compiled n:m threshold search (lockstep on the keys' high halves, exact finish on the
low halves) picks, in every block of a tile, exactly the reference's top-``quota`` keys,
lowest index first among equal keys, whatever the previous tile's guess."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

compiled = pytest.importorskip("mergekit_cabs.kernels.compiled")

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
    """Per block, the positions the compiled search and ``_select`` keep (every tau nonzero)."""
    length = keys.size
    n_blocks = -(-length // block_size)
    keys16 = (keys >> 16).astype(np.uint16)
    search = np.zeros((compiled.SEARCH_ROWS, n_blocks), np.int64)
    lows = np.zeros(block_size, np.uint16)
    cuts = np.zeros((2, n_blocks), np.int64)
    compiled._tile_cuts(keys, keys16, block_size, length, quota, tail_quota,
                        np.array(guess, np.int64), search, lows, cuts)
    kept = np.zeros(length, np.float32)
    ones = np.ones(length, np.float32)
    for b in range(n_blocks):
        first = b * block_size
        compiled._select(keys, ones, first, min(block_size, length - first), np.uint32(cuts[0, b]),
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
