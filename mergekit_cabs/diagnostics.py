"""``mergekit-cabs inspect``: overlap, balance and kept energy of a merge config's masks.

``inspect_config`` reads the YAML that ``mergekit-yaml`` reads and lets MergeKit plan the
merge (``hosts.planning``), so the tensors, the models in merge order and every tensor's
resolved parameters are the merge's own. It then reads one tensor of every model at a time
through MergeKit's loader, computes the configured method's masks with
``mergekit_cabs.kernels`` and, for comparison, plain per-tensor magnitude masks at the same
densities, and keeps only sums (``mask_statistics``, where the statistics are defined):
memory is bounded by one tensor group, not by the model. ``format_table`` and
``write_figures`` present the report.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from mergekit_cabs.hosts.planning import TensorJob, load_tensor_group, plan_tensor_jobs, read_config
from mergekit_cabs.keep_counts import tensor_keep_counts
from mergekit_cabs.kernels import tensor_seed
from mergekit_cabs.mask_statistics import (
    MAGNITUDE,
    METHOD,
    WITHOUT_CA,
    MaskStatistics,
    default_block_size,
    keep_count_sentence,
    keep_count_summary,
)
from mergekit_cabs.methods import METHODS_BY_NAME, MethodInfo
from mergekit_cabs.validation import MergeConfigError


# ---- the merge as MergeKit plans it (hosts.planning) ----

def load_config(config_path: str | Path) -> tuple[Any, MethodInfo]:
    """The ``MergeConfiguration`` of a mergekit-yaml file and its method (ours only)."""
    config = read_config(config_path)
    info = METHODS_BY_NAME.get(config.merge_method)
    if info is None:
        raise MergeConfigError(
            f"{config_path}: merge_method {config.merge_method!r} is not one of this "
            f"package's methods ({', '.join(METHODS_BY_NAME)}); inspect computes their "
            "masks. Set merge_method to one of them."
        )
    return config, info


def common_task_order(config_path: str | Path, jobs: Sequence[TensorJob]) -> tuple:
    """The fine-tuned models every tensor merges, in order; an error if tensors differ."""
    task_order = jobs[0].tasks if jobs else ()
    for job in jobs:
        if job.tasks != task_order:
            raise MergeConfigError(
                f"{config_path}: tensor {job.name} merges models {[str(m) for m in job.tasks]} "
                f"but the first tensor {[str(m) for m in task_order]}; inspect compares the "
                "same fine-tuned models everywhere. Use one `models:` list."
            )
    return task_order


def tally_masks(jobs: Sequence[TensorJob], statistics: MaskStatistics, info: MethodInfo, seed: int,
                *, device: str, progress: bool) -> tuple[list, list]:
    """Load each job's tensors, add their masks to ``statistics``; returns the names of the
    tensors skipped (a missing optional weight, or an integer buffer) and each counted
    tensor's ``(name, TensorKeepCounts)``."""
    from tqdm import tqdm

    skipped, counted = [], []
    shared_results: dict = {}  # the merged tokenizer, built once
    for job in tqdm(jobs, desc="Inspecting masks", unit="tensor", disable=not progress):
        tensors = load_tensor_group(job, shared_results)
        present = [tensors.get(m) for m in (job.base, *job.tasks)]
        if any(t is None or not t.is_floating_point() for t in present):
            skipped.append(job.name)
            continue
        block_size = info.sparsifier.block_length(job.block_size, tuple(present[0].shape))
        base = present[0].to(device=device, dtype=torch.float32)
        taus = [t.to(device=device, dtype=torch.float32) - base for t in present[1:]]
        del tensors, present, base
        counted.append((job.name, tensor_keep_counts(info.recipe, job.densities, block_size, taus[0].numel())))
        seeds = [tensor_seed(seed, job.name, i) for i in range(len(taus))]
        statistics.add(job.name, taus, job.densities, block_size, seeds)
        del taus
    return skipped, counted


def inspect_config(
    config_path: str | Path,
    out_dir: str | Path,
    *,
    random_seed: Optional[int] = None,
    device: str = "cpu",
    progress: bool = True,
) -> dict:
    """Compute the report of a merge config, write ``report.json`` (and figures) to ``out_dir``.

    ``random_seed`` must be the merge's ``--random-seed`` for the DARE variants' masks to
    be the merge's (default: torch's initial seed, as the merge uses without the flag).
    """
    started = time.perf_counter()
    config, info = load_config(config_path)
    jobs = plan_tensor_jobs(config, device)
    task_order = common_task_order(config_path, jobs)
    seed = torch.initial_seed() if random_seed is None else random_seed
    balance_block_size = next((j.block_size for j in jobs if j.block_size), default_block_size())
    statistics = MaskStatistics(info.recipe, [str(m) for m in task_order], balance_block_size)
    skipped, counted = tally_masks(jobs, statistics, info, seed, device=device, progress=progress)
    if not statistics.total.elements:
        raise MergeConfigError(f"{config_path}: no floating-point tensor is present in the base and "
                         "every fine-tuned model; check the models' paths and files.")
    report = {
        "config": str(config_path),
        "merge_method": info.name,
        "method": info.pretty_name,
        "paper_row": info.paper_row,
        "recipe": {"sparsifier": info.recipe.sparsifier.value,
                   "conflict_aware": info.recipe.conflict_aware,
                   "combine": info.recipe.combine.value},
        "base_model": str(config.base_model),
        "models": statistics.models,
        "random_seed": seed,
        "balance_block_size": balance_block_size,
        "tensors": len(jobs) - len(skipped),
        "skipped_tensors": skipped,
        "keep_counts": keep_count_summary(info.recipe, counted),
        **statistics.report(),
    }
    report["seconds"] = round(time.perf_counter() - started, 3)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


# ---- presentation ----

def _short(model: str, index: int) -> str:
    return f"#{index + 1} {Path(model).name or model}"


def _cell(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_table(report: dict) -> str:
    """The report's overall numbers as a compact text table."""
    models = report["models"]
    overall = report["overall"]
    lines = [f"{report['merge_method']} ({report['method']}): {len(models)} models, "
             f"{report['tensors']} tensors, {overall['elements']:,} elements per model, "
             f"{report['seconds']:.1f} s", "",
             f"{'overlap (intersection / union)':<44}{'method':>9}{'magnitude':>11}"]
    method, magnitude = overall["overlap"][METHOD], overall["overlap"][MAGNITUDE]
    lines.append(f"{'  all pairs':<44}{_cell(method['all_pairs']):>9}"
                 f"{_cell(magnitude['all_pairs']):>11}")
    for pair_m, pair_g in zip(method["pairs"], magnitude["pairs"]):
        a, b = (_short(m, models.index(m)) for m in pair_m["models"])
        lines.append(f"  {a} & {b}"[:43].ljust(44) + f"{_cell(pair_m['overlap']):>9}"
                     f"{_cell(pair_g['overlap']):>11}")
    ca = report["recipe"]["conflict_aware"]
    lines += ["", f"{'model':<24}{'kept':>7}{'energy':>8}"
              + (f"{'no-CA':>8}{'lost':>8}" if ca else "")
              + f"{'CV layers':>12}{'CV rows':>12}{'CV blocks':>12}"]
    balance = report["balance"]
    for i, model in enumerate(models):
        row = (f"{_short(model, i)[:23]:<24}{_cell(overall['kept_share'][METHOD][i]):>7}"
               f"{_cell(overall['kept_energy'][METHOD][i]):>8}")
        if ca:
            row += (f"{_cell(overall['kept_energy'][WITHOUT_CA][i]):>8}"
                    f"{_cell(overall['lost_to_ca'][i]):>8}")
        for unit in ("layers", "rows", "blocks"):
            row += (f"{_cell(balance[METHOD][i][unit], 2):>6}|"
                    f"{_cell(balance[MAGNITUDE][i][unit], 2):<5}")
        lines.append(row)
    lines.append("(kept = kept share; energy = kept energy share; CV = method|magnitude; "
                 f"blocks of {report['balance_block_size']})")
    if ca:
        lines.append("(no-CA = kept energy share of the same pruning without conflict-aware "
                     "masking; lost = no-CA - energy, what a model gave up to the models pruned "
                     "before it)")
    lines.append(f"\n{keep_count_sentence(report)}")
    return "\n".join(lines)


def write_figures(report: dict, out_dir: str | Path) -> Optional[list[Path]]:
    """PNG plots of overlap and kept energy per layer; None if matplotlib is missing."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    out = Path(out_dir)
    layers = report["layers"]
    names = [layer["name"] for layer in layers]
    positions = list(range(len(names)))

    def new_axes(title: str, ylabel: str):
        figure = Figure(figsize=(max(6.0, 0.3 * len(names) + 3), 4.2), layout="constrained")
        axes = figure.add_subplot()
        axes.set_title(title, fontsize=10)
        axes.set_ylabel(ylabel)
        axes.set_xticks(positions, names, rotation=60, ha="right", fontsize=7)
        axes.grid(alpha=0.3)
        return figure, axes

    def series(values):
        return [math.nan if v is None else v for v in values]

    figure, axes = new_axes(f"{report['merge_method']}: overlap of kept positions, all pairs",
                            "intersection / union")
    for kind, label, style in ((METHOD, report["merge_method"], "o-"),
                               (MAGNITUDE, "magnitude, same densities", "s--")):
        axes.plot(positions, series(layer["overlap"][kind]["all_pairs"] for layer in layers), style,
                  label=label)
    axes.set_ylim(bottom=-0.02)  # keeps a line at exactly 0 (disjoint masks) visible
    axes.legend(fontsize=8)
    overlap_path = out / "overlap_per_layer.png"
    figure.savefig(overlap_path, dpi=120)

    figure, axes = new_axes(f"{report['merge_method']}: kept energy per task",
                            "||M·τ||² / ||τ||²")
    ca = report["recipe"]["conflict_aware"]
    for i, model in enumerate(report["models"]):
        line, = axes.plot(positions, series(layer["kept_energy"][METHOD][i] for layer in layers), "o-",
                          label=_short(model, i))
        if ca:
            axes.plot(positions, series(layer["kept_energy"][WITHOUT_CA][i] for layer in layers), ":",
                      color=line.get_color(), label=f"{_short(model, i)} without CA")
    axes.set_ylim(0, 1)
    axes.legend(fontsize=7)
    energy_path = out / "kept_energy_per_layer.png"
    figure.savefig(energy_path, dpi=120)
    return [overlap_path, energy_path]
