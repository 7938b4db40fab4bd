"""The torch path's entry: one chunk of a merge, on any device and dtype (the reference the
compiled path equals bit for bit, and the path of CUDA tensors and of float16)."""

from __future__ import annotations

from typing import Sequence

import torch

from mergekit_cabs.kernels.combine import masked_merge
from mergekit_cabs.kernels.masks import task_masks
from mergekit_cabs.kernels.per_tensor import per_tensor_merge
from mergekit_cabs.kernels.rules import MergeArgs, Recipe, Sparsifier


def merge_chunk(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                args: MergeArgs) -> torch.Tensor:
    """``base + lambda * combine(s_i * w_i * M_i * tau_i)`` of one flat chunk: whole n:m
    blocks (float32 result), or the whole tensor for the per-tensor sparsifiers
    (``per_tensor_merge``, in passes of ``args.chunk_elements``, written straight into
    ``base``'s dtype). A dropped entry of a delta is ``(s_i * w_i * tau_i) * 0``, a signed zero."""
    if recipe.sparsifier is not Sparsifier.NM:
        return per_tensor_merge(recipe, base, tuned, args)
    base32 = base.to(torch.float32)
    taus = [t.to(torch.float32) - base32 for t in tuned]
    masks = task_masks(recipe, taus, args.densities, args.block_size, args.seeds)
    return masked_merge(recipe, base32, taus, masks, args)
