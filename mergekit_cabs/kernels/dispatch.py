"""One tensor merge: the path (compiled or torch) chosen once, the tensor cut into chunks.

Data flows one way: ``dispatch`` calls ``torch_path`` and, where it is importable and
``supports`` the recipe and tensors, ``compiled``; both follow ``rules`` and neither knows
about the other.
"""

from __future__ import annotations

import functools
import importlib
import os
from types import ModuleType
from typing import NamedTuple, Optional, Sequence

import torch

from mergekit_cabs.kernels import torch_path
from mergekit_cabs.kernels.rescale import with_norm_factors
from mergekit_cabs.kernels.rules import MergeArgs, Recipe

# Set to 1 to run the torch path on CPU too (the reference; what runs without numba).
TORCH_KERNELS_ENV = "MERGEKIT_CABS_TORCH_KERNELS"


@functools.lru_cache(maxsize=None)
def compiled_module() -> Optional[ModuleType]:
    """``mergekit_cabs.kernels.compiled`` (numba), or ``None`` (torch only) when numba cannot
    be imported or ``MERGEKIT_CABS_TORCH_KERNELS=1``. Imported on first use: numba's import
    costs about a second that a torch-only user should not pay."""
    if os.environ.get(TORCH_KERNELS_ENV, "") not in ("", "0"):
        return None
    try:
        return importlib.import_module("mergekit_cabs.kernels.compiled")
    except ImportError:
        return None


def merge_path(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
               compiled: Optional[bool]) -> ModuleType:
    """The module whose ``merge_chunk`` merges these tensors: ``compiled`` where it is
    wanted (``None`` or ``True``), importable and ``supports`` them, else ``torch_path``."""
    fast = compiled_module() if compiled is not False else None
    if compiled and fast is None:
        raise RuntimeError(f"compiled=True needs numba importable and {TORCH_KERNELS_ENV} unset")
    if fast is not None and fast.supports(recipe, base, tuned):
        return fast
    return torch_path


def nm_chunk_spans(numel: int, block_size: int, chunk_blocks: Optional[int]) -> list[tuple[int, int]]:
    """``[lo, hi)`` spans of ``chunk_blocks`` whole n:m blocks each, then the short tail
    block alone; the whole tensor in one span when ``chunk_blocks`` is ``None``."""
    if not chunk_blocks:
        return [(0, numel)]
    full = (numel // block_size) * block_size
    step = chunk_blocks * block_size
    spans = [(lo, min(lo + step, full)) for lo in range(0, full, step)]
    if full < numel:
        spans.append((full, numel))
    return spans


def check_model_counts(recipe: Recipe, tuned: Sequence[torch.Tensor], args: MergeArgs) -> None:
    """One weight and density per fine-tune, and one seed each for random masks."""
    if len(args.weights) != len(tuned):
        raise ValueError(f"one weight and one density per model: {len(args.weights)} for "
                         f"{len(tuned)} models")
    if recipe.sparsifier.random and len(args.seeds) != len(tuned):
        raise ValueError(f"random masks need one seed per model: {len(args.seeds)} seeds for "
                         f"{len(tuned)} models")


class Merged(NamedTuple):
    """A merged tensor and whether all of its values are finite (a NaN or inf in any input
    reaches the result: a dropped entry is ``tau * 0``)."""

    tensor: torch.Tensor
    finite: bool


def checked_merge(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                  args: MergeArgs) -> Merged:
    """Merge one tensor, ``base + lambda * combine_i(s_i * w_i * M_i * tau_i)`` with the
    masks of ``recipe``, into a tensor of ``base``'s dtype, device and shape, and say
    whether it is finite (the compiled kernels test the values as they write them).

    n:m blocks are independent, so the torch path processes the flattened tensor
    ``args.chunk_blocks`` full blocks at a time (then the tail), bounding its float32
    temporaries, with a result identical to one pass; the compiled kernels hold only a
    tile per thread and take the whole tensor in one call. The magnitude and random
    sparsifiers rank the whole tensor: the torch path in passes over chunks of
    ``chunk_blocks * block_size`` elements (``per_tensor.per_tensor_merge``), again with an
    identical result. With ``args.rescale`` the norm factors (``rescale.with_norm_factors``)
    are computed first, in a pass of their own over the torch path's masks.
    """
    check_model_counts(recipe, tuned, args)
    args = with_norm_factors(recipe, base, tuned, args)
    path = merge_path(recipe, base, tuned, args.compiled)
    flat_base = base.reshape(-1)
    flat_tuned = [t.reshape(-1) for t in tuned]
    out = torch.empty(flat_base.shape, dtype=base.dtype, device=base.device)
    chunked = recipe.sparsifier.blocks and path is torch_path
    spans = (nm_chunk_spans(flat_base.numel(), args.block_size, args.chunk_blocks)
             if chunked else [(0, flat_base.numel())])
    finite = True
    for lo, hi in spans:
        finite = path.merge_chunk(recipe, flat_base[lo:hi], [t[lo:hi] for t in flat_tuned],
                                  args, out[lo:hi]) and finite
    return Merged(out.view(base.shape), finite)


def merge_tensor(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                 args: MergeArgs) -> torch.Tensor:
    """The tensor of ``checked_merge``, for callers that test finiteness themselves or not at all."""
    return checked_merge(recipe, base, tuned, args).tensor
