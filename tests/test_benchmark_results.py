"""Every committed results table of the speed and search cost benchmarks names, on its first
line, the one command that makes it again, and a table drawn from a JSON is exactly what the
benchmark's renderer draws from the committed JSON."""

import json
from pathlib import Path

import pytest

from benchmarks.search_cost import report as search_cost_report
from benchmarks.search_cost.presets import PRESETS as SEARCH_COST_PRESETS
from benchmarks.search_cost.presets import regenerate_command
from benchmarks.speed import kernels_report
from benchmarks.speed import report as speed_report
from benchmarks.speed.presets import PRESETS as SPEED_PRESETS

ROOT = Path(__file__).resolve().parents[1]
SPEED = ROOT / "benchmarks" / "speed" / "results"
SEARCH_COST = ROOT / "benchmarks" / "search_cost" / "results"
TABLES = sorted([*SPEED.glob("*.md"), *SEARCH_COST.glob("*.md")])


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


@pytest.mark.parametrize("table", TABLES, ids=relative)
def test_each_committed_table_names_the_command_that_makes_it_again_first(table):
    assert table.read_text().startswith("Regenerate: `python -m benchmarks.")


@pytest.mark.parametrize("stem", [preset.stem for preset in SPEED_PRESETS.values()])
def test_each_speed_preset_table_is_drawn_from_its_committed_json(stem):
    result = json.loads((SPEED / f"{stem}.json").read_text())
    assert speed_report.markdown(result, stem) == (SPEED / f"{stem}.md").read_text()


@pytest.mark.parametrize("path", sorted(SPEED.glob("kernels*.json")), ids=relative)
def test_each_kernel_table_is_drawn_from_its_committed_json(path):
    assert kernels_report.markdown(json.loads(path.read_text()), path) == path.with_suffix(".md").read_text()


@pytest.mark.parametrize("label", [preset.label for preset in SEARCH_COST_PRESETS.values()])
def test_each_search_cost_preset_table_is_drawn_from_its_committed_json(label):
    record = json.loads((SEARCH_COST / f"{label}.json").read_text())
    expected = search_cost_report.markdown(record, regenerate_command(record, label))
    assert expected == (SEARCH_COST / f"{label}.md").read_text()


def test_a_speed_result_made_without_a_preset_names_no_preset_command():
    result = json.loads((SPEED / "results.json").read_text())
    assert not speed_report.markdown({**result, "preset": None}, "results").startswith("Regenerate:")
