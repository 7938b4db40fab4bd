"""The numba kernel gives the same bits as the torch path it replaces (n:m, magnitude, random)."""

import pytest
import torch

from mergekit_cabs.kernels import Combine, Recipe, Sparsifier, merge_tensor

pytest.importorskip("numba")

# A 96-case bit-for-bit sweep (minutes on 2 cores): the full suite only; the unit tier
# reaches the compiled path through tests/test_properties.py.
pytestmark = pytest.mark.slow

COMPILED_RECIPES = [Recipe(s, ca, c) for s in Sparsifier for ca in (False, True) for c in Combine]


def inputs(shape, k, dtype, tie_heavy, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(shape, generator=g).to(dtype)
    if tie_heavy:  # few distinct magnitudes, many exact zeros, as bf16 deltas have
        deltas = [torch.randint(-3, 4, shape, generator=g).float() * 0.0625 for _ in range(k)]
    else:
        deltas = [torch.randn(shape, generator=g) * 0.02 for _ in range(k)]
    return base, [(base.float() + d).to(dtype) for d in deltas]


def bits(t):
    return t.view(torch.int16) if t.dtype == torch.bfloat16 else t.view(torch.int32)


@pytest.mark.parametrize("recipe", COMPILED_RECIPES,
                         ids=lambda r: f"{r.sparsifier.name}-ca{int(r.conflict_aware)}-{r.combine.value}")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tie_heavy", [False, True], ids=["smooth", "tie-heavy"])
@pytest.mark.parametrize("normalize", [False, True])
def test_compiled_merge_equals_torch_path_bit_for_bit(recipe, dtype, tie_heavy, normalize):
    for seed, (shape, k, block_size, densities, weights) in enumerate([
        ((67, 45), 3, 64, [0.25, 0.25, 0.25], [1.2, 0.9, 1.1]),
        ((300,), 1, 16, [0.3], [1.7]),
        ((13, 31), 5, 8, [0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.5, 1.5, 1.0, 2.0]),
        ((9, 100), 3, 256, [0.6, 0.7, 0.5], [1.0, -0.5, 0.8]),
        # 15 tiles: magnitude's threads split the tensor, so ties straddle their boundaries
        ((300, 200), 3, 64, [0.25, 0.3, 0.2], [1.0, 1.0, 0.7]),
    ]):
        base, tuned = inputs(shape, k, dtype, tie_heavy, seed)
        seeds = [1000 * seed + i for i in range(k)]
        args = (recipe, base, tuned, weights, densities, block_size, 0.8, normalize, seeds)
        fast = merge_tensor(*args, chunk_blocks=7, compiled=True)
        simple = merge_tensor(*args, compiled=False)
        assert fast.dtype == dtype
        assert torch.equal(bits(fast), bits(simple)), (shape, k, block_size)
