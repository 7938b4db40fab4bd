"""Aggregating seeds into results.json, results.md and a figure."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Sequence


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values),
            "per_seed": values}


def aggregate(seeds: Sequence[dict], task_names: Sequence[str]) -> dict:
    """Per row (fine-tuned model, base, method): per-task, mean and normalized mean over seeds."""

    def row(records: Sequence[dict]) -> dict:
        out = {t: spread([r["test"][t] for r in records]) for t in task_names}
        out["mean"] = spread([r["mean"] for r in records])
        if all("normalized" in r for r in records):
            out["normalized"] = spread([r["normalized"] for r in records])
        if all("scale" in r for r in records):
            out["scale"] = spread([r["scale"] for r in records])
        return out

    def finetuned_row(task: str) -> list[dict]:
        rows = []
        for s in seeds:
            scores = s["finetuned"][task]
            rows.append({"test": scores, "mean": statistics.fmean(scores.values())})
        return rows

    rows = {"individual (each task's own model)": row([s["individual"] for s in seeds])}
    rows.update({f"fine-tuned on {t}": row(finetuned_row(t)) for t in task_names})
    rows["base body + task heads"] = row([s["base_with_heads"] for s in seeds])
    for label in seeds[0]["methods"]:
        rows[label] = row([s["methods"][label] for s in seeds])
    overlap = {k: spread([s["overlap"][k] for s in seeds]) for k in seeds[0]["overlap"]}
    return {"rows": rows, "overlap": overlap}


def _cell(stats: dict, percent: bool = True) -> str:
    factor = 100.0 if percent else 1.0
    text = f"{stats['mean'] * factor:.1f}"
    if len(stats["per_seed"]) > 1:
        text += f" ± {stats['std'] * factor:.1f}"
    return text


def markdown(summary: dict, seeds: Sequence[dict], task_names: Sequence[str], meta: dict) -> str:
    """The results table, the order table and the overlap table."""
    n = len(seeds)
    lines = [
        f"# Merge quality: all-MiniLM-L6-v2, 4 tasks ({meta['preset']}, {n} seed{'s' * (n > 1)})",
        "",
        f"Test accuracy (%) {'mean ± std over seeds' if n > 1 else 'one seed'}; `normalized` is the mean of "
        "accuracy / the task's own fine-tuned accuracy. `scale` is the shared weight (lambda for "
        "MergeKit's `ties`) chosen on validation.",
        "",
        "| row | scale | " + " | ".join(task_names) + " | mean | normalized |",
        "|---|---|" + "---|" * (len(task_names) + 2),
    ]
    for label, stats in summary["rows"].items():
        scale = f"{stats['scale']['mean']:.3g}" if "scale" in stats else ""
        if "scale" in stats and len(set(stats["scale"]["per_seed"])) > 1:
            scale = "/".join(f"{v:.3g}" for v in stats["scale"]["per_seed"])
        norm = _cell(stats["normalized"]) if "normalized" in stats else ""
        cells = [_cell(stats[t]) for t in task_names]
        lines.append(f"| {label} | {scale} | " + " | ".join(cells) + f" | {_cell(stats['mean'])} | {norm} |")
    orders = [s for s in seeds if "orders" in s]
    if orders:
        record = orders[0]
        means = [o["mean"] * 100 for o in record["orders"]]
        lines += ["", f"## CABS under all {len(means)} pruning orders (seed {record['seed']}, "
                  f"density {meta['order_density']:g}, its chosen scale)", "",
                  f"Mean test accuracy: min {min(means):.2f}, max {max(means):.2f}, "
                  f"spread {max(means) - min(means):.2f} points, median {statistics.median(means):.2f}.", "",
                  "| order (first prunes first) | " + " | ".join(task_names) + " | mean |",
                  "|---|" + "---|" * (len(task_names) + 1)]
        for o in sorted(record["orders"], key=lambda o: -o["mean"]):
            cells = [f"{o['test'][t] * 100:.1f}" for t in task_names]
            lines.append(f"| {' > '.join(o['order'])} | " + " | ".join(cells) + f" | {o['mean'] * 100:.2f} |")
    lines += ["", "## Overlap of task masks", "",
              "Intersection / union of kept positions, counted over every tensor, averaged over the "
              "6 task pairs; masks from `mergekit_cabs.kernels` on the task vectors.", "",
              "| masks @ density | overlap (%) |", "|---|---|"]
    for key, stats in summary["overlap"].items():
        lines.append(f"| {key} | {_cell(stats)} |")
    return "\n".join(lines) + "\n"


def figure(summary: dict, path: Path, densities: Sequence[float], title: str) -> None:
    """Mean test accuracy per method and density; error bars span the seeds (min to max)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["rows"]
    methods = list(dict.fromkeys(label.split("@")[0] for label in rows if "@" in label))
    fig, ax = plt.subplots(figsize=(12, 4.8))
    width = 0.8 / len(densities)
    for d_index, density in enumerate(densities):
        xs, ys, lo, hi = [], [], [], []
        for m_index, method in enumerate(methods):
            stats = rows.get(f"{method}@{density:g}")
            if stats is None:
                continue
            mean = stats["mean"]
            xs.append(m_index + (d_index - (len(densities) - 1) / 2) * width)
            ys.append(mean["mean"] * 100)
            lo.append((mean["mean"] - mean["min"]) * 100)
            hi.append((mean["max"] - mean["mean"]) * 100)
        ax.bar(xs, ys, width, yerr=[lo, hi], capsize=2, label=f"density {density:g}")
    for label, style in (("individual (each task's own model)", "--"), ("task_arithmetic", ":"),
                         ("base body + task heads", "-.")):
        if label in rows:
            ax.axhline(rows[label]["mean"]["mean"] * 100, linestyle=style, color="k", linewidth=1,
                       label=label if label != "task_arithmetic" else "task_arithmetic (dense)")
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=35, ha="right")
    ax.set_ylabel("mean test accuracy over 4 tasks (%)")
    ys_all = [rows[k]["mean"]["min"] * 100 for k in rows if "@" in k or k == "base body + task heads"]
    ax.set_ylim(max(0.0, min(ys_all) - 5), 100)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
