"""Disjointness is decided by keep counts: conflict-aware masks are disjoint exactly when
the counts fit every block (tail included), and the card and inspect say so only then."""

import itertools

import pytest
import torch

from inputs import dense_task_vectors
from mergekit_cabs.card import disjointness_sentence, procedure_paragraph
from mergekit_cabs.mask_statistics import keep_count_sentence, keep_count_summary
from mergekit_cabs.keep_counts import counts_fit, disjoint_block_size, tensor_keep_counts
from mergekit_cabs.kernels import Combine, Recipe, Sparsifier, task_masks
from mergekit_cabs.merge_log import TensorRecord
from mergekit_cabs.methods import METHODS_BY_NAME

CABS = Recipe(Sparsifier.NM, True, Combine.SUM)
CA_MAGNITUDE = Recipe(Sparsifier.MAGNITUDE, True, Combine.SUM)


def shared_positions(masks):
    """Positions kept by two or more masks."""
    return int((torch.stack(masks).sum(0) >= 2).sum())


def test_three_models_at_033_overflow_a_block_of_32():
    counts = tensor_keep_counts(CABS, [0.33] * 3, 32, 64 * 32)
    assert counts.counts == (11, 11, 11) and counts.excess == 64
    masks = task_masks(CABS, dense_task_vectors(3, (64, 32)), [0.33] * 3, 32)
    assert shared_positions(masks) == 64


def test_tail_of_two_halves_fits_when_full_blocks_do():
    # m = 4, numel = 5: the tail of 1 element keeps round(2 * 1 / 4) = 1 per model on its
    # own (2 > 1); shared out by largest remainder it keeps 1 in all.
    counts = tensor_keep_counts(CABS, [0.5, 0.5], 4, 5)
    assert counts.tail == 1 and sum(counts.tail_counts) == 1 and counts.excess == 0
    masks = task_masks(CABS, dense_task_vectors(2, (5,)), [0.5, 0.5], 4)
    assert shared_positions(masks) == 0


@pytest.mark.parametrize("densities,block_size,numel", [
    (d, m, n) for d, m, n in itertools.product(
        [(0.33, 0.33, 0.33), (0.5, 0.5), (0.25, 0.3, 0.4), (0.6, 0.6), (0.1, 0.2, 0.3, 0.4)],
        [4, 7, 16, 32], [5, 33, 100])
])
def test_masks_are_disjoint_exactly_when_counts_say_so(densities, block_size, numel):
    for recipe in (CABS, CA_MAGNITUDE):
        counts = tensor_keep_counts(recipe, densities, block_size, numel)
        masks = task_masks(recipe, dense_task_vectors(len(densities), (numel,)), densities, block_size)
        assert (shared_positions(masks) == 0) == (counts.excess == 0)


def test_disjoint_block_size_is_the_smallest_that_fits():
    assert disjoint_block_size([0.33] * 3, 32) == 33
    assert disjoint_block_size([0.33] * 3, 32, power_of_two=True) == 64
    assert counts_fit([0.33] * 3, 33) and not counts_fit([0.33] * 3, 32)


def record(name, densities, block_size, numel):
    return TensorRecord(name, numel, tuple(densities), (1.0,) * len(densities), block_size)


def test_card_says_disjoint_only_when_every_tensor_fits():
    fits = [record("a", [0.25, 0.25], 32, 64), record("b", [0.25, 0.25], 32, 100)]
    assert "are disjoint" in disjointness_sentence(CABS, [0.25, 0.25], 32, fits)
    over = [record("w", [0.33] * 3, 32, 64 * 32)]
    text = disjointness_sentence(CABS, [0.33] * 3, 32, over)
    assert "In 1 of 1 tensors the keep counts exceed the block (e.g. w: 11 + 11 + 11 = 33 > 32)" in text
    assert "up to 64 kept entries" in text
    assert "are disjoint" not in text.split("elsewhere")[0]


def test_card_without_records_decides_from_the_configured_counts():
    assert "11 + 11 + 11 = 33 > 32 exceed the block" in disjointness_sentence(CABS, [0.33] * 3, 32, ())
    assert "8 + 8 = 16 ≤ 32 fit every block" in disjointness_sentence(CABS, [0.25, 0.25], 32, ())


def test_card_shows_the_per_tensor_range_of_a_density_gradient():
    from mergekit.config import MergeConfiguration

    config = MergeConfiguration.model_validate({
        "merge_method": "cabs", "base_model": "/m/base",
        "models": [{"model": "/m/a", "parameters": {"density": [0.1, 0.3]}},
                   {"model": "/m/b", "parameters": {"density": 0.25}}],
        "parameters": {"block_size": 20}, "dtype": "float32"})
    records = [record("x", [0.1, 0.25], 20, 40), record("y", [0.3, 0.25], 20, 40)]
    text = procedure_paragraph(METHODS_BY_NAME["cabs"], config, records)
    assert "`/m/a` (weight 1, density 0.1 to 0.3 by tensor)" in text
    assert "`/m/b` (weight 1, density 0.25 → 5:20)" in text


def test_inspect_states_overlap_by_counts():
    report = {"tensors": 1, "keep_counts": keep_count_summary(
        CABS, [("w", tensor_keep_counts(CABS, [0.33] * 3, 32, 2048))])}
    assert report["keep_counts"]["disjoint"] is False
    assert "11 + 11 + 11 = 33 > 32" in keep_count_sentence(report)
    fits = {"tensors": 1, "keep_counts": keep_count_summary(
        CABS, [("w", tensor_keep_counts(CABS, [0.25, 0.25], 32, 2048))])}
    assert "disjoint" in keep_count_sentence(fits) and fits["keep_counts"]["disjoint"]


def test_four_models_at_025_starve_the_last_one_and_at_010_none():
    from mergekit_cabs.keep_counts import Starved, starved_models

    # 64:256 each: the last model finds 64 of 256 positions free, exactly its quota.
    assert starved_models([0.25] * 4, 256) == [Starved(3, 0.25, 0.25)]
    assert starved_models([0.10] * 4, 256) == []
    # 45:256 each (0.175): the last finds 121 free, 2.7 times its quota.
    assert starved_models([0.175] * 4, 256) == []


def test_per_tensor_starvation_uses_the_densities_and_density_zero_is_never_starved():
    from mergekit_cabs.keep_counts import starved_models

    assert [s.index for s in starved_models([0.5, 0.3, 0.0], None)] == [1]
    assert starved_models([0.5, 0.3], None)[0].free_share == 0.5
