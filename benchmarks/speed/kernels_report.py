"""The kernel benchmark's table, ``<name>.md`` beside ``<name>.json``, drawn from the JSON alone:

    python -m benchmarks.speed.kernels_report benchmarks/speed/results/kernels.json
"""

from __future__ import annotations

import shlex
from pathlib import Path

from ..redraw import redraw

ROOT = Path(__file__).resolve().parents[2]


def shown_path(path: Path) -> str:
    """``path`` relative to the repository root where it lies inside it."""
    path = path.resolve()
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else str(path)


def regenerate_command(result: dict, path: Path) -> str:
    """The ``benchmarks.speed.kernels`` command that measures ``result`` again into ``path``."""
    return shlex.join(["python", "-m", "benchmarks.speed.kernels", "--threads", str(result["threads"]),
                       "--repeats", str(result["repeats"]), "--rows", str(result["shape"][0]),
                       "--inputs", result["inputs"], "--device", result["device"], "--out", shown_path(path)])


def markdown(result: dict, path: Path) -> str:
    """The command that makes it again, the conditions, the table of kernels, the targets."""
    lines = [f"Regenerate: `{regenerate_command(result, path)}`.", "",
             f"One {result['shape'][0]}x{result['shape'][1]} tensor ({result['inputs']} inputs), {result['device']}, "
             f"{result['threads']} threads, "
             f"density {result['density']}, block {result['block_size']}; {result['cpu']}; torch {result['torch']}. "
             "GB/s counts inputs read + outputs written once.", "",
             "| kernel | best s | median s | ns/element | ns/element/task | GB/s | x fp32 copy |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {name} | {row['best_s']:.3f} | {row['median_s']:.3f} | {row['ns_per_element']:.2f} | "
              f"{row['ns_per_element_task']:.2f} | {row['gb_per_s']:.2f} | {row['x_copy']:.1f} |"
              for name, row in result["rows"].items()]
    for target in result["targets"] or []:
        lines += ["", f"Target: {target['target']}: {target['ns_per_element_task']:.2f}, "
                  f"{'met' if target['met'] else '**missed**'}."]
    return "\n".join(lines) + "\n"


def write_report(result: dict, path: Path) -> str:
    """``path`` with the suffix ``.md``: the table of the result stored at ``path`` (returned)."""
    text = markdown(result, path)
    path.with_suffix(".md").write_text(text)
    return text


def main(argv=None) -> None:
    redraw("python -m benchmarks.speed.kernels_report", __doc__, lambda result, path, _: write_report(result, path),
           argv)


if __name__ == "__main__":
    main()
