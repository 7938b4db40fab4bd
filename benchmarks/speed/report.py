"""The whole-merge benchmark's report: ``<stem>.md`` and one ``<stem>-<family>.png`` per
family, drawn from ``<stem>.json`` alone, so a committed result can be drawn again:

    python -m benchmarks.speed.report benchmarks/speed/results/results-ab.json [--plots]
"""

from __future__ import annotations

from pathlib import Path

from mergekit_cabs.kernels import TORCH_KERNELS_ENV

from ..redraw import redraw
from .presets import PRESETS, preset_command, preset_of
from .targets import OURS_VS_TIES, RSS_VS_TASK_ARITHMETIC, cabs_limit
from .variants import BLOCK_SIZE, BUILT_INS, DENSITY, REFERENCES, is_torch_row


def family_markdown(family: dict) -> list[str]:
    """One family's heading, inputs, table of rows and targets."""
    inputs = family["inputs"]
    dims = inputs["dims"]

    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    zero_share = ", ".join(f"{100 * z:.0f}%" for z in inputs["zero_share"])
    lines = [
        f"## {family['name']}",
        "",
        f"Base + {inputs['n_finetuned']} fine-tunes, {inputs['params_per_model'] / 1e9:.3g} B bf16 params each: "
        f"{inputs['layers']} decoder layer(s) of hidden {dims['hidden']}, MLP {dims['intermediate']}, "
        f"KV {dims['kv']}, and {dims['vocab']} x {dims['hidden']} embeddings and head. Task-vector entries "
        f"exactly 0: {zero_share} (per fine-tune). {family['repeats']}.",
        "",
        "| method | median wall s | min wall s | runs | peak RSS MiB | x I/O floor | x task_arithmetic | x ties | RSS x task_arithmetic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in family["rows"].items():
        lines.append(f"| `{variant}` | {row['median_wall_s']:.1f} | {row['min_wall_s']:.1f} | {row['runs']} | "
                     f"{row['peak_rss_mib']:.0f} | {ratio(row['vs_io_floor'])} | {ratio(row['vs_task_arithmetic'])} | "
                     f"{ratio(row['vs_ties'])} | {ratio(row['rss_vs_task_arithmetic'])} |")
    lines += ["", "| target | measured | |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['ratio']:.2f}x | {'met' if c['met'] else '**missed**'} |"
              for c in family["targets"]]
    return lines + [""]


def regenerate_line(result: dict, stem: str) -> list[str]:
    """The command that makes these result files again, where a preset made them (recorded in
    the result; results written before presets existed are known by their stem)."""
    name = result["preset"] if "preset" in result else preset_of(stem)
    if name is None:
        return []
    return [f"Regenerate: `{preset_command(name)}` ({PRESETS[name].about}). Drawn again from the JSON: "
            f"`python -m benchmarks.speed.report benchmarks/speed/results/{stem}.json`.", ""]


def markdown(result: dict, stem: str) -> str:
    """The command that makes it again, the conditions of the run, then each family's table
    and targets."""
    machine = result["machine"]
    lines = regenerate_line(result, stem) + [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['ram_gib']} GiB RAM; "
        f"torch {machine['torch']}, mergekit {machine['mergekit']}, numba {machine['numba']}; "
        f"MergeKit ran with {machine['mergekit_threads']} torch threads ({machine['mergekit_threads_source']}). "
        f"Density {DENSITY}, n:m at block {BLOCK_SIZE}, warm page cache, `mergekit-yaml "
        f"{' '.join(result['mergekit_flags'])}`; `:torch` rows with {TORCH_KERNELS_ENV}=1; "
        f"the JIT cache warmed before the runs ({result.get('jit_warmup_s', float('nan')):.1f} s; a cold "
        "first merge is `benchmarks.speed.compile_time`'s figure).",
        f"Command: `{result['command']}`" + (f". Note: {result['note']}" if result["note"] else ""),
        "",
    ]
    for family in result["families"]:
        lines += family_markdown(family)
    return "\n".join(lines)


def bar_colors(variants: list[str]) -> list[str]:
    """Grey for reference rows, orange for MergeKit's methods, blue for ours (light: torch path)."""
    return ["grey" if v in REFERENCES else "tab:orange" if v in BUILT_INS
            else "lightsteelblue" if is_torch_row(v) else "tab:blue" for v in variants]


def plot(family: dict, machine: dict, path: Path) -> None:
    """Median wall (min as a dot) and peak RSS per variant, with the targets as dashed lines."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'mergekit-cabs[plots]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = family["rows"]
    variants = list(rows)[::-1]  # barh draws bottom-up; keep the table's order top-down
    fig, (wall_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 0.35 * len(variants) + 2), sharey=True)
    wall_ax.barh(variants, [rows[v]["median_wall_s"] for v in variants], color=bar_colors(variants))
    wall_ax.plot([rows[v]["min_wall_s"] for v in variants], variants, "k.", label="min")
    if "task_arithmetic" in rows:
        ta = rows["task_arithmetic"]
        limit = cabs_limit(family["slug"])
        wall_ax.axvline(ta["median_wall_s"] * limit, ls="--", c="tab:green",
                        label=f"cabs target: {limit}x task_arithmetic")
        rss_ax.axvline(ta["peak_rss_mib"] * RSS_VS_TASK_ARITHMETIC, ls="--", c="tab:green",
                       label=f"target: {RSS_VS_TASK_ARITHMETIC}x task_arithmetic")
    if "ties" in rows:
        wall_ax.axvline(rows["ties"]["median_wall_s"] * OURS_VS_TIES, ls=":", c="tab:red",
                        label=f"target for ours: {OURS_VS_TIES}x ties")
    rss_ax.barh(variants, [rows[v]["peak_rss_mib"] for v in variants], color=bar_colors(variants))
    wall_ax.set_xlabel("wall time, s (median; dot: min)")
    rss_ax.set_xlabel("peak RSS of the process, MiB")
    for ax in (wall_ax, rss_ax):
        # Below the x label: ~0.6 inch, as a fraction of the axes' height (~figure height - 1 inch).
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.6 / (0.35 * len(variants) + 1)))
    inputs = family["inputs"]
    fig.suptitle(f"{family['name']}: mergekit-yaml on base + {inputs['n_finetuned']} x "
                 f"{inputs['params_per_model'] / 1e9:.3g} B bf16, density {DENSITY}; {machine['cpu']}, "
                 f"{machine['mergekit_threads']} threads (grey: reference, orange: MergeKit, blue: mergekit-cabs, "
                 "light blue: its torch path)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def write_report(result: dict, out: Path, stem: str, plots: bool = True) -> str:
    """``<stem>.md`` (returned) and, with ``plots``, a ``<stem>-<family>.png`` per family in ``out``."""
    text = markdown(result, stem)
    (out / f"{stem}.md").write_text(text)
    if plots:
        for family in result["families"]:
            plot(family, result["machine"], out / f"{stem}-{family['slug']}.png")
    return text


def main(argv=None) -> None:
    redraw("python -m benchmarks.speed.report", __doc__,
           lambda result, path, args: write_report(result, path.parent, path.stem, args.plots), argv,
           lambda parser: parser.add_argument("--plots", action="store_true", help="draw the charts again too"))


if __name__ == "__main__":
    main()
