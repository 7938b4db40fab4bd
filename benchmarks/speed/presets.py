"""The whole-merge benchmark's committed runs: each a preset of ``run.py`` and a file stem.

``python -m benchmarks.speed.run --preset NAME`` makes ``<stem>.json``, ``<stem>.md`` and
``<stem>-<family>.png`` in ``benchmarks/speed/results``; the table names that command on its
first line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from .variants import OURS


@dataclass(frozen=True)
class Preset:
    """The arguments of one committed run and the stem of its result files."""

    stem: str
    args: tuple[str, ...]
    about: str


PRESETS = {
    "full": Preset("results", (), "every row of both families, 1 run per row and 3 of the focus rows; 12 min on the machine below"),
    "ab": Preset("results-ab",
                 ("--methods", ",".join(("task_arithmetic",) + OURS), "--repeats", "2", "--focus-repeats", "3",
                  "--skip-startup"),
                 "task_arithmetic and ours only, 2 runs per row and 3 of the focus rows; 14 min on the machine below"),
}


def preset_command(name: str) -> str:
    return f"python -m benchmarks.speed.run --preset {name}"


def preset_of(stem: str) -> Optional[str]:
    """The preset whose result files have this stem, if any."""
    return next((name for name, preset in PRESETS.items() if preset.stem == stem), None)
