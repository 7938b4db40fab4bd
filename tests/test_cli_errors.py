"""Our commands print a wrong input as one line with exit status 2; --debug shows the
traceback; a fault of the program keeps its traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import write_config
from mergekit_cabs.cli import main
from mergekit_cabs.cli_errors import reported
from mergekit_cabs.validation import MergeConfigError

MERGEKIT_CABS = str(Path(sys.executable).with_name("mergekit-cabs"))
DENSITY_ERROR = "Error: cabs: invalid `density` for model"


@pytest.fixture
def dense_config(tiny_family, tmp_path):
    """A cabs config whose second model has density 1.5 (no `dtype:`, whose deprecation line
    transformers prints for MergeKit)."""
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabs", base, models[:2], [{"density": 0.25}, {"density": 1.5}],
                 {"block_size": 16}, dtype=None)
    return tmp_path / "c.yml"


def merge(config, *flags):
    return CliRunner().invoke(main, ["merge", str(config), str(Path(config).parent / "out"),
                                     "--no-copy-tokenizer", "--quiet", *flags])


def test_merge_prints_our_error_as_one_line_with_status_2(dense_config):
    result = merge(dense_config)
    assert result.exit_code == 2
    assert result.output.startswith(DENSITY_ERROR)
    assert "got 1.5" in result.output
    assert "Traceback" not in result.output
    assert result.output.count("Error:") == 1


def test_merge_with_debug_raises_the_error_with_its_traceback(dense_config):
    result = merge(dense_config, "--debug")
    assert isinstance(result.exception, MergeConfigError)
    assert "got 1.5" in str(result.exception)


def test_an_unknown_method_is_named_with_the_valid_names(tiny_family, tmp_path):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabz", base, models[:2], [{"density": 0.25}] * 2)
    result = merge(tmp_path / "c.yml")
    assert result.exit_code == 2
    assert "unknown merge_method 'cabz'. Did you mean 'cabs'?" in result.output
    assert "This package's methods: cabs, cabs_ties, nm_linear" in result.output
    assert "task_arithmetic" in result.output
    assert result.output.count("\n") == 1


def test_mergekits_config_schema_error_is_one_line(tmp_path):
    (tmp_path / "c.yml").write_text("merge_method: cabs\nmodels: 5\n")
    result = merge(tmp_path / "c.yml")
    assert result.exit_code == 2
    assert result.output == (f"Error: {tmp_path / 'c.yml'}: MergeKit's config schema refuses models: "
                             "Input should be a valid list (got 5)\n")


def test_a_schema_error_over_a_union_names_the_field_they_share(tiny_family, tmp_path):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabs", base, models[:1], [{"density": {"x": 1}}])
    result = merge(tmp_path / "c.yml")
    assert result.exit_code == 2
    assert "refuses models.0.parameters.density: {'x': 1} is none of the forms it accepts" in result.output


def test_a_yaml_syntax_error_is_one_line_with_its_position(tmp_path):
    (tmp_path / "c.yml").write_text("merge_method: [cabs\nmodels: 5\n")
    result = merge(tmp_path / "c.yml")
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {tmp_path / 'c.yml'}: not valid YAML: ")
    assert "(line 2, column 7)" in result.output


def test_a_missing_config_file_is_one_line(tmp_path):
    result = merge(tmp_path / "none.yml")
    assert result.exit_code == 2
    assert result.output == f"Error: config file {tmp_path / 'none.yml'} does not exist; pass the path " \
        "of a mergekit-yaml config.\n"


def test_inspect_reports_an_input_error_with_status_2(dense_config):
    result = CliRunner().invoke(main, ["inspect", str(dense_config), "--out", str(dense_config.parent / "r")])
    assert result.exit_code == 2
    assert result.output.startswith(DENSITY_ERROR)


def test_search_reports_an_input_error_with_status_2(tiny_family, tmp_path):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "task_arithmetic", base, models[:2], [{"weight": 1.0}] * 2)
    result = CliRunner().invoke(main, ["search", str(tmp_path / "c.yml"), "--data", "d.jsonl",
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert result.output.startswith(f"Error: {tmp_path / 'c.yml'}: merge_method 'task_arithmetic' is not one")


def test_a_fault_of_the_program_keeps_its_traceback():
    with pytest.raises(KeyError), reported(debug=False):
        raise KeyError("a bug")


@pytest.mark.slow
def test_the_console_script_writes_one_line_to_stderr(dense_config):
    result = subprocess.run([MERGEKIT_CABS, "merge", str(dense_config), str(dense_config.parent / "out"),
                             "--no-copy-tokenizer", "--quiet"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert result.returncode == 2
    assert result.stderr.startswith(DENSITY_ERROR)
    assert result.stderr.count("\n") == 1, result.stderr
    assert not (dense_config.parent / "out").exists()

