"""Inputs of the kernel and merge tests: the recipe sweep and the task-vector generators.

Each generator draws from one ``torch.Generator`` seeded with ``seed``, in a fixed order, so
a test's tensors are fixed by its arguments. The kinds of input:

- Gaussian task vectors, with or without exact zeros: no ties between magnitudes.
- tie-heavy: multiples of a step in -3..3, few distinct magnitudes and many exact zeros,
  like bf16 deltas; every n:m and top-k threshold falls on a tie.
- zero-heavy: most entries exactly zero, which are never kept.

``(base, tuned)`` generators return fine-tunes ``dtype(base + delta)``, so the task vectors a
kernel sees are the rounded ones, as in a checkpoint. The slow reference the kernels are
checked against is ``reference.py``.
"""

import torch

from mergekit_cabs.kernels import Combine, Recipe, Sparsifier
from mergekit_cabs.kernels import SPARSIFIERS

# Every sparsifier x conflict-aware x combine: the 9 named methods and the 3 unnamed ones.
ALL_RECIPES = [Recipe(s, ca, c) for s in SPARSIFIERS for ca in (False, True) for c in Combine]
# The per-tensor sparsifiers (one ranking over the whole tensor, no blocks).
PER_TENSOR_RECIPES = [r for r in ALL_RECIPES if r.sparsifier in (Sparsifier.MAGNITUDE, Sparsifier.RANDOM)]
TIE_LEVELS = (-3, 4)  # torch.randint's bounds: the integers -3..3, zero among them


def recipe_id(recipe: Recipe) -> str:
    """A test id such as ``n:m-ca1-sum``."""
    return f"{recipe.sparsifier.value}-ca{int(recipe.conflict_aware)}-{recipe.combine.value}"


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tie_levels(shape, generator: torch.Generator) -> torch.Tensor:
    """Integers in -3..3 (int64), uniform."""
    return torch.randint(*TIE_LEVELS, shape, generator=generator)


def kept(shape, generator: torch.Generator, zero_share) -> torch.Tensor:
    """A bool mask that keeps each entry with probability ``1 - zero_share``."""
    return torch.rand(shape, generator=generator) >= zero_share


def task_vectors(k, shape, seed=0, zero_share=0.2, dtype=torch.float32) -> list[torch.Tensor]:
    """``k`` float32 task vectors: N(0, 1) times ``kept(zero_share)``, rounded through ``dtype``."""
    generator = seeded(seed)
    out = []
    for _ in range(k):
        tau = torch.randn(shape, generator=generator)
        tau = tau * kept(shape, generator, zero_share)
        out.append(tau.to(dtype).float())
    return out


def dense_task_vectors(k, shape, seed=0) -> list[torch.Tensor]:
    """``k`` float32 task vectors N(0, 1): no exact zeros (every keep count is reached)."""
    generator = seeded(seed)
    return [torch.randn(shape, generator=generator) for _ in range(k)]


def tie_heavy_task_vectors(k, shape, seed=0) -> list[torch.Tensor]:
    """``k`` float32 task vectors ``0.125 * tie_levels``."""
    generator = seeded(seed)
    return [tie_levels(shape, generator).float() * 0.125 for _ in range(k)]


def fine_tunes(shape, k, dtype, kind, seed, *, smooth_scale=0.02, tie_step=0.0625):
    """(base, ``k`` fine-tunes) in ``dtype``: base N(0, 1), deltas of one ``kind``.

    ``smooth``: N(0, smooth_scale^2). ``tie-heavy``: ``tie_step * tie_levels``. ``zero-heavy``:
    the smooth deltas with exact-zero shares 0.5 .. 0.9 spread over the ``k`` tasks.
    """
    generator = seeded(seed)
    base = torch.randn(shape, generator=generator).to(dtype)
    if kind == "tie-heavy":
        deltas = [tie_levels(shape, generator).float() * tie_step for _ in range(k)]
    else:
        deltas = [torch.randn(shape, generator=generator) * smooth_scale for _ in range(k)]
    if kind == "zero-heavy":
        zero_shares = torch.linspace(0.5, 0.9, k)
        deltas = [d * kept(shape, generator, p) for d, p in zip(deltas, zero_shares)]
    return base, [(base.float() + d).to(dtype) for d in deltas]


def zero_heavy_tie_heavy_fine_tunes(k, shape, zero_share, seed):
    """(base, ``k`` fine-tunes) in bf16 whose task vectors are ``0.125 * tie_levels`` (4
    magnitudes) times ``kept(zero_share)``: ties and exact zeros at once."""
    generator = seeded(seed)
    base = torch.randn(shape, generator=generator).to(torch.bfloat16)
    tuned = []
    for _ in range(k):
        step = tie_levels(shape, generator) * kept(shape, generator, zero_share)
        tuned.append((base.float() + step * 0.125).to(torch.bfloat16))
    return base, tuned
