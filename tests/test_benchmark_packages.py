"""The benchmarks are packages: run as ``python -m benchmarks.<suite>.<tool>`` from the
repository root and imported by their full names, so two tools named ``run`` cannot clash."""

import subprocess
import sys
from pathlib import Path

import pytest

import benchmarks.quality.run as quality_run
import benchmarks.speed.run as speed_run

ROOT = Path(__file__).resolve().parents[1]
SUITES = (ROOT / "benchmarks" / "speed", ROOT / "benchmarks" / "quality")


def test_both_run_modules_load_under_their_own_names_and_no_bare_run_exists():
    assert (speed_run.__name__, quality_run.__name__) == ("benchmarks.speed.run", "benchmarks.quality.run")
    assert "run" not in sys.modules
    assert not {Path(p).resolve() for p in sys.path if p} & set(SUITES)


def test_no_benchmark_source_changes_the_import_path():
    sources = [path for suite in SUITES for path in suite.glob("*.py")]
    assert sources
    assert [path.name for path in sources if "sys.path" in path.read_text()] == []


@pytest.mark.slow  # fresh interpreters
@pytest.mark.parametrize("module", ["benchmarks.speed.run", "benchmarks.quality.run",
                                    "benchmarks.quality.causal_lm.run"])
def test_a_benchmark_runs_as_a_module_from_the_repository_root(module):
    result = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: python -m {module} ")
