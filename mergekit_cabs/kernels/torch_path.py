"""The torch path's entry: one chunk of a merge, on any device and dtype (the reference the
compiled path equals bit for bit, and the path of CUDA tensors and of float16)."""

from __future__ import annotations

from typing import Sequence

import torch

from mergekit_cabs.kernels.combine import masked_merge
from mergekit_cabs.kernels.masks import task_masks
from mergekit_cabs.kernels.per_tensor import per_tensor_merge
from mergekit_cabs.kernels.rules import MergeArgs, Recipe


def all_finite(values: torch.Tensor) -> bool:
    """Whether every value is finite. The float32 sum is the fast test (half the time of
    ``isfinite`` on bf16); only where it is not finite, which a large finite sum can also
    cause, is every value checked."""
    return bool(torch.isfinite(values.sum(dtype=torch.float32))) or bool(torch.isfinite(values).all())


def merge_chunk(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                args: MergeArgs, out: torch.Tensor) -> bool:
    """``out = base + lambda * combine(s_i * w_i * M_i * tau_i)`` of one flat chunk, ``out``
    flat in ``base``'s dtype: whole n:m blocks (merged in float32, rounded once into
    ``out``), or the whole tensor for the per-tensor sparsifiers (``per_tensor_merge``, in
    passes of ``args.chunk_elements``, already in ``base``'s dtype). A dropped entry of a
    delta is ``(s_i * w_i * tau_i) * 0``, a signed zero. Returns whether every merged value
    is finite."""
    if not recipe.sparsifier.blocks:
        per_tensor_merge(recipe, base, tuned, args, out)
        return all_finite(out)
    base32 = base.to(torch.float32)
    taus = [t.to(torch.float32) - base32 for t in tuned]
    masks = task_masks(recipe, taus, args.densities, args.block_size, args.seeds)
    out.copy_(masked_merge(recipe, base32, taus, masks, args))
    return all_finite(out)
