"""A local model path that does not exist, or holds no weights, is named with the fix before
MergeKit reads any model (the merge itself: tests/test_bad_inputs.py and, on every host,
tests/test_hosts.py; here the rules, inspect, search and MergeKit's own methods)."""

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from conftest import run_mergekit_yaml_in_process, write_config
from mergekit_cabs.cli import main
from mergekit_cabs.validation import MergeConfigError, check_model_path, looks_local


@pytest.mark.parametrize("path", ["/abs/model", "./model", "../model", "~/model", ".", "a/b/c"])
def test_absolute_relative_home_and_deep_paths_look_local(path):
    assert looks_local(path)


def test_a_hub_id_looks_local_only_if_its_first_part_is_a_folder_here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not looks_local("mistralai/Mistral-7B-v0.1")
    assert not looks_local("gpt2")
    (tmp_path / "mistralai").mkdir()
    assert looks_local("mistralai/Mistral-7B-v0.1")


def test_a_hub_id_is_not_checked():
    check_model_path("cabs", "mistralai/Mistral-7B-v0.1")


def test_a_missing_relative_path_is_named_with_the_folder_it_is_read_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    with pytest.raises(MergeConfigError, match="model path models/finetuned_9 does not exist "
                       rf"\(relative to the current folder {tmp_path}\)"):
        check_model_path("cabs", "models/finetuned_9")


def test_a_path_under_home_says_that_mergekit_does_not_expand_it():
    with pytest.raises(MergeConfigError, match="MergeKit does not expand `~`"):
        check_model_path("cabs", "~/no-such-model-folder-here")


def test_a_folder_without_weights_names_the_model_folders_it_holds(tiny_family):
    base, _ = tiny_family
    with pytest.raises(MergeConfigError, match=r"holds no weights: .* \(it holds the model folders "
                       "base, finetuned_1, finetuned_2\\)"):
        check_model_path("cabs", str(Path(base).parent))


def test_a_file_is_not_a_model_folder(tiny_family):
    base, _ = tiny_family
    with pytest.raises(MergeConfigError, match="is a file, not a model folder"):
        check_model_path("cabs", str(Path(base) / "config.json"))


def test_a_lora_folder_needs_only_to_exist(tmp_path):
    check_model_path("cabs", str(tmp_path), adapter=True)
    with pytest.raises(MergeConfigError, match="does not exist"):
        check_model_path("cabs", str(tmp_path / "lora"), adapter=True)


def missing_model_config(tiny_family, path, method="cabs"):
    base, models = tiny_family
    config = {"merge_method": method, "base_model": base,
              "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.25}}
                         for m in (models[0], str(Path(path)))]}
    if method == "cabs":
        config["parameters"] = {"block_size": 16}
    return yaml.safe_dump(config, sort_keys=False)


def test_inspect_names_a_missing_model_folder_in_one_line(tiny_family, tmp_path):
    missing = Path(tiny_family[0]).parent / "finetuned_9"
    (tmp_path / "c.yml").write_text(missing_model_config(tiny_family, missing))
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "c.yml"), "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert result.output == f"Error: cabs: model path {missing} does not exist. Correct it in the " \
        "config (MergeKit would take it for a Hugging Face Hub id and fail).\n"


def test_search_names_a_missing_base_folder_before_it_loads_the_tokenizer(tiny_family, tmp_path):
    base, models = tiny_family
    missing = str(Path(base).parent / "base_9")
    write_config(tmp_path / "c.yml", "cabs", missing, models[:2], [{"density": 0.25}] * 2, {"block_size": 16})
    (tmp_path / "d.jsonl").write_text('{"text": "w3 w4 w5"}\n')
    result = CliRunner().invoke(main, ["search", str(tmp_path / "c.yml"), "--data", str(tmp_path / "d.jsonl"),
                                       "--out", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert f"model path {missing} does not exist" in result.output
    assert "tokenizer" not in result.output


def test_mergekits_own_methods_keep_mergekits_behaviour_for_a_missing_path(tiny_family, tmp_path):
    missing = Path(tiny_family[0]).parent / "finetuned_9"
    (tmp_path / "c.yml").write_text(missing_model_config(tiny_family, missing, "task_arithmetic"))
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code != 0
    assert "does not exist. Correct it" not in error
