"""Property-based checks: every kernel equals the slow reference on random shapes, dtypes,
densities, block sizes and 1-5 models, tie-heavy inputs included."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import reference
from inputs import ALL_RECIPES, fine_tunes
from mergekit_cabs.kernels import (
    Sparsifier,
    conflict_aware_masks,
    keep_count,
    magnitude_mask,
    MergeArgs,
    merge_tensor,
    nm_mask,
    random_mask,
    random_scores,
)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True)

shapes = st.one_of(
    st.tuples(st.integers(1, 150)),
    st.tuples(st.integers(1, 6), st.integers(1, 40)),
)
densities = st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.3, 0.5, 0.7, 1.0])


@st.composite
def merge_inputs(draw):
    """(base, tuned, dtype): smooth or tie-heavy deltas (few magnitudes, many exact zeros)."""
    shape = draw(shapes)
    dtype = DTYPES[draw(st.sampled_from(sorted(DTYPES)))]
    k = draw(st.integers(1, 5))
    seed = draw(st.integers(0, 2**31 - 1))
    kind = "tie-heavy" if draw(st.booleans()) else "smooth"
    base, tuned = fine_tunes(shape, k, dtype, kind, seed, smooth_scale=0.01, tie_step=0.125)
    return base, tuned, dtype


def flat_taus(base, tuned):
    return [(t.float() - base.float()).reshape(-1) for t in tuned]


def as_lists(masks):
    return [m.reshape(-1).tolist() for m in masks]


@PROPERTY_SETTINGS
@given(merge_inputs(), densities, st.integers(1, 64))
def test_nm_mask_equals_reference(inputs, density, m):
    base, tuned, _ = inputs
    for tau in flat_taus(base, tuned):
        want = reference.masks([tau.tolist()], [density], m, conflict_aware=False)
        assert as_lists([nm_mask(tau, keep_count(density, m), m)]) == want


@PROPERTY_SETTINGS
@given(merge_inputs(), densities)
def test_magnitude_mask_equals_reference(inputs, density):
    base, tuned, _ = inputs
    for tau in flat_taus(base, tuned):
        want = reference.masks([tau.tolist()], [density], tau.numel(), conflict_aware=False)
        assert as_lists([magnitude_mask(tau, density)]) == want


@PROPERTY_SETTINGS
@given(merge_inputs(), densities, st.integers(0, 2**31 - 1))
def test_random_mask_equals_reference_with_the_same_draws(inputs, density, seed):
    base, tuned, _ = inputs
    for tau in flat_taus(base, tuned):
        scores = [random_scores(tau.shape, seed, tau.device).tolist()]
        want = reference.masks([tau.tolist()], [density], tau.numel(), scores, conflict_aware=False)
        assert as_lists([random_mask(tau, density, seed)]) == want


@PROPERTY_SETTINGS
@given(merge_inputs(), st.data(), st.integers(1, 64))
def test_conflict_aware_masks_equal_reference(inputs, data, m):
    base, tuned, _ = inputs
    taus = flat_taus(base, tuned)
    ds = [data.draw(densities) for _ in taus]
    got = conflict_aware_masks(taus, [keep_count(d, m) for d in ds], m)
    assert as_lists(got) == reference.masks([t.tolist() for t in taus], ds, m)


@PROPERTY_SETTINGS
@given(merge_inputs(), st.data(), st.sampled_from(ALL_RECIPES), st.integers(1, 64),
       st.sampled_from([0.0, 0.7, 1.0, 1.8]), st.booleans(), st.sampled_from([False, None]))
def test_merge_tensor_equals_reference(inputs, data, recipe, m, lam, normalize, compiled):
    """``compiled=None`` takes the numba n:m kernel where installed, ``False`` the torch path."""
    base, tuned, dtype = inputs
    ds = [data.draw(densities) for _ in tuned]
    weights = [data.draw(st.sampled_from([0.5, 1.0, 1.3, 1.8])) for _ in tuned]
    seeds = list(range(11, 11 + len(tuned)))
    scores = None
    if recipe.sparsifier is Sparsifier.RANDOM:
        scores = [random_scores(base.shape, s, base.device).reshape(-1).tolist() for s in seeds]
    got = merge_tensor(recipe, base, tuned, MergeArgs(weights, ds, block_size=m, lam=lam,
                       normalize=normalize, seeds=seeds, chunk_blocks=data.draw(st.integers(1, 8)),
                       compiled=compiled))
    want = reference.merge(base, tuned, weights, ds, sparsifier=recipe.sparsifier.value,
                           conflict_aware=recipe.conflict_aware, combine=recipe.combine.value,
                           block_size=m, lam=lam, normalize=normalize, scores=scores)
    assert got.dtype == dtype and got.shape == base.shape
    # The kernel works in float32 and rounds once to the input dtype; the reference sums in
    # float64. Allow one ulp of the dtype, plus float32 rounding of the largest input where
    # base and delta cancel.
    largest = max(float(t.float().abs().max()) for t in (base, *tuned))
    atol = 8 * torch.finfo(torch.float32).eps * (1 + largest) * max(weights) * max(lam, 1)
    torch.testing.assert_close(got.float(), want.to(dtype).float(),
                               rtol=torch.finfo(dtype).eps, atol=atol)
