"""The demo, as a new user runs it: silent merges, and three last lines whose commands run
on what it wrote (its folder rules: tests/test_output_dir.py)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from conftest import once_per_run
from mergekit_cabs.cli import main

BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}
# What MergeKit draws without --quiet: "Executing graph: 100%|████| 149/149 [00:00<00:00, ...]".
PROGRESS_BAR = re.compile(r"^[\w ]+: +\d+%\|.*\| \d+/\d+ \[")

pytestmark = pytest.mark.slow  # subprocess merges


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """``mergekit-cabs demo`` run from a fresh folder, once per test run: (that folder, the
    finished process's returncode, stdout and stderr)."""
    def run(cwd):
        result = subprocess.run([str(BIN / "mergekit-cabs"), "demo"], cwd=cwd, capture_output=True,
                                text=True, env=ENV, timeout=600)
        return {"returncode": result.returncode, "stdout": result.stdout, "stderr": result.stderr}

    cwd, result = once_per_run(tmp_path_factory, "demo", run)
    assert result["returncode"] == 0, result["stderr"][-3000:]
    return cwd, SimpleNamespace(**result)


def next_step(result, label):
    """The arguments of the demo's command line starting with ``label``."""
    line, = [x for x in result.stdout.splitlines() if x.startswith(label)]
    return shlex.split(line.removeprefix(label))


def test_the_demo_prints_its_merge_command_its_summary_and_three_next_steps(demo):
    _, result = demo
    lines = result.stdout.splitlines()
    assert result.stderr == ""  # the tiny models have a tokenizer; no deprecated key is set
    assert len(lines) == 5 and lines[0].startswith("$ ") and lines[1].startswith("cabs merged 3 fine-tunes")
    assert lines[2:] == [
        "merged model: demo-output/merged",
        "inspect its masks: mergekit-cabs inspect demo-output/cabs.yml --out demo-output/inspect",
        "search its weights: mergekit-cabs search demo-output/cabs.yml --data "
        "demo-output/calibration.jsonl --out demo-output/search",
    ]


def test_the_readmes_merge_command_runs_silently_on_the_demo_models(demo):
    cwd, _ = demo
    result = subprocess.run([str(BIN / "mergekit-yaml"), "cabs.yml", "./merged"], cwd=cwd / "demo-output",
                            capture_output=True, text=True, env=ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == ""
    printed = [p for p in re.split(r"[\r\n]", result.stderr) if p.strip()]
    assert all(PROGRESS_BAR.match(p) for p in printed), printed
    assert (cwd / "demo-output" / "merged" / "tokenizer.json").is_file()


def test_the_demos_inspect_command_runs_on_its_output(demo, monkeypatch):
    cwd, result = demo
    monkeypatch.chdir(cwd)
    args = next_step(result, "inspect its masks: mergekit-cabs ")
    run = CliRunner().invoke(main, [*args, "--quiet"])
    assert run.exit_code == 0, run.output
    assert (cwd / "demo-output" / "inspect" / "report.json").is_file()


def test_the_demos_search_command_runs_on_its_calibration_text(demo, monkeypatch):
    cwd, result = demo
    monkeypatch.chdir(cwd)
    args = next_step(result, "search its weights: mergekit-cabs ")
    run = CliRunner().invoke(main, [*args, "--quiet", "--evaluations", "4"])  # as printed, but short
    assert run.exit_code == 0, run.output
    assert (cwd / "demo-output" / "search" / "merge.yml").is_file()
