"""The compiled path: the torch path's ``merge_chunk`` in numba, bit for bit.

numba is a dependency, so this is the default CPU path; ``MERGEKIT_CABS_TORCH_KERNELS=1``
(read by ``dispatch.compiled_module``, which imports this package on first use) forces the
torch path instead. ``supports`` says per recipe and tensors whether this path implements
the merge: the sparsifiers whose traits a kernel here implements (``implemented``) and the
combines of ``_TIES_FLAG``, on CPU float32/bfloat16 tensors. Any other recipe runs on the
torch path.

Both kernels work on tiles of the flat tensors: base and task vectors are read once per tile
into float32 scratch (``tau = f32(tuned) - f32(base)``), each task's keys are formed as in
``rules`` (float32 bits of ``|tau|`` or of a random draw; free positions lifted by
``CLAIMED_OFFSET`` above every claimed one), winners are selected, and the tile is combined
with the float32 operations, in order, of ``combine.linear_combine`` / ``combine.ties_combine``,
then written in the output's dtype (bf16 rounded as torch rounds) while the same loop tests it
for NaN and inf: the merge's finiteness check costs no pass of its own.

- ``common``: what both kernels share (argument tuples, loads, keys, selection, combine, store);
- ``nm``: the n:m kernel (``nm_merge``), a lockstep threshold search over a tile's blocks;
- ``per_tensor``: the magnitude and random kernel (``tensor_merge``), a radix selection.

The JIT cache is written beside these modules, or, where that is not writable (a read-only
site-packages), to numba's user-wide cache directory (``tests/test_compiled.py`` checks it).
"""

from __future__ import annotations


from typing import Sequence

import numba
import numpy as np
import torch

from mergekit_cabs.kernels.compiled.common import TILE, Blocks, CombineParams, Output, Ranking, Sources
from mergekit_cabs.kernels.compiled.nm import nm_merge
from mergekit_cabs.kernels.compiled.per_tensor import tensor_merge
from mergekit_cabs.kernels.rules import (
    Combine,
    MergeArgs,
    Recipe,
    Sparsifier,
    normalizer,
    random_score_keys,
    tail_keep_counts,
)

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16)


def implemented(sparsifier: Sparsifier) -> bool:
    """Whether a kernel here runs ``sparsifier``, by its traits: ``|tau|`` in blocks
    (``nm_merge``), or ``|tau|`` or random draws in one block spanning the tensor
    (``tensor_merge``). Random draws in blocks have no kernel here."""
    return not (sparsifier.blocks and sparsifier.random)


_TIES_FLAG = {Combine.SUM: False, Combine.TIES: True}  # the combines ``combine_tile`` implements


def supports(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor]) -> bool:
    """Whether this path implements ``recipe`` (its sparsifier ``implemented``, its combine
    in ``_TIES_FLAG``) on these tensors: CPU, float32 or bfloat16, all of one dtype."""
    return (
        implemented(recipe.sparsifier) and recipe.combine in _TIES_FLAG
        and base.device.type == "cpu" and base.dtype in SUPPORTED_DTYPES
        and all(t.dtype == base.dtype and t.device.type == "cpu" for t in tuned)
    )


def _combine_params(recipe: Recipe, args: MergeArgs) -> CombineParams:
    return CombineParams(np.asarray(args.scales(recipe), np.float32),
                         np.asarray(args.weights, np.float32), np.float32(args.lam),
                         _TIES_FLAG[recipe.combine], args.normalize,
                         np.float32(normalizer(args.weights)))


def _thread_groups(units: int, threads: int) -> int:
    """Work items of a parallel kernel: four per thread, at most one per block or tile."""
    return max(1, min(units, 4 * threads))


def merge_chunk(recipe: Recipe, base: torch.Tensor, tuned: Sequence[torch.Tensor],
                args: MergeArgs, out: torch.Tensor) -> bool:
    """Merge one flat chunk into ``out`` (flat, contiguous, ``base``'s dtype; see
    ``torch_path.merge_chunk``): task ``i`` keeps ``n_i`` of every block of
    ``args.block_size`` or, for the per-tensor sparsifiers, of the whole chunk, ranked by
    ``|tau_i|`` or by ``masks.random_scores`` of ``args.seeds[i]``. Returns whether every
    merged value is finite. ``supports(recipe, base, tuned)`` must hold."""
    if not supports(recipe, base, tuned):
        raise ValueError(f"the compiled kernels do not implement {recipe} on these tensors; "
                         "check compiled.supports first")
    if out.dtype != base.dtype or not out.is_contiguous() or out.numel() != base.numel():
        raise ValueError("out must be a contiguous tensor of base's dtype and size")
    threads = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(threads)
    flat = [t.detach().reshape(-1).contiguous() for t in (base, *tuned)]  # alive for the call
    numel = base.numel()
    bf16 = base.dtype == torch.bfloat16
    sources = Sources(np.array([t.data_ptr() for t in flat], np.int64), bf16, numel)
    output = Output(out.data_ptr(), bf16)
    quotas = np.asarray(args.keep_counts(recipe, numel), np.int64)
    params = _combine_params(recipe, args)
    if recipe.sparsifier.blocks:
        m = args.block_size
        tail_ns = tail_keep_counts(quotas.tolist(), numel % m, m, recipe.conflict_aware)
        blocks = Blocks(quotas, np.asarray(tail_ns, np.int64), m, recipe.conflict_aware)
        return not nm_merge(sources, blocks, params, _thread_groups(-(-numel // m), threads), output)
    seeds = args.seeds if recipe.sparsifier.random else ()
    draw_keys = np.array([random_score_keys(s) for s in seeds], np.uint64).reshape(-1, 2)
    ranking = Ranking(quotas, draw_keys, recipe.conflict_aware)
    # int32 histogram bins: no group may span 2^31 elements
    groups = max(_thread_groups(-(-numel // TILE), threads), -(-numel // (1 << 31)))
    return not tensor_merge(sources, ranking, params, groups, output)
