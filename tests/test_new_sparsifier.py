"""A new sparsifier, added the way docs/architecture.md says: a toy row-wise top-k.

The guide's steps, each done here in the test where the package would do it in a file:

1. ``kernels/rules.py``: a ``Sparsifier`` with its traits. Row-wise top-k scores by ``|tau|``
   in independent blocks (each row of the tensor): ``Sparsifier("rows", blocks=True)``.
2. ``strategies.py``: a ``SparsifierStrategy``: table and card words, extra parameters (none)
   and its block length (the tensor's last dimension).
3. ``methods.py``: its rows of ``METHOD_TABLE`` (here: ``MethodInfo`` objects).
4. ``tests/reference.py``: its rule; row-wise top-k is the reference n:m with m = the row.

Nothing else changes: the kernels pick the torch or compiled path by the traits, and the
keep counts and the search's pruning read the traits and the block length.
"""

import pytest
import torch

import reference
from inputs import task_vectors
from mergekit_cabs.keep_counts import tensor_keep_counts
from mergekit_cabs.kernels import MergeArgs, Sparsifier, merge_tensor
from mergekit_cabs.methods import GroupInputs, MethodInfo, merge_group_tensor
from mergekit_cabs.search.pruned import TensorInputs, model_masks
from mergekit_cabs.strategies import SUM, TIES, SparsifierStrategy

ROWS = Sparsifier("rows", blocks=True)
ROW_TOP_K = SparsifierStrategy(
    kernel=ROWS, table_words="top-k per row",
    card_sentence="row-wise magnitude pruning (in every row the share `density` with the largest |τ| is kept)",
    block_length=lambda block_size, shape: shape[-1],
)
TOY_METHODS = [MethodInfo("row_topk_linear", ROW_TOP_K, False, SUM, "Row top-k Task Arithmetic", "(toy)"),
               MethodInfo("ca_row_topk_ties", ROW_TOP_K, True, TIES, "Conflict-Aware Row top-k TIES", "(toy)")]
SHAPE, WEIGHTS, DENSITIES = (6, 20), (1.0, 0.7, 1.3), (0.3, 0.25, 0.4)


def toy_inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(SHAPE, generator=generator)
    return base, [base + tau for tau in task_vectors(3, SHAPE, seed=seed + 1)]


@pytest.mark.parametrize("info", TOY_METHODS, ids=lambda i: i.name)
def test_a_toy_row_wise_sparsifier_merges_as_its_reference(info):
    base, tuned = toy_inputs()
    shared = {"lambda": 0.8, "normalize": False}
    got = merge_group_tensor(info, GroupInputs("w", ("base", base), tuple(zip("abc", tuned)), WEIGHTS,
                                               DENSITIES, shared), seed=0)
    want = reference.merge(base, tuned, list(WEIGHTS), list(DENSITIES), sparsifier="n:m",
                           conflict_aware=info.conflict_aware, combine=info.recipe.combine.value,
                           block_size=SHAPE[-1], lam=0.8)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("info", TOY_METHODS, ids=lambda i: i.name)
def test_the_toy_runs_on_the_compiled_path_its_traits_pick_with_the_torch_paths_bits(info):
    base, tuned = toy_inputs(3)
    args = MergeArgs(WEIGHTS, DENSITIES, block_size=SHAPE[-1])
    fast = merge_tensor(info.recipe, base, tuned, args)
    slow = merge_tensor(info.recipe, base, tuned, MergeArgs(WEIGHTS, DENSITIES, block_size=SHAPE[-1], compiled=False))
    assert torch.equal(fast.view(torch.int32), slow.view(torch.int32))


def test_the_toys_keep_counts_and_search_masks_are_per_row():
    base, tuned = toy_inputs(5)
    info = TOY_METHODS[1]
    m = info.sparsifier.block_length(None, SHAPE)
    assert tensor_keep_counts(info.recipe, DENSITIES, m, base.numel()).counts == (6, 5, 8)
    inputs = TensorInputs("w", base, tuple(tuned), torch.float32, info.recipe, DENSITIES, m, 1.0, False, 0)
    masks, _ = model_masks(inputs, base.reshape(-1), [t.reshape(-1) for t in tuned])
    taus = [(t - base).reshape(-1).tolist() for t in tuned]
    want = reference.masks(taus, DENSITIES, m, conflict_aware=True)
    assert [mask.tolist() for mask in masks] == want
