"""The torch path of the per-tensor sparsifiers (magnitude, random) in passes over chunks:
equal bit for bit to the whole-tensor kernels, and bounded in memory."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from inputs import PER_TENSOR_RECIPES, recipe_id, zero_heavy_tie_heavy_fine_tunes
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, masked_merge, merge_tensor, task_masks

DENSITY_SETS = {
    "disjoint": [0.25, 0.3, 0.2, 0.1, 0.15],
    "overlap": [0.6, 0.7, 0.5, 1.0, 0.0],
}


def whole_tensor_merge(recipe, base, tuned, weights, densities, seeds):
    """The merge composed from the whole-tensor kernels (``task_masks``, ``masked_merge``)."""
    base32 = base.reshape(-1).float()
    taus = [t.reshape(-1).float() - base32 for t in tuned]
    masks = task_masks(recipe, taus, densities, 1, seeds)
    merged = masked_merge(recipe, base32, taus, masks,
                          MergeArgs(weights, densities, lam=0.7, normalize=recipe.combine is Combine.TIES))
    return merged.to(base.dtype).view(base.shape)


# (k, share of exact zeros, shape): every k of 1..5, odd shapes, 0-90% zeros.
CASES = [(1, 0.9, (101,)), (2, 0.5, (13, 29)), (3, 0.0, (3, 5, 7)), (4, 0.7, (41, 9)), (5, 0.5, (200,))]


@pytest.mark.parametrize("recipe", PER_TENSOR_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("densities", DENSITY_SETS.values(), ids=DENSITY_SETS.keys())
def test_chunked_per_tensor_merge_equals_whole_tensor_kernels(recipe, densities):
    for k, zero_share, shape in CASES:
        base, tuned = zero_heavy_tie_heavy_fine_tunes(k, shape, zero_share, seed=k)
        weights, seeds = [1.0, 0.8, 1.3, 0.5, 1.1][:k], [5, 6, 7, 8, 9][:k]
        want = whole_tensor_merge(recipe, base, tuned, weights, densities[:k], seeds)
        for chunk in (7, 64):  # both split runs of tied keys across chunks
            got = merge_tensor(recipe, base, tuned, MergeArgs(weights, densities[:k], 1, 0.7,
                               recipe.combine is Combine.TIES, seeds, chunk_blocks=chunk, compiled=False))
            assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (k, chunk)


@pytest.mark.parametrize("recipe", [Recipe(Sparsifier.MAGNITUDE, True, Combine.TIES)], ids=recipe_id)
def test_masks_of_more_than_eight_models_span_a_second_byte_plane(recipe):
    base, tuned = zero_heavy_tie_heavy_fine_tunes(10, (23, 11), 0.3, seed=10)
    weights, densities, seeds = [1.0] * 10, [0.1] * 10, list(range(10))
    want = whole_tensor_merge(recipe, base, tuned, weights, densities, seeds)
    got = merge_tensor(recipe, base, tuned, MergeArgs(weights, densities, 1, 0.7, True, seeds, chunk_blocks=50, compiled=False))
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (mergekit-yaml --cuda)")
@pytest.mark.parametrize("recipe", PER_TENSOR_RECIPES, ids=recipe_id)
def test_cuda_chunked_per_tensor_merge_equals_cpu_bit_for_bit(recipe):
    # Task vectors on a 1/8 grid and unit weights: every float operation is exact, so any
    # difference is a different mask, not rounding.
    base, tuned = zero_heavy_tie_heavy_fine_tunes(3, (37, 29), 0.5, seed=3)
    args = ([1.0] * 3, DENSITY_SETS["overlap"][:3], 1, 1.0, False, [5, 6, 7])
    on_cpu = merge_tensor(recipe, base, tuned, MergeArgs(*args, chunk_blocks=64, compiled=False))
    on_cuda = merge_tensor(recipe, base.cuda(), [t.cuda() for t in tuned], MergeArgs(*args, chunk_blocks=64))
    assert torch.equal(on_cuda.cpu().view(torch.int16), on_cpu.view(torch.int16))


def test_ties_at_the_threshold_go_to_the_lowest_indices_across_chunks():
    base = torch.zeros(10)
    tuned = [torch.ones(10)]
    got = merge_tensor(Recipe(Sparsifier.MAGNITUDE, False, Combine.SUM), base, tuned, MergeArgs([1.0], [0.3],
                       chunk_blocks=2, compiled=False))
    assert got.tolist() == [1.0, 1.0, 1.0] + [0.0] * 7


# Runs in a fresh interpreter whose malloc maps every block of 64 KiB or more on its own,
# so that freed memory leaves the RSS and the peak counts only what the merge held at once.
MEASURE_MERGE = """
import pathlib, torch
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, merge_tensor
def peak_kib():
    status = pathlib.Path("/proc/self/status").read_text().splitlines()
    return int(next(x for x in status if x.startswith("VmHWM:")).split()[1])
numel = 1 << 22
g = torch.Generator().manual_seed(0)
base = torch.randn(numel, generator=g).to(torch.bfloat16)
tuned = [(base.float() + torch.randn(numel, generator=g) * 0.01).to(torch.bfloat16) for _ in range(3)]
pathlib.Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
before = peak_kib()
out = merge_tensor(Recipe(Sparsifier.MAGNITUDE, True, Combine.TIES), base, tuned, MergeArgs([1.0] * 3, [0.3] * 3,
                   normalize=True, chunk_blocks=1 << 14, compiled=False))
extra = (peak_kib() - before) * 1024 - out.numel() * out.element_size()
print(extra / (4 * numel))
"""


@pytest.mark.slow  # a fresh interpreter
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS reset")
def test_per_tensor_torch_merge_of_three_models_holds_few_float32_copies():
    child = subprocess.run([sys.executable, "-c", MEASURE_MERGE], capture_output=True, text=True,
                           env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}, check=True)
    float32_copies_beyond_inputs_and_output = float(child.stdout.split()[-1])
    assert float32_copies_beyond_inputs_and_output <= 2.5
