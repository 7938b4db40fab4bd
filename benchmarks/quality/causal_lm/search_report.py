"""The search's evidence in the causal-LM regime: does the calibration loss rank the grid's
weights as validation accuracy does, what each search evaluated, what a search costs.

Written into results.md by ``report.markdown`` and drawn into ``search_traces.png``.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Sequence

from ..report import searched_from


def proxy_curves(seed: dict) -> dict[str, dict[float, dict]]:
    """``{label: {weight: {"val": accuracy, "losses": [per task]}}}`` of the rows whose grid
    recorded the calibration loss (``grid_extras``)."""
    out = {}
    for label, row in seed["methods"].items():
        extras = row.get("grid_extras")
        if extras:
            out[label] = {float(w): {"val": row["val_curve"][w], "losses": point["calibration_losses"]}
                          for w, point in extras.items()}
    return out


def proxy_lines(seeds: Sequence[dict], tasks: Sequence[str]) -> list[str]:
    """Per seed and grid row: each weight's validation accuracy and calibration losses, the
    weight the grid chose (highest accuracy) and the one the loss ranks first."""
    lines = ["", "## Does the calibration loss rank the weights as validation accuracy does?", "",
             "Every grid point of the rows below was also scored with the default search's loss (the calibration "
             "error of each task's prompt-completion lines of the train split). `grid` marks the weight the "
             "validation grid chose, `loss` the weight with the lowest summed loss.", "",
             "| seed | row | weight | val acc (%) | " + " | ".join(tasks) + " | sum | |",
             "|---|---|---|---|" + "---|" * (len(tasks) + 2)]
    for seed in seeds:
        for label, curve in proxy_curves(seed).items():
            best_val = max(sorted(curve), key=lambda w: curve[w]["val"])
            best_loss = min(sorted(curve), key=lambda w: sum(curve[w]["losses"]))
            for weight in sorted(curve):
                point = curve[weight]
                marks = " ".join(m for m, w in (("grid", best_val), ("loss", best_loss)) if w == weight)
                lines.append(f"| {seed['seed']} | {label} | {weight:g} | {point['val'] * 100:.1f} | "
                             + " | ".join(f"{v:.3f}" for v in point["losses"])
                             + f" | {sum(point['losses']):.3f} | {marks} |")
    return lines


def search_cost_lines(seeds: Sequence[dict]) -> list[str]:
    """Per search row and seed: evaluations, wall time, the stage of the best, the weights."""
    lines = ["", "Searches per seed (weights in model order; wall: the search itself, preparation included):", "",
             "| row | seed | evaluations | wall s | s per evaluation | best at | weights | val mean: search / grid |",
             "|---|---|---|---|---|---|---|---|"]
    for label in seeds[0]["methods"]:
        grid = searched_from(label)
        if not grid:
            continue
        for s in seeds:
            row, info = s["methods"][label], s["methods"][label]["search"]
            trace = info.get("trace", [])
            best = trace[info["best_index"]][0] if trace and "best_index" in info else "?"
            grid_row = s["methods"].get(grid)
            grid_val = grid_row["val_curve"][f"{grid_row['scale']:.6g}"] if grid_row else math.nan
            weights = ", ".join(f"{w:.2f}" for w in row["weights"].values())
            lines.append(f"| {label} | {s['seed']} | {info['evaluations']} | {info['wall_seconds']:.0f} | "
                         f"{info['wall_seconds'] / info['evaluations']:.1f} | {best} | {weights} | "
                         f"{row['val_mean'] * 100:.1f} / {grid_val * 100:.1f} |")
    return lines


def traced_searches(seeds: Sequence[dict], variant: str = "search") -> list[tuple[dict, str, dict]]:
    """(seed, grid label, search row) of every ``[variant]`` row with a trace."""
    out = []
    for s in seeds:
        for label, row in s["methods"].items():
            if label.endswith(f" [{variant}]") and row.get("search", {}).get("trace"):
                out.append((s, searched_from(label), row))
    return out


def trace_figure(seeds: Sequence[dict], tasks: Sequence[str], path: Path) -> None:
    """Per default search: the summed calibration loss of every evaluation (by stage) with the
    grid's points as horizontal lines, and each task's loss; nothing without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return
    searches = traced_searches(seeds)
    if not searches:
        return
    figure = Figure(figsize=(4.2 * len(searches), 6.4), layout="constrained")
    axes = figure.subplots(2, len(searches), squeeze=False)
    colors = {"start": "black", "shared": "tab:orange", "first": "tab:gray", "main": "tab:blue"}
    for column, (seed, grid, row) in enumerate(searches):
        top, bottom = axes[0][column], axes[1][column]
        trace = row["search"]["trace"]
        for stage, color in colors.items():
            points = [(i, sum(t[2])) for i, t in enumerate(trace) if t[0] == stage]
            if points:
                top.plot(*zip(*points), ".", color=color, label=stage, markersize=4)
        best = row["search"]["best_index"]
        top.plot([best], [sum(trace[best][2])], "*", color="red", markersize=11, label="best")
        for weight, point in sorted(proxy_curves(seed).get(grid, {}).items()):
            top.axhline(sum(point["losses"]), color="tab:green", linewidth=0.6, linestyle="--")
            top.annotate(f"grid {weight:g}", (len(trace) - 1, sum(point["losses"])), fontsize=6,
                         color="tab:green", ha="right", va="bottom")
        top.set_title(f"{grid}, seed {seed['seed']}", fontsize=9)
        top.set_ylabel("summed calibration loss")
        for task, name in enumerate(tasks):
            bottom.plot(range(len(trace)), [t[2][task] for t in trace], ".-", linewidth=0.4, markersize=2, label=name)
        bottom.set_xlabel("evaluation")
        bottom.set_ylabel("calibration loss")
    axes[0][0].legend(fontsize=6)
    axes[1][0].legend(fontsize=6)
    figure.suptitle("mergekit-cabs search (defaults): every evaluation; dashed: the validation grid's weights",
                    fontsize=10)
    figure.savefig(path, dpi=110)


def mean_wall(seeds: Sequence[dict], variant: str = "search") -> float:
    """Mean wall seconds of the ``[variant]`` searches."""
    walls = [row["search"]["wall_seconds"] for _, _, row in traced_searches(seeds, variant)]
    return statistics.fmean(walls) if walls else math.nan
