"""The speed benchmark's plumbing on tiny shapes (the real run is benchmarks/speed/run.py)."""

import importlib.util
import json
import sys
from pathlib import Path

SPEED = Path(__file__).parents[1] / "benchmarks" / "speed"


def load(name):
    spec = importlib.util.spec_from_file_location(f"speed_{name}", SPEED / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_speed_benchmark_writes_rows_ratios_and_target_checks(tmp_path):
    run = load("run")
    run.main(["--small", "--params", "2e5", "--repeats", "1", "--methods", "task_arithmetic,cabs@64",
              "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out")])
    result = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(result["rows"]) == {"io_floor", "task_arithmetic", "cabs@64"}
    assert result["rows"]["task_arithmetic"]["vs_task_arithmetic"] == 1.0
    assert all(row["median_wall_s"] > 0 and row["peak_rss_mib"] > 0 for row in result["rows"].values())
    assert any(check["target"].startswith("cabs@64 <= 1.25x") for check in result["targets"])
    assert "| `cabs@64` |" in (tmp_path / "out" / "results.md").read_text()
    assert (tmp_path / "out" / "results.png").stat().st_size > 0


def test_kernel_benchmark_reports_every_kernel(tmp_path):
    load("kernel_bench").main(["--rows", "4", "--repeats", "1", "--out", str(tmp_path / "k.json")])
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert "fp32 copy (bandwidth reference)" in rows
    assert all(row["ns_per_element"] > 0 for row in rows.values())
