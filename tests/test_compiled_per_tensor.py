"""The compiled per-tensor kernel (magnitude, random): its merges equal the torch path's bit
for bit where it predicts a window of candidates from a sample, its low digits come from the
gathered candidates or from a pass alike, and its random draws are ``random_scores``."""

import numpy as np
import pytest
import torch

from compiled_paths import bits, merge_both_ways
from inputs import PER_TENSOR_RECIPES, fine_tunes, recipe_id
from mergekit_cabs import kernels
from mergekit_cabs.kernels import MergeArgs, merge_tensor

compiled = pytest.importorskip("mergekit_cabs.kernels.compiled")
common, per_tensor = compiled.common, compiled.per_tensor

# Tensors of a quarter million elements and a few kernel compiles: the full suite only.
pytestmark = pytest.mark.slow

# Large enough for the per-tensor kernel to predict a window from a sample of its tiles.
WINDOWED_SHAPE = (520, 512)


@pytest.mark.parametrize("recipe", PER_TENSOR_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("dtype, kind", [(torch.float32, "smooth"), (torch.bfloat16, "tie-heavy"),
                                         (torch.bfloat16, "zero-heavy")], ids=str)
def test_compiled_per_tensor_merge_with_sampled_windows_equals_torch_path(recipe, dtype, kind):
    assert WINDOWED_SHAPE[0] * WINDOWED_SHAPE[1] >= per_tensor._SAMPLE_MIN
    case = (WINDOWED_SHAPE, 3, 64, [0.25, 0.3, 0.2], [1.0, 0.8, 1.2])
    fast, simple = merge_both_ways(recipe, case, dtype, kind, False, seed=11)
    assert torch.equal(bits(fast), bits(simple))


def first_task_low_digits(base, tuned, random=False):
    """(how ``_low_digit_counts`` found task 0's low digits, its counts, a pass's counts),
    ranked by ``|tau|`` or by random draws."""
    flat = [t.reshape(-1) for t in (base, *tuned)]
    numel, groups = flat[0].numel(), 8
    sources = common.Sources(np.array([t.data_ptr() for t in flat], np.int64), flat[0].dtype == torch.bfloat16, numel)
    draw_keys = np.array([kernels.random_score_keys(7)], np.uint64) if random else np.zeros((0, 2), np.uint64)
    ranking = common.Ranking(np.array([numel // 4] * len(tuned), np.int64), draw_keys, False)
    claims = np.zeros((1, numel), np.uint8)
    histograms = np.zeros((groups, 1 << 16), np.int32)
    candidates = per_tensor._new_candidates(groups, numel)
    no_cut = (np.uint32(0xFFFFFFFF), 0)
    per_tensor._predict_window(sources, ranking, claims, -1, no_cut, 0, candidates)
    per_tensor._record_and_count_next(sources, ranking, -1, no_cut, claims, histograms, np.zeros(groups + 1, np.int64),
                                      candidates)
    high, _ = per_tensor._from_top(histograms.sum(axis=0), ranking.quotas[0])
    gathered, passed = histograms.copy(), histograms.copy()
    how = per_tensor._low_digit_counts(sources, ranking, 0, claims, high, candidates, gathered)
    per_tensor._low_digit_pass(sources, ranking, 0, claims, high, passed)
    return how, gathered, passed


def few_ulp_fine_tunes(shape, k, seed):
    """(base, ``k`` fine-tunes) in bf16: weights in [1.25, 1.75) moved by -3..3 ulps (2^-7),
    so every ``tau`` is exact in 16 bits (low key digits 0), as in a small-learning-rate
    bf16 fine-tune."""
    generator = torch.Generator().manual_seed(seed)
    base = (1.25 + 0.5 * torch.rand(shape, generator=generator)).to(torch.bfloat16)
    steps = [torch.randint(-3, 4, shape, generator=generator).float() * 2 ** -7 for _ in range(k)]
    return base, [(base.float() + step).to(torch.bfloat16) for step in steps]


@pytest.mark.parametrize("recipe", PER_TENSOR_RECIPES, ids=recipe_id)
def test_compiled_per_tensor_merge_of_few_ulp_fine_tunes_equals_torch_path(recipe):
    base, tuned = few_ulp_fine_tunes(WINDOWED_SHAPE, 3, 5)
    args = ([1.0, 0.8, 1.2], [0.25, 0.3, 0.2], 64, 1.0, False, [7, 8, 9])
    fast = merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=True))
    assert torch.equal(bits(fast), bits(merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=False))))


def test_low_digits_of_few_ulp_fine_tunes_are_counted_while_gathering():
    # every tau exact in 16 bits: the keys of the window are counted, not stored
    found, gathered, passed = first_task_low_digits(*few_ulp_fine_tunes(WINDOWED_SHAPE, 1, 3))
    assert found == per_tensor.GATHERED
    assert np.array_equal(gathered, passed)


def test_low_digits_of_random_draws_come_from_the_stored_candidates():
    # random keys are independent, so the window is narrow and its keys (all low digits) fit
    base, tuned = fine_tunes((2048, 1024), 1, torch.float32, "smooth", 3)
    found, gathered, passed = first_task_low_digits(base, tuned, random=True)
    assert found == per_tensor.GATHERED
    assert np.array_equal(gathered, passed)


def test_low_digits_take_a_pass_when_the_window_holds_too_many_keys():
    # every |tau| in one high digit with varied low digits: more candidates than are stored
    base = torch.zeros(WINDOWED_SHAPE)
    tuned = [base + 1.0 + torch.rand(WINDOWED_SHAPE, generator=torch.Generator().manual_seed(0)) * 2 ** -8]
    found, gathered, passed = first_task_low_digits(base, tuned)
    assert found == per_tensor.PASSED
    assert np.array_equal(gathered, passed)


def test_random_draws_in_the_kernel_equal_random_scores():
    seed, first, length = 12345, (1 << 32) - 3000, 3000  # up to the last position a draw covers
    k1, k2 = kernels.random_score_keys(seed)
    draws = np.empty(length, np.float32)
    common.random_draws(np.uint64(k1), np.uint64(k2), first, length, draws)
    expected = kernels.random_scores((length,), seed, torch.device("cpu"), offset=first)
    assert torch.equal(torch.from_numpy(draws).view(torch.int32), expected.view(torch.int32))
