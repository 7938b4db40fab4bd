"""Pruned task vectors in a compact, exact form, and a candidate's tensor from them.

The kernel adapter of the search: ``prune_tensor`` and ``merged_support`` are the only
places that call ``mergekit_cabs.kernels`` (``task_masks``, ``tensor_seed``,
``masked_merge``). Pure torch; no MergeKit.

Why pruning once is exact. Every method's masks ``M_i`` depend on ``tau_i``, the densities,
``block_size`` and (DARE) the seeds, never on the weights. What depends on the weights is
the combine: a TIES combine's sign election ``sign(sum_i w_i M_i tau_i)`` and its
agreeing-weight divisor, and ``normalize``'s divisor ``sum_i w_i``; ``masked_merge``
recomputes those for every candidate.

The compact form of one tensor (flattened row-major, ``D`` the merge's input dtype):

- ``support``: sorted positions kept by any model, plus every position where the base is
  ``-0.0`` (int32 when the tensor has < 2^31 elements, else int64);
- ``base_values``: the base at ``support``, in ``D``;
- per model ``i``: ``local_i`` (int32 indices into ``support``) and ``values_i`` (the
  fine-tuned model's values there, in ``D``) at its kept positions and the base's
  ``-0.0`` positions, ``kept_i`` (bool, ``None`` when all are kept) saying which.

``tau_i = float32(values_i) - float32(base_values)`` is recomputed exactly, as the kernel
computes it. Then ``masked_merge`` (the kernels' own float32 formula, elementwise) over
``support``, cast to ``D`` and then to the written dtype, is the merge's result there, bit
for bit: a position outside every model's storage has only dropped entries, ``(w tau) * 0``
signed zeros, whose sum only changes a base of ``-0.0`` (``-0 + +0 = +0``), and those
positions are stored whole. Everywhere off ``support`` the result is the base itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from mergekit_cabs.kernels import (
    MergeArgs,
    NormSums,
    Recipe,
    combined_deltas,
    norm_spans,
    task_masks,
    tensor_seed,
)

# Elements per pass: of ``support`` when a candidate is merged (its temporaries are (2k + 3)
# float32 chunks of this size, whatever the tensor's size), and of an n:m tensor when it is
# pruned (k + 1 float32 spans, not k + 1 whole tensors).
SUPPORT_CHUNK = 1 << 22


@dataclass(frozen=True)
class StoredModel:
    """One fine-tuned model's values on its part of a tensor's ``support``."""

    local: torch.Tensor  # int32 indices into support, ascending
    values: torch.Tensor  # the fine-tuned model's values there, input dtype
    kept: Optional[torch.Tensor]  # bool, which of them its mask keeps; None: all
    chunk_starts: tuple[int, ...]  # first entry of local in each SUPPORT_CHUNK span


@dataclass(frozen=True)
class PrunedTensor:
    """A float tensor of the merge, pruned once (see the module docstring)."""

    name: str
    shape: tuple[int, ...]
    input_dtype: torch.dtype
    written_dtype: torch.dtype
    recipe: Recipe
    densities: tuple[float, ...]
    lam: float
    normalize: bool
    support: torch.Tensor
    base_values: torch.Tensor
    models: tuple[StoredModel, ...]
    sums: NormSums  # each model's dense and kept norm sums
    rescale: Optional[str] = None  # the merge's norm rescale (kernels.MergeArgs.rescale)

    def chunks(self) -> list[tuple[int, int]]:
        size = self.support.numel()
        return [(lo, min(lo + SUPPORT_CHUNK, size)) for lo in range(0, size, SUPPORT_CHUNK)]

    def nbytes(self) -> int:
        """Bytes held by the compact form."""
        held = [self.support, self.base_values]
        for stored in self.models:
            held += [stored.local, stored.values] + ([stored.kept] if stored.kept is not None else [])
        return sum(t.numel() * t.element_size() for t in held)


@dataclass(frozen=True)
class TensorInputs:
    """One tensor of the merge as the method receives it (aligned to one dtype)."""

    name: str
    base: torch.Tensor
    tuned: tuple[torch.Tensor, ...]
    written_dtype: torch.dtype
    recipe: Recipe
    densities: tuple[float, ...]
    block_size: int
    lam: float
    normalize: bool
    seed: int  # the merge's random seed (DARE masks)
    rescale: Optional[str] = None


def model_masks(inputs: TensorInputs, base: torch.Tensor, tuned: Sequence[torch.Tensor]
                ) -> tuple[list[torch.Tensor], NormSums]:
    """Each model's bool mask of the flattened tensor, from ``kernels.task_masks`` exactly as
    the merge computes them (float32 task vectors, ``tensor_seed`` per model), and the
    models' norm sums, added over the spans the merge's norm rescale adds them over
    (``kernels.norm_spans``), so their factors are the merge's bit for bit. n:m masks are
    decided block by block, so they are computed one such span of whole blocks at a time:
    one span's float32 task vectors at once, not the whole tensor's. The per-tensor
    sparsifiers rank the whole tensor in one pass."""
    numel = base.numel()
    seeds = [tensor_seed(inputs.seed, inputs.name, i) for i in range(len(tuned))]
    nm = inputs.recipe.sparsifier.blocks
    spans = norm_spans(inputs.recipe, numel, inputs.block_size)
    masks = [torch.zeros(numel, dtype=torch.bool, device=base.device) for _ in tuned]
    if not nm:
        whole = task_masks(inputs.recipe, [t.to(torch.float32) - base.to(torch.float32) for t in tuned],
                           inputs.densities, inputs.block_size, seeds)
        masks = [m.reshape(-1) for m in whole]
    sums = NormSums(len(tuned))
    for lo, hi in spans:
        base32 = base[lo:hi].to(torch.float32)
        taus = [t[lo:hi].to(torch.float32) - base32 for t in tuned]
        if nm:
            for mask, part in zip(masks, task_masks(inputs.recipe, taus, inputs.densities, inputs.block_size, seeds)):
                mask[lo:hi] = part
        sums.add_span(taus, [mask[lo:hi] for mask in masks])
    return masks, sums


def prune_tensor(inputs: TensorInputs, device: torch.device) -> PrunedTensor:
    """The compact form of one tensor, from the masks of ``model_masks``."""
    base = inputs.base.reshape(-1).to(device)
    tuned = [t.reshape(-1).to(device) for t in inputs.tuned]
    masks, sums = model_masks(inputs, base, tuned)
    negative_zero = (base == 0) & torch.signbit(base)
    in_support = negative_zero.clone()
    for mask in masks:
        in_support |= mask
    index_dtype = torch.int32 if base.numel() < 2**31 else torch.int64
    support = in_support.nonzero().squeeze(1).to(index_dtype)
    position_in_support = torch.cumsum(in_support, 0, dtype=index_dtype).sub_(1)
    models = []
    for mask, values in zip(masks, tuned):
        stored = mask | negative_zero
        local = position_in_support[stored]
        kept = mask[stored]
        starts = torch.searchsorted(local, torch.arange(0, max(support.numel(), 1), SUPPORT_CHUNK,
                                                        dtype=local.dtype, device=device))
        models.append(StoredModel(local.to(torch.int32), values[stored],
                                  None if bool(kept.all()) else kept,
                                  tuple(int(s) for s in starts.tolist())))
    return PrunedTensor(
        name=inputs.name, shape=tuple(inputs.base.shape), input_dtype=base.dtype,
        written_dtype=inputs.written_dtype, recipe=inputs.recipe,
        densities=tuple(inputs.densities), lam=inputs.lam, normalize=inputs.normalize,
        support=support, base_values=base[support], models=tuple(models), sums=sums, rescale=inputs.rescale,
    )


def merged_support(pruned: PrunedTensor, weights: Sequence[float], lo: int, hi: int) -> torch.Tensor:
    """The merge's result at ``support[lo:hi]`` for ``weights`` (one per model), in the
    written dtype: ``kernels.combined_deltas`` in float32, cast to the input dtype (as the
    method returns it) and then to the written dtype (as MergeKit saves it).

    Each model's delta ``(tau * s) * M`` (``kernels.masked_deltas``) is computed only where
    the model is stored; everywhere else its tau is 0 and its mask false, so the delta is
    ``(0 * s) * 0``, one signed zero for the whole span: the same float32 operations,
    elementwise, at a fraction of the passes."""
    base32 = pruned.base_values[lo:hi].to(torch.float32)
    factors = pruned.sums.factors(pruned.rescale) if pruned.rescale else ()
    args = MergeArgs(tuple(weights), tuple(pruned.densities), lam=pruned.lam, normalize=pruned.normalize,
                     norm_factors=factors)
    chunk = lo // SUPPORT_CHUNK
    zero = torch.zeros(1, dtype=torch.float32, device=base32.device)
    deltas = []
    for stored, scale in zip(pruned.models, args.scales(pruned.recipe)):
        start = stored.chunk_starts[chunk]
        end = stored.chunk_starts[chunk + 1] if chunk + 1 < len(stored.chunk_starts) else stored.local.numel()
        where = stored.local[start:end].to(torch.int64) - lo
        delta = torch.full_like(base32, float((zero * scale) * zero))
        here = (stored.values[start:end].to(torch.float32) - base32[where]) * scale
        delta[where] = here if stored.kept is None else here * stored.kept[start:end].to(torch.float32)
        deltas.append(delta)
    merged = combined_deltas(pruned.recipe, base32, deltas, args)
    return merged.to(pruned.input_dtype).to(pruned.written_dtype)
