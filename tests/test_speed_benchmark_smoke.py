"""The speed benchmark's plumbing on tiny shapes (the real runs: benchmarks/speed/README.md)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import benchmarks.speed.kernels as speed_kernels
import benchmarks.speed.profile_merge as profile_merge
import benchmarks.speed.run as speed_run
from benchmarks.speed import variants
from benchmarks.speed.inputs import Checkpoints
from mergekit_cabs.kernels import TORCH_KERNELS_ENV

# Benchmark runs: the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

SPEED = Path(speed_run.__file__).parent


@pytest.mark.benchmark
def test_speed_benchmark_runs_mergekit_yaml_and_writes_results(tmp_path):
    out = tmp_path / "out"
    speed_run.main(["--small", "--layers", "2", "--repeats", "1", "--focus-repeats", "1", "--skip-startup",
                      "--methods", "task_arithmetic,cabs:torch",
                      "--work", str(tmp_path / "work"), "--out", str(out)])
    result = json.loads((out / "results.json").read_text())
    seven_b, large_vocab = result["families"]
    assert large_vocab["inputs"]["dims"]["vocab"] > seven_b["inputs"]["dims"]["vocab"]
    for family in (seven_b, large_vocab):
        rows = family["rows"]
        assert list(rows) == ["io_floor", "task_arithmetic", "cabs@64:torch"]
        assert rows["task_arithmetic"]["vs_task_arithmetic"] == 1.0
        assert rows["io_floor"]["vs_io_floor"] == 1.0
        for row in rows.values():
            assert row["median_wall_s"] > 0 and row["peak_rss_mib"] > 0
        merges = [r for r in family["runs"] if r["variant"] != "io_floor"]
        assert all(r["output_bytes"] >= 2 * family["inputs"]["params_per_model"] for r in merges)
        assert all(0 < share < 1 for share in family["inputs"]["zero_share"])
        targets = {check["target"] for check in family["targets"]}
        assert not any(t.startswith("cabs@64:torch <=") for t in targets)  # no wall target off the default path
        assert "cabs@64:torch peak RSS <= 1.1x task_arithmetic" in targets
    assert result["machine"]["mergekit_threads"] >= 1 and result["machine"]["mergekit"]
    report = (out / "results.md").read_text()
    assert "| `cabs@64:torch` |" in report and "## Llama-3-shaped" in report
    assert not report.startswith("Regenerate:")  # no preset: the Command line says how it was made
    assert (out / "results-7b.png").stat().st_size > 0


def test_speed_benchmark_repeats_focus_rows_of_the_first_family_only():
    args = speed_run.parse_args(["--small", "--layers", "1", "--repeats", "1", "--focus-repeats", "3"])
    seven_b, large_vocab = speed_run.families(args)
    assert seven_b.runs_of("cabs@64", 1) == 3 and seven_b.runs_of("nm_ties@64", 1) == 1
    assert large_vocab.runs_of("cabs@64", 1) == 1
    assert "ties" in seven_b.variants and "ties" not in large_vocab.variants
    assert "ca_magnitude_linear:torch" in large_vocab.variants


def test_speed_benchmark_forces_the_torch_path_only_on_torch_rows():
    assert variants.expand_methods("cabs,nm_ties@256,cabs:torch") == ["cabs@64", "nm_ties@256", "cabs@64:torch"]
    assert variants.variant_env("cabs@64:torch", {})[TORCH_KERNELS_ENV] == "1"
    assert TORCH_KERNELS_ENV not in variants.variant_env("cabs@64", {})
    assert variants.method_config("cabs@64:torch", Checkpoints("b", ["f"], 1, 1, 2, [0.4]))["merge_method"] == "cabs"


def test_a_speed_preset_sets_its_arguments_and_result_stem_and_later_flags_override_it():
    args = speed_run.parse_args(["--preset", "ab", "--repeats", "5"])
    assert args.stem == "results-ab" and args.skip_startup and args.focus_repeats == 3
    assert args.repeats == 5
    assert args.methods.split(",") == ["task_arithmetic", *variants.OURS]
    assert speed_run.parse_args([]).stem == "results"


def test_kernel_benchmark_reports_every_kernel(tmp_path):
    result = speed_kernels.main(["--rows", "4", "--repeats", "1", "--out", str(tmp_path / "k.json")])
    rows = json.loads((tmp_path / "k.json").read_text())["rows"]
    assert rows.keys() == result["rows"].keys()
    assert {"fp32 copy (bandwidth reference)", "n:m mask, 1 task", "CA n:m masks, 3 tasks",
            "magnitude mask, 1 task", "DARE (random) mask, 1 task",
            "fused CA merge, 3 tasks (default path)"} <= rows.keys()
    assert all(row["ns_per_element"] > 0 and row["gb_per_s"] > 0 for row in rows.values())
    assert result["targets"] is None  # the ns targets are stated for the full tensor only
    assert (tmp_path / "k.md").exists()


def test_profile_reports_the_kernel_among_a_merges_costliest_functions(tmp_path):
    profile_merge.main(["--small", "--layers", "2", "--methods", "cabs@64",
                                "--work", str(tmp_path / "work"), "--out", str(tmp_path)])
    report = (tmp_path / "profile.md").read_text()
    assert report.startswith("Regenerate: `python -m benchmarks.speed.profile_merge --small ")
    assert "## `cabs@64`:" in report
    assert report.count("\n| `") == 12  # the TOP rows of the one method


def test_gpu_check_without_an_output_folder_prints_its_usage(tmp_path):
    check = subprocess.run(["bash", str(SPEED / "gpu_check.sh")], capture_output=True, text=True)
    assert check.returncode == 64 and "usage:" in check.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a CUDA device")
def test_gpu_check_without_cuda_says_so_and_runs_nothing(tmp_path):
    check = subprocess.run(["bash", str(SPEED / "gpu_check.sh"), str(tmp_path / "out")], capture_output=True,
                           text=True, env={**os.environ, "PYTHON": sys.executable})
    assert check.returncode == 69 and "no CUDA device" in check.stderr
    assert not (tmp_path / "out").exists()
