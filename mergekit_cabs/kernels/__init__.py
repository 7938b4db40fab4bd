"""Tensor kernels of CABS and its baselines: pure torch and numba, no MergeKit, no host.

Modules, in the direction data flows (each imports only those before it):

- ``rules``: recipes, keep counts and their rounding, the tie rule's score keys, the
  random-score hash, scales, and ``MergeArgs``, the one argument object of a merge;
- the torch path: ``masks`` (n:m, magnitude, random, conflict-aware), ``combine`` (TIES,
  linear, ``masked_merge``), ``per_tensor`` (the chunked per-tensor merge), ``torch_path``
  (its ``merge_chunk``);
- ``compiled``: the same ``merge_chunk`` in numba, with ``supports(recipe, base, tuned)``
  (a package: ``common`` helpers, the ``nm`` kernel, the ``per_tensor`` kernel);
- ``rescale``: the norm rescale's per-model factors (``rescale: l1`` / ``l2``), from the
  torch path's masks;
- ``dispatch``: ``checked_merge(recipe, base, tuned, args)`` (the tensor and whether it is
  finite) and ``merge_tensor`` (the tensor), which pick the path once and cut the tensor
  into chunks. ``compiled`` is imported on first use only.

This package re-exports the names other modules use, so ``from mergekit_cabs.kernels
import merge_tensor, MergeArgs`` is the way in.
"""

from mergekit_cabs.kernels.combine import combined_deltas, linear_combine, masked_deltas, masked_merge, ties_combine
from mergekit_cabs.kernels.dispatch import (
    TORCH_KERNELS_ENV,
    Merged,
    checked_merge,
    compiled_module,
    merge_tensor,
    nm_chunk_spans,
)
from mergekit_cabs.kernels.masks import (
    block_top_mask,
    conflict_aware_masks,
    magnitude_mask,
    nm_mask,
    random_mask,
    random_scores,
    task_masks,
    top_k_rows,
)
from mergekit_cabs.kernels.per_tensor import per_tensor_merge
from mergekit_cabs.kernels.rescale import RESCALE_NORMS, NormSums, norm_spans, stable_sum, with_norm_factors
from mergekit_cabs.kernels.rules import (
    Combine,
    MergeArgs,
    SPARSIFIERS,
    Recipe,
    Sparsifier,
    keep_count,
    merge_scales,
    mix32,
    normalizer,
    random_score_keys,
    round_half_up,
    score_bits,
    tail_keep_count,
    tail_keep_counts,
    tensor_seed,
)

__all__ = [
    "RESCALE_NORMS", "SPARSIFIERS", "TORCH_KERNELS_ENV", "Combine", "MergeArgs", "Merged", "NormSums", "Recipe", "Sparsifier",
    "block_top_mask", "norm_spans", "stable_sum", "with_norm_factors",
    "checked_merge", "combined_deltas", "masked_deltas",
    "compiled_module", "conflict_aware_masks", "keep_count", "linear_combine", "magnitude_mask",
    "masked_merge", "merge_scales", "merge_tensor", "mix32", "nm_chunk_spans", "nm_mask", "normalizer",
    "per_tensor_merge", "random_mask", "random_score_keys", "random_scores", "round_half_up",
    "score_bits", "tail_keep_count", "tail_keep_counts", "task_masks", "ties_combine",
    "top_k_rows", "tensor_seed",
]
