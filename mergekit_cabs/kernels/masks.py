"""Masks of the torch path: n:m, per-tensor magnitude, random (DARE) and conflict-aware.

Each follows the selection rule of ``rules``: the ``n`` largest score keys of a block, the
lowest index first among equal keys, ``tau == 0`` never kept. Every function creates new
tensors on its input's device and works on CPU and CUDA alike.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from mergekit_cabs.kernels.rules import (
    CLAIMED_OFFSET,
    MAX_RANDOM_POSITIONS,
    RANDOM_SCORE_BITS,
    U32,
    Recipe,
    keep_count,
    mix32,
    random_score_keys,
    score_bits,
    tail_keep_count,
    tail_keep_counts,
)


def top_k_rows(keys: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the ``k`` largest ``keys`` in every row of a 2-D tensor.

    Ties at the threshold are broken towards the lowest column index, so the mask is a
    pure function of ``keys`` (``torch.topk`` alone leaves ties unspecified):
    ``keep = key > t  or  (key == t  and  #{j' <= j : key_j' == t} <= k - #{key > t})``
    with ``t`` the k-th largest key of the row.
    """
    rows, width = keys.shape
    if k <= 0 or width == 0:
        return torch.zeros_like(keys, dtype=torch.bool)
    if k >= width:
        return torch.ones_like(keys, dtype=torch.bool)
    threshold = keys.topk(k, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    above = keys > threshold
    at = keys == threshold
    room = k - above.sum(dim=1, keepdim=True)
    keep = above | at
    # Only rows with more ties at the threshold than room need the (costly) running count.
    crowded = (at.sum(dim=1, keepdim=True) > room).squeeze(1).nonzero().squeeze(1)
    if crowded.numel():
        ties = at[crowded]
        keep[crowded] = above[crowded] | (ties & (ties.cumsum(dim=1) <= room[crowded]))
    return keep


def block_top_mask(
    keys: torch.Tensor, n: int, block_size: int, tail_n: Optional[int] = None
) -> torch.Tensor:
    """n:m selection over the row-major flattening of ``keys``.

    Full blocks (rows of ``view(-1, m)``) keep ``n`` each; a tail of ``r = numel % m``
    elements is a short block keeping ``tail_n`` (default ``round(n * r / m)``). Returns a
    bool mask of ``keys.shape``.
    """
    flat = keys.reshape(-1)
    full = (flat.numel() // block_size) * block_size
    mask = torch.empty_like(flat, dtype=torch.bool)
    if full:
        mask[:full] = top_k_rows(flat[:full].view(-1, block_size), n).view(-1)
    if full < flat.numel():
        tail = flat[full:]
        k = tail_keep_count(n, tail.numel(), block_size) if tail_n is None else tail_n
        mask[full:] = top_k_rows(tail.view(1, -1), k).view(-1)
    return mask.view(keys.shape)


def nm_mask(tau: torch.Tensor, n: int, block_size: int) -> torch.Tensor:
    """Balanced n:m magnitude mask: per block of ``m`` the ``n`` largest ``|tau|``, zeros never kept."""
    return block_top_mask(score_bits(tau), n, block_size) & (tau != 0)


def magnitude_mask(tau: torch.Tensor, density: float) -> torch.Tensor:
    """Per-tensor magnitude mask: the ``round(density * numel)`` largest ``|tau|``, zeros never kept."""
    numel = max(tau.numel(), 1)
    return nm_mask(tau, keep_count(density, numel), numel)


def random_scores(
    shape: torch.Size, seed: int, device: torch.device, offset: int = 0
) -> torch.Tensor:
    """Uniform draws in [0, 1) on a 2^-24 grid, a pure function of (seed, flat position).

    Counter-based: position ``p = offset + j`` (row-major ``j``) gets
    ``u = (mix32((mix32(p ^ k1) + k2) mod 2^32) >> 8) * 2^-24`` with ``(k1, k2)`` from
    ``random_score_keys(seed)``. Any slice of a tensor can be drawn alone (``offset``), on
    any device and thread count, with the same values; the compiled kernel computes the
    same formula in registers. Two rounds of the hash keep the draws of different seeds
    unrelated (one round would make them the same sequence, permuted).
    """
    numel = math.prod(shape)
    if offset + numel > MAX_RANDOM_POSITIONS:
        raise ValueError(
            f"random scores cover 2^32 positions per tensor; a tensor of {offset + numel} "
            "elements is beyond that"
        )
    k1, k2 = random_score_keys(seed)
    position = torch.arange(offset, offset + numel, dtype=torch.int64, device=device)
    bits = mix32((mix32(position ^ k1) + k2) & U32) >> (32 - RANDOM_SCORE_BITS)
    return (bits.to(torch.float32) * 2.0 ** -RANDOM_SCORE_BITS).view(shape)


def random_mask(tau: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """DARE mask: ``round(density * numel)`` uniformly random positions, zeros never kept.

    Fixing the count (sampling without replacement) rather than drawing independent
    Bernoulli(density) keeps the density exact; the expectation is DARE's.
    """
    numel = max(tau.numel(), 1)
    keys = score_bits(random_scores(tau.shape, seed, tau.device))
    return block_top_mask(keys, keep_count(density, numel), numel) & (tau != 0)


def conflict_aware_masks(
    taus: Sequence[torch.Tensor],
    ns: Sequence[int],
    block_size: int,
    scores: Optional[Sequence[torch.Tensor]] = None,
) -> list[torch.Tensor]:
    """Sequential conflict-aware n:m masks (CABS's CA).

    Task ``i`` (in order) keeps ``n_i`` positions per block: first its best *free* positions
    (not kept by any task ``j < i``), and only when ``n_i`` exceeds the free count, the rest
    from claimed positions, best first. Its kept nonzero positions become claimed. With
    ``sum_i n_i <= m`` the masks are disjoint, hence ``<M_i tau_i, M_j tau_j> = 0``; the
    short tail block shares its counts by ``tail_keep_counts`` so that it is disjoint too.
    ``scores`` defaults to ``|tau_i|``; pass random draws for the DARE variant.
    """
    claimed = torch.zeros_like(taus[0], dtype=torch.bool)
    tail_ns = tail_keep_counts(ns, taus[0].numel() % block_size, block_size, True)
    masks = []
    for index, (tau, n) in enumerate(zip(taus, ns)):
        keys = score_bits(tau if scores is None else scores[index])
        keys = torch.where(claimed, keys - CLAIMED_OFFSET, keys)
        mask = block_top_mask(keys, n, block_size, tail_ns[index]) & (tau != 0)
        claimed |= mask
        masks.append(mask)
    return masks


def task_masks(
    recipe: Recipe,
    taus: Sequence[torch.Tensor],
    densities: Sequence[float],
    block_size: int,
    seeds: Sequence[int] = (),
) -> list[torch.Tensor]:
    """Masks of ``taus`` (each one tensor, or one chunk of whole blocks) for ``recipe``: the
    sparsifier's scores (``|tau|``, or seeded draws where it is ``random``), top ``n`` per
    block of ``block_size`` (the whole tensor where it has no ``blocks``)."""
    m = block_size if recipe.sparsifier.blocks else max(taus[0].numel(), 1)
    ns = [keep_count(d, m) for d in densities]
    scores = [random_scores(t.shape, s, t.device) for t, s in zip(taus, seeds)] if recipe.sparsifier.random else None
    if recipe.conflict_aware:
        return conflict_aware_masks(taus, ns, m, scores)
    if scores is not None:
        return [block_top_mask(score_bits(score), n, m) & (t != 0) for t, n, score in zip(taus, ns, scores)]
    return [nm_mask(t, n, m) for t, n in zip(taus, ns)]
