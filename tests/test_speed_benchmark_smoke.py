"""The speed benchmark's plumbing on tiny shapes (the real runs: benchmarks/speed/README.md)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

# Benchmark runs: the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

SPEED = Path(__file__).parents[1] / "benchmarks" / "speed"


def load(name):
    """A benchmark script as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"speed_{name}", SPEED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_runs_mergekit_yaml_and_writes_results(tmp_path):
    out = tmp_path / "out"
    load("run").main(["--small", "--layers", "2", "--repeats", "1", "--skip-startup",
                      "--methods", "task_arithmetic,cabs@64", "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    assert list(result["rows"]) == ["io_floor", "task_arithmetic", "cabs@64"]
    assert result["rows"]["task_arithmetic"]["vs_task_arithmetic"] == 1.0
    assert result["rows"]["io_floor"]["vs_io_floor"] == 1.0
    for row in result["rows"].values():
        assert row["median_wall_s"] > 0 and row["peak_rss_mib"] > 0 and row["runs"] == 1
    merges = [r for r in result["runs"] if r["variant"] != "io_floor"]
    assert all(r["output_bytes"] >= 2 * result["inputs"]["params_per_model"] for r in merges)
    targets = {check["target"] for check in result["targets"]}
    assert "cabs@64 <= 1.25x task_arithmetic wall" in targets
    assert "cabs@64 peak RSS <= 1.1x task_arithmetic" in targets
    assert result["machine"]["mergekit_threads"] >= 1 and result["machine"]["mergekit"]
    assert "| `cabs@64` |" in (out / "results.md").read_text()
    assert (out / "results.png").stat().st_size > 0


def test_kernel_benchmark_reports_every_kernel(tmp_path):
    result = load("kernels").main(["--rows", "4", "--repeats", "1", "--out", str(tmp_path / "k.json")])
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert rows.keys() == result["rows"].keys()
    assert {"fp32 copy (bandwidth reference)", "n:m mask, 1 task", "CA n:m masks, 3 tasks",
            "magnitude mask, 1 task", "DARE (random) mask, 1 task",
            "fused CA merge, 3 tasks (default path)"} <= rows.keys()
    assert all(row["ns_per_element"] > 0 and row["gb_per_s"] > 0 for row in rows.values())
    assert result["target"] is None  # the 0.5 s target is stated for the full tensor only
    assert (tmp_path / "k.md").exists()


def test_profile_reports_the_kernel_among_a_merges_costliest_functions(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(SPEED))  # profile_merge imports run.py's builders
    load("profile_merge").main(["--small", "--layers", "2", "--methods", "cabs@64",
                                "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    report = (tmp_path / "profile.md").read_text()
    assert "## `cabs@64`:" in report
    assert report.count("\n| `") == 12  # the TOP rows of the one method
