"""One merge on both paths (compiled and torch), compared by their bits."""

import torch

from inputs import fine_tunes
from mergekit_cabs.kernels import MergeArgs, merge_tensor


def bits(t):
    """``t``'s bits as integers: ``torch.equal`` on them tells -0.0 from 0.0 and compares NaNs."""
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


def merge_both_ways(recipe, case, dtype, kind, normalize, seed):
    """(compiled, torch path) merges of ``fine_tunes`` drawn for ``case``: (shape, k,
    block_size, densities, weights)."""
    shape, k, block_size, densities, weights = case
    base, tuned = fine_tunes(shape, k, dtype, kind, seed)
    seeds = [1000 * seed + i for i in range(k)]
    args = (weights, densities, block_size, 0.8, normalize, seeds)
    return (merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=True)),
            merge_tensor(recipe, base, tuned, MergeArgs(*args, compiled=False)))
