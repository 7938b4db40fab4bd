"""Kernel properties, each checked against the slow reference in tests/reference.py."""

import math

import pytest
import torch

import reference
from inputs import ALL_RECIPES, recipe_id, task_vectors, tie_heavy_task_vectors
from mergekit_cabs.kernels import (
    Combine,
    Recipe,
    Sparsifier,
    block_top_mask,
    conflict_aware_masks,
    keep_count,
    magnitude_mask,
    MergeArgs,
    merge_tensor,
    nm_mask,
    random_mask,
    random_scores,
    score_bits,
    tail_keep_count,
    tail_keep_counts,
    task_masks,
    ties_combine,
    top_k_rows,
)

def as_lists(masks):
    return [m.reshape(-1).tolist() for m in masks]


def test_top_k_rows_keeps_k_largest_with_lowest_index_on_ties():
    keys = torch.tensor([[5, 1, 5, 5, 0], [2, 2, 2, 2, 2]], dtype=torch.int32)
    assert top_k_rows(keys, 2).tolist() == [
        [True, False, True, False, False],
        [True, True, False, False, False],
    ]


def test_score_bits_orders_like_float_magnitudes():
    values = torch.tensor([0.0, 1e-30, 0.5, 0.5000001, 3.0, 1e30])
    bits = score_bits(values)
    assert torch.equal(torch.argsort(bits, stable=True), torch.argsort(values, stable=True))


def test_nm_mask_keeps_exactly_n_per_full_block_of_nonzeros():
    tau = torch.randn(64, 48) + 10.0  # no zeros
    mask = nm_mask(tau, n=5, block_size=16)
    assert (mask.view(-1, 16).sum(dim=1) == 5).all()


def test_nm_mask_tail_block_keeps_rounded_share():
    tau = torch.randn(100) + 10.0
    mask = nm_mask(tau, n=3, block_size=16)  # 6 full blocks, tail of 4
    assert mask[:96].view(-1, 16).sum(dim=1).tolist() == [3] * 6
    assert int(mask[96:].sum()) == tail_keep_count(3, 4, 16) == 1


def test_nm_mask_block_larger_than_tensor_is_all_tail():
    tau = torch.randn(10) + 10.0
    assert int(nm_mask(tau, n=64, block_size=256).sum()) == tail_keep_count(64, 10, 256) == 3


def test_nm_mask_kept_magnitudes_dominate_dropped_ones_in_each_block():
    (tau,) = task_vectors(1, (32, 40), seed=3)
    mask = nm_mask(tau, n=7, block_size=20)
    a, keep = tau.abs().view(-1, 20), mask.view(-1, 20)
    kept_min = torch.where(keep, a, torch.inf).amin(dim=1)
    dropped_max = torch.where(keep | (a == 0), -torch.inf, a).amax(dim=1)
    assert (kept_min >= dropped_max).all()


@pytest.mark.parametrize("shape,m,n", [((13, 11), 8, 3), ((257,), 32, 3), ((6, 40), 256, 64)])
def test_nm_mask_equals_reference(shape, m, n):
    for taus in (task_vectors(1, shape, seed=1), tie_heavy_task_vectors(1, shape, seed=2)):
        got = nm_mask(taus[0], n, m)
        want = reference.masks([taus[0].reshape(-1).tolist()], [n / m], m, conflict_aware=False)
        assert as_lists([got]) == want


def test_exact_zeros_are_never_kept_or_claimed():
    tau = torch.zeros(4, 16)
    tau[:, 0] = 1.0
    first, second = conflict_aware_masks([tau, torch.ones(4, 16)], [4, 4], 16)
    assert first.sum() == 4 and first[:, 0].all()
    assert not (first & second).any()
    assert int(second.sum()) == 16  # four free positions per row besides column 0


def test_magnitude_mask_keeps_global_top_fraction():
    (tau,) = task_vectors(1, (30, 20), seed=4, zero_share=0.0)
    mask = magnitude_mask(tau, 0.1)
    assert int(mask.sum()) == 60
    assert tau.abs()[mask].min() >= tau.abs()[~mask].max()


def test_magnitude_mask_equals_reference_on_ties():
    (tau,) = tie_heavy_task_vectors(1, (9, 7), seed=5)
    want = reference.masks([tau.reshape(-1).tolist()], [0.3], tau.numel(), conflict_aware=False)
    assert as_lists([magnitude_mask(tau, 0.3)]) == want


def test_random_mask_keeps_exact_count_and_is_seeded():
    tau = torch.randn(50, 20) + 10.0
    a, b, c = random_mask(tau, 0.25, 7), random_mask(tau, 0.25, 7), random_mask(tau, 0.25, 8)
    assert int(a.sum()) == 250
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("densities", [[0.25, 0.25, 0.25], [0.1, 0.3, 0.5], [0.5, 0.5]])
def test_conflict_aware_masks_are_disjoint_when_densities_sum_to_at_most_one(densities):
    taus = task_vectors(len(densities), (24, 32), seed=6)
    masks = conflict_aware_masks(taus, [keep_count(d, 32) for d in densities], 32)
    for i in range(len(masks)):
        for j in range(i + 1, len(masks)):
            assert not (masks[i] & masks[j]).any()
            assert float((taus[i] * masks[i] * taus[j] * masks[j]).sum()) == 0.0


def test_first_conflict_aware_mask_is_the_plain_nm_mask():
    taus = task_vectors(3, (16, 48), seed=7)
    masks = conflict_aware_masks(taus, [12, 12, 12], 48)
    assert torch.equal(masks[0], nm_mask(taus[0], 12, 48))


def test_overlap_regime_fills_from_claimed_positions_by_own_magnitude():
    # Two tasks at density 0.75 in blocks of 4: the second gets the one free position,
    # then its two largest claimed ones.
    t1 = torch.tensor([4.0, 3.0, 2.0, 1.0])
    t2 = torch.tensor([1.0, 5.0, 9.0, 7.0])
    m1, m2 = conflict_aware_masks([t1, t2], [3, 3], 4)
    assert m1.tolist() == [True, True, True, False]
    assert m2.tolist() == [False, True, True, True]


@pytest.mark.parametrize("densities,m", [([0.25, 0.25, 0.25], 16), ([0.75, 0.75], 8), ([0.5, 0.3, 0.6], 10)])
def test_conflict_aware_masks_equal_reference(densities, m):
    for taus in (task_vectors(len(densities), (7, 13), seed=8), tie_heavy_task_vectors(len(densities), (7, 13), seed=9)):
        got = conflict_aware_masks(taus, [keep_count(d, m) for d in densities], m)
        want = reference.masks([t.reshape(-1).tolist() for t in taus], densities, m)
        assert as_lists(got) == want


def test_ties_combine_elects_sign_and_takes_disjoint_mean():
    deltas = list(torch.tensor([[1.0, -2.0, 0.0], [3.0, 1.0, 0.0], [-1.0, -2.0, 0.0]]))
    weights = [1.0, 1.0, 1.0]
    assert ties_combine(deltas, weights, normalize=False).tolist() == [4.0, -4.0, 0.0]
    assert ties_combine(deltas, weights, normalize=True).tolist() == [2.0, -2.0, 0.0]


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
def test_merge_tensor_equals_reference(recipe):
    g = torch.Generator().manual_seed(10)
    base = torch.randn(6, 22, generator=g)
    tuned = [base + tau for tau in task_vectors(3, (6, 22), seed=11)]
    weights, densities = [1.0, 1.3, 0.8], [0.25, 0.4, 0.5]
    seeds = [101, 102, 103]
    scores = None
    if recipe.sparsifier is Sparsifier.RANDOM:
        scores = [random_scores(base.shape, s, base.device).reshape(-1).tolist() for s in seeds]
    for normalize in (False, True):
        got = merge_tensor(recipe, base, tuned, MergeArgs(weights, densities, block_size=8, lam=0.7,
                           normalize=normalize, seeds=seeds))
        want = reference.merge(base, tuned, weights, densities, sparsifier=recipe.sparsifier.value,
                               conflict_aware=recipe.conflict_aware, combine=recipe.combine.value,
                               block_size=8, lam=0.7, normalize=normalize, scores=scores)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("compiled", [False, None], ids=["torch", "default"])
def test_a_non_finite_input_value_reaches_the_merged_tensor(recipe, compiled):
    # methods.py checks only the result for NaN/inf; this is why that is enough.
    for dtype in (torch.float32, torch.bfloat16):
        for model in range(4):  # the base, then each fine-tune
            for bad in (math.nan, math.inf, -math.inf):
                g = torch.Generator().manual_seed(model)
                base = torch.randn(6, 22, generator=g)
                inputs = [base] + [base + tau for tau in task_vectors(3, (6, 22), seed=12)]
                inputs = [t.to(dtype) for t in inputs]
                inputs[model][2, 3] = bad
                merged = merge_tensor(recipe, inputs[0], inputs[1:], MergeArgs([1.0, 0.0, 0.5], [0.1, 0.1, 0.1],
                                      block_size=8, lam=0.7, seeds=[1, 2, 3], compiled=compiled))
                assert not bool(torch.isfinite(merged).all()), (dtype, model, bad)


def test_lambda_zero_returns_base_bytes():
    base = torch.randn(8, 32).to(torch.bfloat16)
    tuned = [base + 0.1 for _ in range(2)]
    out = merge_tensor(Recipe(Sparsifier.NM, True, Combine.SUM), base, tuned, MergeArgs([1.0, 1.0], [0.25, 0.25], 16, lam=0.0))
    assert torch.equal(out.view(torch.int16), base.view(torch.int16))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_output_keeps_input_dtype_and_equals_float32_result_rounded(dtype):
    base = torch.randn(8, 32).to(dtype)
    tuned = [(base.float() + torch.randn(8, 32) * 0.1).to(dtype) for _ in range(2)]
    recipe = Recipe(Sparsifier.NM, True, Combine.TIES)
    out = merge_tensor(recipe, base, tuned, MergeArgs([1.0, 1.0], [0.25, 0.25], 16))
    assert out.dtype == dtype
    full = merge_tensor(recipe, base.float(), [t.float() for t in tuned], MergeArgs([1.0, 1.0], [0.25, 0.25], 16))
    assert torch.equal(out, full.to(dtype))


@pytest.mark.parametrize("chunk_blocks", [1, 3, 7, 1000])
def test_chunking_does_not_change_the_result(chunk_blocks):
    base = torch.randn(37, 29)
    tuned = [base + t for t in task_vectors(3, (37, 29), seed=12)]
    recipe = Recipe(Sparsifier.NM, True, Combine.TIES)
    args = ([1.2, 1.2, 1.0], [0.3, 0.3, 0.3], 16)
    assert torch.equal(merge_tensor(recipe, base, tuned, MergeArgs(*args, chunk_blocks=chunk_blocks)),
                       merge_tensor(recipe, base, tuned, MergeArgs(*args)))


def test_merge_is_deterministic_across_runs():
    base = torch.randn(64, 64).to(torch.bfloat16)
    tuned = [(base.float() + t).to(torch.bfloat16) for t in tie_heavy_task_vectors(3, (64, 64), seed=13)]
    for recipe in ALL_RECIPES:
        args = MergeArgs([1.0] * 3, [0.3] * 3, 32, seeds=[1, 2, 3])
        a = merge_tensor(recipe, base, tuned, args)
        b = merge_tensor(recipe, base, tuned, args)
        assert torch.equal(a.view(torch.int16), b.view(torch.int16))


def test_block_top_mask_handles_empty_tensor():
    assert block_top_mask(torch.empty(0, dtype=torch.int32), 2, 8).numel() == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (mergekit-yaml --cuda)")
@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
def test_cuda_masks_equal_cpu_masks_and_merges_agree(recipe):
    base = torch.randn(37, 64, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    taus = task_vectors(3, base.shape, seed=4, dtype=torch.bfloat16)
    densities, seeds = [0.25, 0.3, 0.2], [7, 8, 9]
    cpu_masks = task_masks(recipe, taus, densities, 16, seeds)
    cuda_masks = task_masks(recipe, [t.cuda() for t in taus], densities, 16, seeds)
    for cpu, cuda in zip(cpu_masks, cuda_masks):
        assert torch.equal(cpu, cuda.cpu())
    tuned = [(base.float() + t).to(torch.bfloat16) for t in taus]
    args = MergeArgs([1.0, 0.8, 1.2], densities, 16, 0.9, False, seeds)
    on_cpu = merge_tensor(recipe, base, tuned, args)
    on_cuda = merge_tensor(recipe, base.cuda(), [t.cuda() for t in tuned], args)
    assert on_cuda.device.type == "cuda" and on_cuda.dtype == torch.bfloat16
    torch.testing.assert_close(on_cuda.cpu().float(), on_cpu.float(), rtol=1e-2, atol=1e-6)


def test_conflict_aware_tail_counts_share_out_by_largest_remainder():
    # 2 x n=2 of m=4 fill full blocks exactly; a tail of 1 has q = 0.5 + 0.5: one entry in all.
    assert tail_keep_counts([2, 2], 1, 4, conflict_aware=True) == [1, 0]
    assert tail_keep_counts([2, 2], 1, 4, conflict_aware=False) == [1, 1]
    assert tail_keep_counts([11, 11, 10], 20, 32, conflict_aware=True) == [7, 7, 6]


@pytest.mark.parametrize("k,m,tail", [(2, 4, 1), (3, 32, 20), (4, 7, 5), (3, 16, 3)])
def test_conflict_aware_tail_is_disjoint_whenever_full_blocks_are(k, m, tail):
    for ns in ([m // k] * k, [1] * k, list(range(1, k + 1))):
        if sum(ns) > m:
            continue
        counts = tail_keep_counts(ns, tail, m, conflict_aware=True)
        assert sum(counts) <= tail
        assert counts == tail_keep_counts(ns, tail, m, True)  # deterministic
        assert all(abs(c - n * tail / m) < 1 for c, n in zip(counts, ns))


def test_conflict_aware_masks_disjoint_in_tail_of_two_halves():
    taus = [torch.arange(1.0, 6.0), torch.arange(5.0, 0.0, -1.0)]
    first, second = conflict_aware_masks(taus, [2, 2], 4)
    assert not (first & second).any()


def test_random_scores_are_a_function_of_seed_and_position():
    whole = random_scores((10, 30), 7, torch.device("cpu"))
    part = random_scores((3, 30), 7, torch.device("cpu"), offset=90)
    assert torch.equal(whole[3:6], part)
    assert ((whole >= 0) & (whole < 1)).all()
    assert not torch.equal(whole, random_scores((10, 30), 8, torch.device("cpu")))


def test_random_scores_are_roughly_uniform_and_unrelated_across_seeds():
    a = random_scores((200_000,), 1, torch.device("cpu"))
    b = random_scores((200_000,), 2, torch.device("cpu"))
    assert abs(float(a.mean()) - 0.5) < 0.005
    assert abs(float(torch.corrcoef(torch.stack([a, b]))[0, 1])) < 0.01
    counts = torch.histc(a, bins=10, min=0, max=1)
    assert (counts - 20_000).abs().max() < 600  # ~4.5 sigma of a binomial count


@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("norm", ["l1", "l2"])
def test_the_norm_rescale_equals_the_reference(recipe, norm):
    g = torch.Generator().manual_seed(20)
    base = torch.randn(6, 22, generator=g)
    tuned = [base + tau for tau in task_vectors(3, (6, 22), seed=21)]
    weights, densities, seeds = [1.0, 1.3, 0.8], [0.25, 0.4, 0.5], [7, 8, 9]
    scores = None
    if recipe.sparsifier is Sparsifier.RANDOM:
        scores = [random_scores(base.shape, s, base.device).reshape(-1).tolist() for s in seeds]
    got = merge_tensor(recipe, base, tuned, MergeArgs(weights, densities, block_size=8, lam=0.7, seeds=seeds,
                                                      rescale=norm))
    want = reference.merge(base, tuned, weights, densities, sparsifier=recipe.sparsifier.value,
                           conflict_aware=recipe.conflict_aware, combine=recipe.combine.value,
                           block_size=8, lam=0.7, scores=scores, rescale=norm)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("norm, p", [("l1", 1), ("l2", 2)])
def test_at_weight_one_the_norm_rescale_gives_each_pruned_task_vector_its_dense_norm(norm, p):
    recipe = Recipe(Sparsifier.NM, True, Combine.SUM)
    g = torch.Generator().manual_seed(22)
    base = torch.randn(40, 64, generator=g)
    tuned = [base + tau for tau in task_vectors(3, (40, 64), seed=23)]
    for i in range(3):  # one model at a time, the others at weight 0, so the merge is c_i M_i tau_i
        weights = [1.0 if j == i else 0.0 for j in range(3)]
        merged = merge_tensor(recipe, base, tuned, MergeArgs(weights, [0.3, 0.3, 0.3], block_size=16, rescale=norm))
        kept, dense = merged - base, tuned[i] - base
        assert float(kept.norm(p)) == pytest.approx(float(dense.norm(p)), rel=1e-5)
        assert 0 < int((kept != 0).sum()) < int((dense != 0).sum())


def test_a_model_whose_mask_keeps_nothing_gets_a_norm_factor_of_one():
    from mergekit_cabs.kernels import with_norm_factors

    base = torch.zeros(64)
    tuned = [base + 1.0, base.clone()]  # the second task vector is all zeros: nothing is kept
    args = with_norm_factors(Recipe(Sparsifier.NM, False, Combine.SUM), base, tuned,
                             MergeArgs([1.0, 1.0], [0.25, 0.25], block_size=16, rescale="l1"))
    assert args.norm_factors == (4.0, 1.0)
