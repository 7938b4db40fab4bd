"""The README states what the code and CI do."""

import re
from pathlib import Path

from mergekit_cabs.methods import method_table_markdown

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def bash_blocks(text):
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def test_method_table_is_the_one_the_code_registers():
    table = README.split("<!-- method-table")[1].split("-->", 1)[1].split("<!-- /method-table")[0]
    assert table.strip() == method_table_markdown()


def test_first_two_commands_are_demo_then_tests():
    demo, tests = bash_blocks(README)[:2]
    assert demo.strip().endswith("mergekit-cabs demo")
    assert tests.strip().endswith("python -m pytest -q -n auto")


def test_ci_runs_the_readme_test_command():
    tests = bash_blocks(README)[1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    after_venv = tests.split(". .venv/bin/activate && ", 1)[1]
    assert after_venv in ci


def test_readme_cites_the_paper_as_the_model_card_does():
    from mergekit_cabs.card import CABS_PAPER

    assert CABS_PAPER.bibtex in README


def test_ci_lints_with_ruff():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "\nruff check .\n" in ci


def test_ci_runs_the_benchmark_tier_that_the_readme_command_leaves_out():
    pyproject = (ROOT / "pyproject.toml").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "-m 'not benchmark'" in pyproject.split("addopts = ", 1)[1].split("\n", 1)[0]
    assert "\npython -m pytest -q -n auto -m benchmark\n" in ci
