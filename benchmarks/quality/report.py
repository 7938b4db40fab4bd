"""Aggregating seeds into results.json, results.md and the figures; paired comparisons."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Optional, Sequence

from .stats import correctness_array, paired_bootstrap


def spread(values: Sequence[float]) -> dict:
    """Mean, sample standard deviation (0 for one seed), min and max."""
    values = list(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "min": min(values), "max": max(values),
            "per_seed": values}


# MergeKit's own methods: the "best built-in" reference is the best of these on validation.
MERGEKIT_BUILTINS = ("task_arithmetic", "ties", "dare_ties", "dare_linear")
ANCESTOR_ROW = "ancestor alone (mixture fine-tune, its own heads)"


def validation_score(row: dict) -> float:
    """Mean validation accuracy of a method row at its chosen scale."""
    return row["val_curve"][f"{row['scale']:.6g}"]


def kept_share(record: dict, label: str) -> Optional[float]:
    """Mean over tasks of the kept share of a method's masks (from inspect), if measured."""
    stats = record.get("inspect", {}).get(label)
    return None if stats is None else statistics.fmean(stats["kept_share"]["method"])


def aggregate(seeds: Sequence[dict], task_names: Sequence[str]) -> dict:
    """Per row (the tasks' own models, base, ancestor, method): per-task, mean and normalized mean over seeds."""

    def row(records: Sequence[dict]) -> dict:
        out = {t: spread([r["test"][t] for r in records]) for t in task_names}
        out["mean"] = spread([r["mean"] for r in records])
        for key in ("normalized", "scale"):
            if all(key in r for r in records):
                out[key] = spread([r[key] for r in records])
        return out

    rows = {"individual (each task's own model)": row([s["individual"] for s in seeds])}
    if "ancestor_alone" in seeds[0]:
        rows[ANCESTOR_ROW] = row([s["ancestor_alone"] for s in seeds])
    rows["merge base + task heads"] = row([s["base_with_heads"] for s in seeds])
    for label in seeds[0]["methods"]:
        rows[label] = row([s["methods"][label] for s in seeds])
        shares = [kept_share(s, label) for s in seeds]
        if None not in shares:
            rows[label]["kept_share"] = spread(shares)
    overlap = {k: spread([s["overlap"][k] for s in seeds]) for k in seeds[0]["overlap"]}
    return {"rows": rows, "overlap": overlap}


def correctness(seeds: Sequence[dict], row_of) -> dict:
    """{task: bool [seeds, sentences]} of one row across seeds, for the paired statistics."""
    first = row_of(seeds[0])["test_correct"]
    return {t: correctness_array([row_of(s)["test_correct"][t] for s in seeds]) for t in first}


def references(seeds: Sequence[dict]) -> dict:
    """What every method is compared with, name -> (its method label or None, its row per seed):
    dense task arithmetic, MergeKit's best built-in (chosen on validation, mean over seeds)
    and, in the ancestry regime, the ancestor alone."""
    methods = seeds[0]["methods"]
    refs = {}
    if "task_arithmetic" in methods:
        refs["task_arithmetic"] = ("task_arithmetic", lambda s: s["methods"]["task_arithmetic"])
    builtins = [label for label, row in methods.items() if row["method"] in MERGEKIT_BUILTINS and not row["options"]]
    if builtins:
        best = max(builtins, key=lambda label: statistics.fmean(validation_score(s["methods"][label]) for s in seeds))
        refs[f"best built-in ({best})"] = (best, lambda s: s["methods"][best])
    if "ancestor_alone" in seeds[0]:
        refs["ancestor alone"] = (None, lambda s: s["ancestor_alone"])
    return refs


def comparisons(seeds: Sequence[dict]) -> dict:
    """Every method minus every reference: paired bootstrap over test sentences and seeds.

    A method is not compared with itself (None), so every row lists the references in order.
    """
    refs = references(seeds)
    cache = {name: correctness(seeds, row_of) for name, (_, row_of) in refs.items()}
    out = {}
    for label in seeds[0]["methods"]:
        mine = correctness(seeds, lambda s, label=label: s["methods"][label])
        out[label] = {name: None if ref_label == label else paired_bootstrap(mine, cache[name])
                      for name, (ref_label, _) in refs.items()}
    return out


def searched_from(label: str) -> Optional[str]:
    """The grid row a search row ``"<run> [search...]"`` belongs to, else None."""
    run, bracket, _ = label.partition(" [search")
    return run if bracket else None


PLAIN_SEARCH = " [search]"


def search_effects(seeds: Sequence[dict]) -> list[dict]:
    """Each search row (per-model weights from ``search_weights``, any variant) minus its grid
    row (the same run at the shared scale chosen on validation), paired over sentences and
    seeds, with both rows' validation accuracy, the search's cost and best fitness; a
    variant beyond the paper also minus the plain search of the same run (``vs_plain``)."""
    effects = []
    methods = seeds[0]["methods"]

    def row(label: str) -> dict:
        return correctness(seeds, lambda s: s["methods"][label])

    for label in methods:
        grid = searched_from(label)
        if grid not in methods:
            continue
        plain = grid + PLAIN_SEARCH
        vs_plain = paired_bootstrap(row(label), row(plain)) if label != plain and plain in methods else None
        effects.append({"search": label, "grid": grid, **paired_bootstrap(row(label), row(grid)),
                        "vs_plain": vs_plain,
                        "best_fitness": statistics.fmean(s["methods"][label]["search"]["best_fitness"]
                                                         for s in seeds),
                        "val_search": statistics.fmean(s["methods"][label]["val_mean"] for s in seeds),
                        "val_grid": statistics.fmean(validation_score(s["methods"][grid]) for s in seeds),
                        "weights": [flat_weights(s["methods"][label]["weights"]) for s in seeds],
                        "grid_scales": [s["methods"][grid]["scale"] for s in seeds],
                        "evaluations": statistics.fmean(s["methods"][label]["search"]["evaluations"] for s in seeds),
                        "wall_seconds": statistics.fmean(s["methods"][label]["search"]["wall_seconds"] for s in seeds)})
    return effects


def flat_weights(record: dict) -> list[float]:
    """A search's weights in model order (layer groups: every group of each model in turn)."""
    return [w for value in record.values() for w in (value.values() if isinstance(value, dict) else [value])]


# Conflict-aware pruning on vs off, everything else equal.
CA_PAIRS = (("cabs", "nm_linear"), ("ca_magnitude_linear", "magnitude_linear"))

# The ingredients of the sparse merges, one changed at a time: (with, without, what changes).
# Rows are compared at the same density wherever a regime ran both.
INGREDIENTS = (
    ("nm_linear", "magnitude_linear", "n:m blocks instead of per-tensor magnitude (sum)"),
    ("cabs", "nm_linear", "conflict-aware pruning (n:m, sum)"),
    ("ca_magnitude_linear", "magnitude_linear", "conflict-aware pruning (per-tensor, sum)"),
    ("ties[normalize=False]", "magnitude_linear", "sign election (per-tensor, no disjoint mean)"),
    ("nm_ties", "nm_linear", "sign election (n:m, no disjoint mean)"),
    ("ties", "ties[normalize=False]", "disjoint mean (per-tensor, sign election)"),
    ("nm_ties[normalize=True]", "nm_ties", "disjoint mean (n:m, sign election)"),
    ("ties", "nm_ties[normalize=True]", "per-tensor instead of n:m (full TIES)"),
    ("cabs_ties", "cabs", "sign election on conflict-aware masks"),
)


def ingredient_effects(seeds: Sequence[dict]) -> list[dict]:
    """Each ingredient's effect: row with minus row without, paired over sentences and seeds."""
    methods = seeds[0]["methods"]
    densities = sorted({r["density"] for r in methods.values() if r["density"]})
    effects = []
    for density in densities:
        for with_, without, change in INGREDIENTS:
            on, off = f"{with_}@{density:g}", f"{without}@{density:g}"
            if on in methods and off in methods:
                result = paired_bootstrap(correctness(seeds, lambda s, on=on: s["methods"][on]),
                                          correctness(seeds, lambda s, off=off: s["methods"][off]))
                effects.append({"density": density, "change": change, "with": on, "without": off, **result})
    return effects


def ca_gains(arms: dict) -> list[dict]:
    """Gain of CA (on minus off) against the measured magnitude-mask overlap, per arm,
    density and seed, with the arm's paired interval over sentences and seeds."""
    points = []
    for arm, seeds in arms.items():
        for density in sorted({r["density"] for r in seeds[0]["methods"].values() if r["density"]}):
            for with_ca, without in CA_PAIRS:
                on, off = f"{with_ca}@{density:g}", f"{without}@{density:g}"
                if on not in seeds[0]["methods"] or off not in seeds[0].get("inspect", {}):
                    continue  # a pair not run, or its overlap not measured
                interval = paired_bootstrap(correctness(seeds, lambda s, on=on: s["methods"][on]),
                                            correctness(seeds, lambda s, off=off: s["methods"][off]))
                for s in seeds:
                    points.append({
                        "arm": arm, "seed": s["seed"], "density": density, "pair": f"{with_ca} - {without}",
                        # at a sum >= 1 conflict-aware masks fill every block: later tasks get what is left
                        "density_sum": density * len(s["task_vector_norms"]),
                        "magnitude_overlap": s["inspect"][off]["overlap"]["magnitude"],
                        "gain": s["methods"][on]["mean"] - s["methods"][off]["mean"],
                        "arm_interval": interval,
                    })
    return points


def _cell(stats: dict, percent: bool = True) -> str:
    factor = 100.0 if percent else 1.0
    text = f"{stats['mean'] * factor:.1f}"
    if len(stats["per_seed"]) > 1:
        text += f" ± {stats['std'] * factor:.1f}"
    return text


def _difference(result: Optional[dict]) -> str:
    """``+1.2 [+0.3, +2.0] *``: points, 95 % interval; ``*`` marks an interval without 0."""
    if result is None:
        return ""
    text = f"{result['mean'] * 100:+.1f} [{result['low'] * 100:+.1f}, {result['high'] * 100:+.1f}]"
    return text + (" *" if result["real"] else "")


def arm_markdown(arm: str, summary: dict, seeds: Sequence[dict], task_names: Sequence[str], meta: dict) -> list[str]:
    """One arm's section: training, the accuracy table with paired differences, masks, orders."""
    n = len(seeds)
    refs = list(next(iter(summary["comparisons"].values()), {}))
    train = seeds[0]["train"]
    norms = {t: statistics.fmean(s["task_vector_norms"][t] for s in seeds) for t in task_names}
    lines = [
        f"## {arm} ({n} seed{'s' * (n > 1)})", "",
        f"Fine-tuning: body lr {train['body_lr']:g}, head lr {train['head_lr']:g}, {train['epochs']} epoch(s), "
        f"batch {train['batch_size']}; steps per task: "
        + ", ".join(f"{t} {v}" for t, v in train["steps"].items()) + ".",
        "Task-vector norms ||tau|| against the merge base (mean over seeds): "
        + ", ".join(f"{t} {v:.2f}" for t, v in norms.items()) + ".",
    ]
    if "ancestor_train" in seeds[0]:
        a = seeds[0]["ancestor_train"]
        lines.append(f"Ancestor: the base fine-tuned on the mixture of all tasks, body lr {a['body_lr']:g}, "
                     f"{a['epochs']} epoch(s), {sum(a['steps'].values())} steps.")
    lines += [
        "",
        f"Test accuracy (%) {'mean ± std over seeds' if n > 1 else 'one seed'}; `kept` is the mean kept share "
        "of the method's masks (inspect); the last columns are paired differences in points with a 95 % "
        "bootstrap interval over test sentences and seeds, `*` where the interval excludes 0.", "",
        "| row | scale | " + " | ".join(task_names) + " | mean | normalized | kept (%) |"
        + "".join(f" Δ vs {r} |" for r in refs),
        "|---|---|" + "---|" * (len(task_names) + 3 + len(refs)),
    ]
    for label, stats in summary["rows"].items():
        scale = f"{stats['scale']['mean']:.3g}" if "scale" in stats else ""
        if "scale" in stats and len(set(stats["scale"]["per_seed"])) > 1:
            scale = "/".join(f"{v:.3g}" for v in stats["scale"]["per_seed"])
        norm = _cell(stats["normalized"]) if "normalized" in stats else ""
        kept = _cell(stats["kept_share"]) if "kept_share" in stats else ""
        diffs = [_difference(summary["comparisons"].get(label, {}).get(r)) for r in refs]
        cells = [_cell(stats[t]) for t in task_names]
        name = label + (" (equal kept count)" if label in seeds[0].get("equal_kept", {}) else "")
        lines.append(f"| {name} | {scale} | " + " | ".join(cells) + f" | {_cell(stats['mean'])} | {norm} | {kept} |"
                     + "".join(f" {d} |" for d in diffs))
    if summary.get("ingredients"):
        lines += ["", "What each ingredient does: the row with it minus the row without it (same density), "
                  "paired 95 % bootstrap interval over test sentences and seeds, `*` where it excludes 0.", "",
                  "| density | change | with | without | Δ points [95 %] |", "|---|---|---|---|---|"]
        for e in summary["ingredients"]:
            lines.append(f"| {e['density']:g} | {e['change']} | {e['with']} | {e['without']} | {_difference(e)} |")
    lines += search_markdown(summary.get("searches", []))
    if "inspect" in seeds[0]:
        lines += ["", "Masks from `mergekit-cabs inspect` (first seed): overlap = intersection / union pooled "
                  "over all task pairs; kept = kept share per task; lost to CA = kept-energy share each task "
                  "gave up to the tasks pruned before it.", "",
                  "| masks | overlap (%) | magnitude overlap (%) | kept per task (%) | lost to CA per task (%) |",
                  "|---|---|---|---|---|"]
        for label, stats in seeds[0]["inspect"].items():
            kept = ", ".join(f"{v * 100:.1f}" for v in stats["kept_share"]["method"])
            lost = ", ".join(f"{v * 100:.1f}" for v in stats["lost_to_ca"]) if stats["lost_to_ca"] else ""
            lines.append(f"| {label} | {stats['overlap']['method'] * 100:.1f} | "
                         f"{stats['overlap']['magnitude'] * 100:.1f} | {kept} | {lost} |")
    orders = [s for s in seeds if "orders" in s]
    if orders:
        lines += order_markdown(orders[0], task_names, meta)
    lines += ["", "Overlap of task masks (kernels on the task vectors, mean over task pairs):", "",
              "| masks @ density | overlap (%) |", "|---|---|"]
    for key, stats in summary["overlap"].items():
        lines.append(f"| {key} | {_cell(stats)} |")
    return lines


def search_markdown(searches: Sequence[dict]) -> list[str]:
    """The search rows against their grid rows (``search_effects``), or nothing."""
    if not searches:
        return []
    lines = ["", "Weights from `search_weights` (CABS+ AWA, from weight 1, on each head's validation "
             "cross-entropy) against the grid's shared scale (chosen on validation accuracy): test "
             "difference search minus grid, paired 95 % bootstrap over sentences and seeds. Weights are in "
             "model order per seed (with layer groups: each model's groups in turn).", "",
             "| row | evaluations | wall s | best fitness | weights | grid scale | val: search / grid (%) "
             "| Δ test vs grid | Δ test vs plain search |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in searches:
        weights = " / ".join(", ".join(f"{w:.2f}" for w in seed) for seed in e["weights"])
        scales = "/".join(f"{v:.3g}" for v in e["grid_scales"])
        fitness = f"{e['best_fitness']:.3f}" if "best_fitness" in e else ""
        lines.append(f"| {e['search']} | {e['evaluations']:.0f} | {e['wall_seconds']:.0f} | {fitness} | {weights} | "
                     f"{scales} | {e['val_search'] * 100:.1f} / {e['val_grid'] * 100:.1f} | {_difference(e)} | "
                     f"{_difference(e.get('vs_plain'))} |")
    return lines


def order_markdown(record: dict, task_names: Sequence[str], meta: dict) -> list[str]:
    """The order study: spread of CABS over orders, and where the named rules land."""
    means = [o["mean"] * 100 for o in record["orders"]]
    ranked = sorted(record["orders"], key=lambda o: -o["mean"])
    lines = ["", f"### CABS under {len(means)} pruning orders (seed {record['seed']}, density "
             f"{meta['order_density']:g}, its chosen scale)", "",
             f"Mean test accuracy: best {max(means):.2f}, worst {min(means):.2f}, spread "
             f"{max(means) - min(means):.2f} points, median {statistics.median(means):.2f}."]
    for rule in ("largest norm first", "smallest norm first", "yaml order"):
        for rank, o in enumerate(ranked, 1):
            if rule in o["rules"]:
                lines.append(f"- {rule}: {o['mean'] * 100:.2f} (rank {rank} of {len(ranked)}).")
    lines += ["", "| order (first prunes first) | rule | " + " | ".join(task_names) + " | mean |",
              "|---|---|" + "---|" * (len(task_names) + 1)]
    for o in ranked:
        cells = [f"{o['test'][t] * 100:.1f}" for t in task_names]
        lines.append(f"| {' > '.join(o['order'])} | {', '.join(o['rules'])} | " + " | ".join(cells)
                     + f" | {o['mean'] * 100:.2f} |")
    return lines


def markdown(summaries: dict, arms: dict, task_names: dict, gains: Sequence[dict], meta: dict) -> str:
    """Every arm's section, then the CA gain against overlap across arms."""
    lines = [f"# Merge quality: all-MiniLM-L6-v2 ({meta['preset']} preset)", "",
             "Arms: one set of fine-tuned models merged against one base. The scale is the shared weight "
             "(lambda where the combine normalizes) chosen on validation per method and seed.", ""]
    if not meta.get("complete", True):
        lines += [f"**Partial run**: written after the regimes {', '.join(meta['regimes'])}; the run did not finish.", ""]
    for arm, records in arms.items():
        lines += arm_markdown(arm, summaries[arm], records, task_names[arm], meta) + [""]
    if gains:
        lines += ["## Does conflict-aware pruning pay? Gain against magnitude-mask overlap", "",
                  "Gain = mean test accuracy with CA minus without (same sparsifier and density), in points; "
                  "interval: paired bootstrap over sentences and seeds of the arm. Figure: "
                  "`ca_gain_vs_overlap.png`.", "",
                  "| arm | density | pair | magnitude overlap (%) | gain per seed | mean gain [95 %] |",
                  "|---|---|---|---|---|---|"]
        grouped: dict = {}
        for p in gains:
            grouped.setdefault((p["arm"], p["density"], p["pair"]), []).append(p)
        for (arm, density, pair), points in grouped.items():
            overlap = statistics.fmean(p["magnitude_overlap"] for p in points) * 100
            per_seed = ", ".join(f"{p['gain'] * 100:+.1f}" for p in points)
            lines.append(f"| {arm} | {density:g} | {pair} | {overlap:.1f} | {per_seed} | "
                         f"{_difference(points[0]['arm_interval'])} |")
    return "\n".join(lines) + "\n"


def ca_gain_figure(gains: Sequence[dict], path: Path) -> None:
    """CA gain (points) against magnitude-mask overlap: one point per arm, density and seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 5))
    arms = list(dict.fromkeys(p["arm"] for p in gains))
    colors = plt.get_cmap("tab10")
    for pair, marker in zip(sorted({p["pair"] for p in gains}), "os^v"):
        for index, arm in enumerate(arms):  # marker: which CA pair; colour: which arm
            points = [p for p in gains if p["pair"] == pair and p["arm"] == arm]
            for full in (False, True):  # hollow: densities sum to 1 or more
                chosen = [p for p in points if (p.get("density_sum", 0.0) >= 1.0 - 1e-9) == full]
                if chosen:
                    ax.scatter([p["magnitude_overlap"] * 100 for p in chosen], [p["gain"] * 100 for p in chosen],
                               marker=marker, edgecolors=colors(index % 10),
                               facecolors="none" if full else colors(index % 10), alpha=0.85,
                               label=f"{pair}, {arm}" + (", densities sum >= 1" if full else ""))
    ax.axhline(0.0, color="k", linewidth=0.8)
    ax.set_xlabel("magnitude-mask overlap between tasks (%, mergekit-cabs inspect)")
    ax.set_ylabel("CA on minus off (points of mean test accuracy)")
    ax.set_title("When does CA pay? One point per arm, density and seed; hollow: densities sum >= 1")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def figure(summary: dict, path: Path, densities: Sequence[float], title: str,
           base_label: str = "merge base + task heads") -> None:
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
                         ("merge base + task heads", "-."), (ANCESTOR_ROW, "-")):
        if label in rows:
            names = {"task_arithmetic": "task_arithmetic (dense)", "merge base + task heads": base_label}
            ax.axhline(rows[label]["mean"]["mean"] * 100, linestyle=style, color="k", linewidth=1,
                       label=names.get(label, label))
    ax.set_xticks(range(len(methods)))
    ax.set_xticklabels(methods, rotation=35, ha="right")
    ax.set_ylabel("mean test accuracy over the tasks (%)")
    ys_all = [rows[k]["mean"]["min"] * 100 for k in rows if "@" in k or k == "merge base + task heads"]
    ax.set_ylim(max(0.0, min(ys_all) - 5), 100)
    ax.set_title(title)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
