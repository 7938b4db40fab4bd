"""The numba kernels give the same bits as the torch path they replace (n:m, magnitude, random)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import mergekit_cabs
from inputs import ALL_RECIPES, PER_TENSOR_RECIPES, fine_tunes, recipe_id
from mergekit_cabs import kernels
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, merge_tensor

compiled = pytest.importorskip("mergekit_cabs.kernels.compiled")

# A 144-case bit-for-bit sweep and a cold JIT compile in a subprocess (minutes on 2 cores): the full suite only; the unit tier
# reaches the compiled path through tests/test_properties.py.
pytestmark = pytest.mark.slow

CASES = [  # shape, k, block_size, densities, weights
    ((67, 45), 3, 64, [0.25, 0.25, 0.25], [1.2, 0.9, 1.1]),
    ((300,), 1, 16, [0.3], [1.7]),
    ((13, 31), 5, 8, [0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.5, 1.5, 1.0, 2.0]),
    ((9, 100), 3, 256, [0.6, 0.7, 0.5], [1.0, -0.5, 0.8]),
    # 15 tiles: the per-tensor kernel's thread groups split the tensor, ties straddle them
    ((300, 200), 3, 64, [0.25, 0.3, 0.2], [1.0, 1.0, 0.7]),
    # more than 8 tasks: the per-tensor masks take a second byte per element
    ((40, 24), 9, 32, [0.1] * 9, [1.0] * 9),
]


def bits(t):
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


def merge_both_ways(recipe, case, dtype, kind, normalize, seed):
    shape, k, block_size, densities, weights = case
    base, tuned = fine_tunes(shape, k, dtype, kind, seed)
    seeds = [1000 * seed + i for i in range(k)]
    args = (weights, densities, block_size, 0.8, normalize, seeds)
    return (merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=True)),
            merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=False)))


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["smooth", "tie-heavy", "zero-heavy"])
@pytest.mark.parametrize("normalize", [False, True])
def test_compiled_merge_equals_torch_path_bit_for_bit(recipe, dtype, kind, normalize):
    for seed, case in enumerate(CASES):
        fast, simple = merge_both_ways(recipe, case, dtype, kind, normalize, seed)
        assert fast.dtype == dtype
        assert torch.equal(bits(fast), bits(simple)), case


# Large enough for the per-tensor kernel to predict a window from a sample of its tiles.
WINDOWED_SHAPE = (520, 512)


@pytest.mark.parametrize("recipe", PER_TENSOR_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("dtype, kind", [(torch.float32, "smooth"), (torch.bfloat16, "tie-heavy"),
                                         (torch.bfloat16, "zero-heavy")], ids=str)
def test_compiled_per_tensor_merge_with_sampled_windows_equals_torch_path(recipe, dtype, kind):
    assert WINDOWED_SHAPE[0] * WINDOWED_SHAPE[1] >= compiled._SAMPLE_MIN
    case = (WINDOWED_SHAPE, 3, 64, [0.25, 0.3, 0.2], [1.0, 0.8, 1.2])
    fast, simple = merge_both_ways(recipe, case, dtype, kind, False, seed=11)
    assert torch.equal(bits(fast), bits(simple))


def first_task_low_digits(base, tuned, random=False):
    """(how ``_low_digit_counts`` found task 0's low digits, its counts, a pass's counts),
    ranked by ``|tau|`` or by random draws."""
    flat = [t.reshape(-1) for t in (base, *tuned)]
    numel, groups = flat[0].numel(), 8
    sources = compiled._Sources(np.array([t.data_ptr() for t in flat], np.int64), flat[0].dtype == torch.bfloat16, numel)
    draw_keys = np.array([kernels.random_score_keys(7)], np.uint64) if random else np.zeros((0, 2), np.uint64)
    ranking = compiled._Ranking(np.array([numel // 4] * len(tuned), np.int64), draw_keys, False)
    claims = np.zeros((1, numel), np.uint8)
    histograms = np.zeros((groups, 1 << 16), np.int32)
    candidates = compiled._new_candidates(groups, numel)
    no_cut = (np.uint32(0xFFFFFFFF), 0)
    compiled._predict_window(sources, ranking, claims, -1, no_cut, 0, candidates)
    compiled._record_and_count_next(sources, ranking, -1, no_cut, claims, histograms, np.zeros(groups + 1, np.int64),
                                    candidates)
    high, _ = compiled._from_top(histograms.sum(axis=0), ranking.quotas[0])
    gathered, passed = histograms.copy(), histograms.copy()
    how = compiled._low_digit_counts(sources, ranking, 0, claims, high, candidates, gathered)
    compiled._low_digit_pass(sources, ranking, 0, claims, high, passed)
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
    assert found == compiled.GATHERED
    assert np.array_equal(gathered, passed)


def test_low_digits_of_random_draws_come_from_the_stored_candidates():
    # random keys are independent, so the window is narrow and its keys (all low digits) fit
    base, tuned = fine_tunes((2048, 1024), 1, torch.float32, "smooth", 3)
    found, gathered, passed = first_task_low_digits(base, tuned, random=True)
    assert found == compiled.GATHERED
    assert np.array_equal(gathered, passed)


def test_low_digits_take_a_pass_when_the_window_holds_too_many_keys():
    # every |tau| in one high digit with varied low digits: more candidates than are stored
    base = torch.zeros(WINDOWED_SHAPE)
    tuned = [base + 1.0 + torch.rand(WINDOWED_SHAPE, generator=torch.Generator().manual_seed(0)) * 2 ** -8]
    found, gathered, passed = first_task_low_digits(base, tuned)
    assert found == compiled.PASSED
    assert np.array_equal(gathered, passed)


def test_random_draws_in_the_kernel_equal_random_scores():
    seed, first, length = 12345, (1 << 32) - 3000, 3000  # up to the last position a draw covers
    k1, k2 = kernels.random_score_keys(seed)
    draws = np.empty(length, np.float32)
    compiled._random_draws(np.uint64(k1), np.uint64(k2), first, length, draws)
    expected = kernels.random_scores((length,), seed, torch.device("cpu"), offset=first)
    assert torch.equal(torch.from_numpy(draws).view(torch.int32), expected.view(torch.int32))


@pytest.mark.skipif(compiled.numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("recipe", [Recipe(Sparsifier.NM, True, Combine.SUM),
                                    Recipe(Sparsifier.MAGNITUDE, True, Combine.TIES),
                                    Recipe(Sparsifier.RANDOM, True, Combine.SUM)],
                         ids=lambda r: r.sparsifier.name)
def test_compiled_merge_does_not_depend_on_the_thread_count(recipe):
    base, tuned = fine_tunes((301, 203), 3, torch.bfloat16, "tie-heavy", seed=3)
    args = MergeArgs([1.0, 0.8, 1.2], [0.25, 0.3, 0.2], 64, 1.0, False, [7, 8, 9], compiled=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)  # the compiled kernels follow torch's thread count
            results.append(merge_tensor(recipe, base, tuned, args))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(results[0]), bits(results[1]))


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


def test_torch_kernels_switch_turns_the_compiled_path_off(monkeypatch):
    monkeypatch.setenv(kernels.TORCH_KERNELS_ENV, "1")
    kernels.compiled_module.cache_clear()
    try:
        assert kernels.compiled_module() is None
        base, tuned = fine_tunes((8, 8), 1, torch.float32, "smooth", seed=0)
        with pytest.raises(RuntimeError, match=kernels.TORCH_KERNELS_ENV):
            merge_tensor(Recipe(Sparsifier.NM, False, Combine.SUM), base, tuned, MergeArgs([1.0], [0.5], 8,
                         compiled=True))
    finally:
        kernels.compiled_module.cache_clear()


CACHE_PROBE = """
import torch
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, compiled, merge_tensor
base = torch.zeros(64)
merge_tensor(Recipe(Sparsifier.NM, False, Combine.SUM), base, [base + 1], MergeArgs([1.0], [0.5], 16, compiled=True))
stats = compiled._nm_merge.stats
print(compiled.__file__, sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


def test_jit_cache_works_when_the_package_directory_is_read_only(tmp_path):
    """numba writes its cache beside the module when it can, else to the user-wide cache
    directory; a second process loads the kernel from there instead of compiling it."""
    package = tmp_path / "site" / "mergekit_cabs"
    shutil.copytree(Path(mergekit_cabs.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    kernels_dir = package / "kernels"  # the compiled module's directory, where numba writes first
    (kernels_dir / "__pycache__").write_text("")  # not a directory: unwritable even for root
    kernels_dir.chmod(0o555)
    package.chmod(0o555)
    cache_home = tmp_path / "cache"
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(package.parent), XDG_CACHE_HOME=str(cache_home), HOME=str(tmp_path))
    try:
        runs = [subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=600) for _ in range(2)]
    finally:
        package.chmod(0o755)
        kernels_dir.chmod(0o755)
    for run in runs:
        assert run.returncode == 0, run.stderr
    (first_file, first_hits, first_misses), (_, second_hits, second_misses) = (
        run.stdout.split() for run in runs)
    assert Path(first_file).parent == kernels_dir
    assert (first_hits, first_misses) == ("0", "1")
    assert (second_hits, second_misses) == ("1", "0")
    assert any((cache_home / "numba").rglob("*.nbi"))
