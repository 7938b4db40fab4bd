"""The search cost benchmark's table, ``<label>.md`` beside ``<label>.json``, drawn from the
JSON alone:

    python -m benchmarks.search_cost.report benchmarks/search_cost/results/smollm2.json
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..redraw import redraw
from .presets import regenerate_command

MIB = 2 ** 20


def made_by(record: dict, command: Optional[str]) -> list[str]:
    """The command that makes the record again (a preset's), else the one that made it."""
    if command:
        return [f"Regenerate: `{command}`.", ""]
    return [f"Command: `{record['command']}`.", ""] if "command" in record else []


def rows(record: dict) -> list[tuple[str, str, str]]:
    """(what, seconds, peak RSS MiB) of each measurement, the search's evaluation first."""
    search, merge, merge_load = (record["results"][mode] for mode in ("search", "merge", "merge_load"))
    return [
        ("one search evaluation (median)", f"{search['evaluation_s']:.2f}", f"{search['peak_rss_mib']:.0f}"),
        ("- assembling the candidate in place", f"{search['assemble_s']:.2f}", ""),
        ("- the tasks' losses", f"{search['losses_s']:.2f}", ""),
        ("reading and pruning once (the search's start)", f"{search['prepare_s']:.2f}", ""),
        ("one merge (`run_merge`, fresh process)", f"{merge['wall_s']:.2f}", f"{merge['peak_rss_mib']:.0f}"),
        ("one grid point: merge, load, the same losses", f"{merge_load['wall_s']:.2f}",
         f"{merge_load['peak_rss_mib']:.0f}"),
    ]


def markdown(record: dict, command: Optional[str]) -> str:
    """The command that makes it again, what was measured, the table, the ratios."""
    spec, summary, search = record["spec"], record["summary"], record["results"]["search"]
    lines = made_by(record, command) + [
        f"{summary['model']}, merged with `cabs`; {len(spec['data'])} calibration "
        f"files, `--max-length {spec['max_length']}`, batch size {spec['batch_size']}, "
        f"{spec['evaluations']} timed evaluations; every measurement a fresh process.", "",
        "| measurement | seconds | peak RSS MiB |", "|---|---|---|",
        *(f"| {what} | {seconds} | {rss} |" for what, seconds, rss in rows(record)), "",
        f"A merge takes as long as {summary['merge_over_evaluation']:.2f} evaluations, a grid point as long as "
        f"{summary['merge_load_over_evaluation']:.2f}. The search holds the model "
        f"({search['model_bytes'] / MIB:.0f} MiB) and the compact pruned task vectors "
        f"({search['compact_bytes'] / MIB:.0f} MiB).",
    ]
    return "\n".join(lines) + "\n"


def write_report(record: dict, path: Path, command: Optional[str]) -> str:
    """``path`` with the suffix ``.md``: the table of the record stored at ``path`` (returned)."""
    text = markdown(record, command)
    path.with_suffix(".md").write_text(text)
    return text


def main(argv=None) -> None:
    redraw("python -m benchmarks.search_cost.report", __doc__,
           lambda record, path, _: write_report(record, path, regenerate_command(record, path.stem)), argv)


if __name__ == "__main__":
    main()
