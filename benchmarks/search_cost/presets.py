"""The search cost benchmark's committed runs: each a preset of ``run.py`` and a result label.

``python -m benchmarks.search_cost.run --preset NAME`` writes ``<label>.json`` and
``<label>.md`` into ``benchmarks/search_cost/results``; the table names that command on its
first line.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Preset:
    """The arguments of one committed run and the label of its result files."""

    label: str
    args: tuple[str, ...]


PRESETS = {
    # SmolLM2-135M-Instruct and 2 synthetic descendants, cabs 8:32, 2 tasks of 32 texts.
    "smollm2": Preset("smollm2", ()),
    # The causal-LM quality regime's base, seed-1 fine-tunes and calibration files, cabs 64:256.
    "finetunes": Preset("smollm2_finetunes", ("--from-quality-work", "--density", "0.25", "--block-size", "256",
                                              "--max-length", "128", "--batch-size", "16")),
}


def preset_command(name: str) -> str:
    return f"python -m benchmarks.search_cost.run --preset {name}"


def regenerate_command(record: dict, label: str) -> Optional[str]:
    """The command that makes this record again, where a preset made it (recorded in the
    record; records written before presets existed are known by their label)."""
    name = record["preset"] if "preset" in record else next(
        (name for name, preset in PRESETS.items() if preset.label == label), None)
    return preset_command(name) if name else None
