"""Each fine-tune's dense-to-pruned L1 ratio under conflict-aware n:m pruning (``cabs``), pooled
over the 2-D tensors whose size is a multiple of the block: what ``rescale: l1`` scales by,
per model rather than per tensor.

    python -m benchmarks.quality.causal_lm.norm_ratios --workdir benchmarks/quality/work/smollm2 --seed 0

reads the base and the seed's fine-tunes that ``benchmarks.quality.causal_lm.run`` cached in
``--workdir``, in the order the regime merges them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from .tasks import TASKS

BLOCK_SIZE = 256


def ratios(base: dict, tuned: list[dict], density: float) -> list[float]:
    """``||tau_i||_1 / ||m_i * tau_i||_1`` per model, summed over the eligible tensors."""
    from mergekit_cabs.kernels import Sparsifier
    from mergekit_cabs.kernels.masks import task_masks
    from mergekit_cabs.kernels.rules import Combine, Recipe

    recipe = Recipe(Sparsifier.NM, True, Combine.SUM)
    dense, kept = [0.0] * len(tuned), [0.0] * len(tuned)
    for name, b in base.items():
        if b.ndim < 2 or b.numel() % BLOCK_SIZE:
            continue
        taus = [t[name].float().flatten() - b.float().flatten() for t in tuned]
        for i, (tau, mask) in enumerate(zip(taus, task_masks(recipe, taus, [density] * len(taus), BLOCK_SIZE))):
            dense[i] += float(tau.abs().sum())
            kept[i] += float((tau * mask).abs().sum())
    return [d / k for d, k in zip(dense, kept)]


def main(argv=None) -> None:
    from safetensors.torch import load_file

    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.causal_lm.norm_ratios", description=__doc__)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.175, 0.25])
    args = parser.parse_args(argv)
    names = list(TASKS)
    tuned = [load_file(next((args.workdir / "finetunes").glob(f"{n}-seed{args.seed}-*")) / "model.safetensors")
             for n in names]
    base = load_file(args.workdir / "base" / "model.safetensors")
    print("| density | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for density in args.densities:
        print(f"| {density:g} | " + " | ".join(f"{r:.2f}" for r in ratios(base, tuned, density)) + " |")


if __name__ == "__main__":
    main()
