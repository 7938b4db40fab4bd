"""The model card of a merge with our methods: MergeKit's card plus tags, what was done,
papers and BibTeX; MergeKit's own methods keep MergeKit's card; offline merges of relative
``models/base`` paths do not crash."""

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from huggingface_hub import ModelCard

from conftest import MERGEKIT_YAML, once_per_run
from mergekit.config import MergeConfiguration

from mergekit_cabs import register_all
from mergekit_cabs.methods import METHODS_BY_NAME

WEIGHTS = [1.2, 0.9, 1.1]
DENSITIES = [0.25, 0.3, 0.4]  # n:m at block_size 20: 5:20, 6:20, 8:20
RELATIVE_MODELS = ["models/finetuned_1", "models/finetuned_2", "models/finetuned_3"]


def config_dict(method, base, models, shared=None, densities=DENSITIES):
    return {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": w, "density": d}}
                   for m, w, d in zip(models, WEIGHTS, densities)],
        "parameters": shared or {},
        "dtype": "float32",
    }


def card_in_process(config):
    """The card MergeKit's run_merge would write, through the (hooked) name it calls."""
    import mergekit.merge

    register_all()
    text = yaml.safe_dump(config, sort_keys=False)
    return mergekit.merge.generate_card(
        config=MergeConfiguration.model_validate(config), config_yaml=text, name="merged")


@pytest.fixture(scope="module")
def relative_path_merge(tiny_family, tmp_path_factory):
    """Plain mergekit-yaml, offline, cabs_ties over `models/...` paths relative to its cwd:
    (its exit status and stderr, the card's path, the config)."""
    config = config_dict("cabs_ties", "models/base", RELATIVE_MODELS,
                         {"block_size": 20, "lambda": 0.9, "normalize": True})

    def merge(work):
        (work / "models").symlink_to(Path(tiny_family[0]).parent, target_is_directory=True)
        (work / "cabs_ties.yml").write_text(yaml.safe_dump(config, sort_keys=False))
        result = subprocess.run(
            [MERGEKIT_YAML, "cabs_ties.yml", "merged", "--no-copy-tokenizer", "--quiet"],
            cwd=work, capture_output=True, text=True, timeout=300,
            env={**os.environ, "HF_HUB_OFFLINE": "1"},
        )
        return {"returncode": result.returncode, "stderr": result.stderr}

    work, result = once_per_run(tmp_path_factory, "card-relative-merge", merge)
    return SimpleNamespace(**result), work / "merged" / "README.md", config


@pytest.fixture(scope="module")
def merged_card(relative_path_merge):
    result, readme, _ = relative_path_merge
    assert result.returncode == 0, result.stderr[-3000:]
    return ModelCard.load(readme)


@pytest.mark.slow
def test_relative_local_paths_merge_offline(relative_path_merge):
    result, readme, _ = relative_path_merge
    assert result.returncode == 0, result.stderr[-3000:]
    assert "OfflineModeIsEnabled" not in result.stderr
    assert readme.read_text().startswith("---\n")


@pytest.mark.slow
def test_card_adds_our_tags_to_mergekits(merged_card):
    assert merged_card.data.tags == ["mergekit", "merge", "cabs", "model-merging",
                                     "task-arithmetic"]
    assert merged_card.data.library_name == "transformers"


@pytest.mark.slow
def test_a_local_base_is_named_by_its_folder_in_the_front_matter(merged_card):
    assert merged_card.data.base_model == ["base"]  # the local fine-tunes are left out, as MergeKit does


@pytest.mark.slow
def test_card_links_mergekits_current_repository(merged_card):
    assert "[mergekit](https://github.com/arcee-ai/mergekit)" in merged_card.text
    assert "cg123" not in merged_card.text


@pytest.mark.slow
def test_card_keeps_mergekits_models_list_and_yaml(merged_card, relative_path_merge):
    _, _, config = relative_path_merge
    text = merged_card.text
    assert "using models/base as a base" in text
    for model in RELATIVE_MODELS:
        assert f"* {model}\n" in text
    assert yaml.safe_dump(config, sort_keys=False) in text


@pytest.mark.slow
def test_card_names_method_with_cabs_and_ties_paper_links(merged_card):
    text = merged_card.text
    assert "[CABS with TIES](https://arxiv.org/abs/2503.01874) merge method" in text
    assert "the row \"TIES + CABS\"" in text
    assert "(https://arxiv.org/abs/2306.01708)" in text
    assert "2311.03099" not in text  # no DARE part in cabs_ties


@pytest.mark.slow
def test_card_states_each_models_weight_density_and_nm_in_merge_order(merged_card):
    text = merged_card.text
    clauses = [f"`{m}` (weight {w:g}, density {d:g} → {n}:20)"
               for m, w, d, n in zip(RELATIVE_MODELS, WEIGHTS, DENSITIES, (5, 6, 8))]
    positions = [text.index(c) for c in clauses]
    assert positions == sorted(positions)
    assert ("conflict-aware, pruned first to last: `models/finetuned_1`, `models/finetuned_2`, "
            "`models/finetuned_3` (the order of `models:`)") in text
    assert ("In every tensor the keep counts fit the block (Σ nᵢ ≤ m), so the kept positions "
            "of different models are disjoint") in text


@pytest.mark.slow
def test_card_states_combine_rule_lambda_and_normalize(merged_card):
    text = merged_card.text
    assert "combined TIES-style" in text
    assert "divided by the sum of the agreeing models' weights (`normalize: true`)" in text
    assert "scaled by λ = 0.9" in text


@pytest.mark.slow
def test_card_ends_with_bibtex_of_cabs_and_ties(merged_card):
    text = merged_card.text.rstrip()
    citation = text[text.index("## Citation"):]
    assert citation.endswith("}\n```")
    assert "@inproceedings{yang2025cabs," in citation
    assert "@inproceedings{yadav2023ties," in citation
    assert "@inproceedings{yu2024dare," not in citation


def test_hub_ids_are_listed_as_base_models_and_linked():
    config = config_dict("cabs", "mistralai/Mistral-7B-v0.1",
                         ["PetroGPT/WestSeverus-7B-DPO-v2", "BarryFutureman/WildMarcoroni-Variant1-7B"],
                         {"block_size": 256})
    card = ModelCard(card_in_process(config))
    assert sorted(card.data.base_model) == sorted(
        ["mistralai/Mistral-7B-v0.1", "PetroGPT/WestSeverus-7B-DPO-v2",
         "BarryFutureman/WildMarcoroni-Variant1-7B"])
    assert "[mistralai/Mistral-7B-v0.1](https://huggingface.co/mistralai/Mistral-7B-v0.1)" in card.text
    assert "(weight 1.2, density 0.25 → 64:256)" in card.text


HUB_MODELS = [f"org/tuned-{i}" for i in (5, 2, 7, 1, 6, 3)]  # a set keeps this order 1 time in 720


def hub_config(method="cabs", models=HUB_MODELS):
    return {"merge_method": method, "base_model": "org/base",
            "models": [{"model": m, "parameters": {"density": 0.1}} for m in models],
            "parameters": {"block_size": 16}}


def test_models_merged_lists_the_models_in_the_configs_order():
    card = card_in_process(hub_config())
    listed = card.split("### Models Merged")[1].split("###")[0]
    bullets = [line for line in listed.split("\n") if line.startswith("* ")]
    assert bullets == [f"* [{m}](https://huggingface.co/{m})" for m in HUB_MODELS]


def test_the_front_matter_lists_the_base_then_the_models_in_the_configs_order():
    card = ModelCard(card_in_process(hub_config()))
    assert card.data.base_model == ["org/base", *HUB_MODELS]


def test_the_conflict_aware_order_is_stated_first_to_last():
    text = card_in_process(hub_config())
    assert "pruned first to last: " + ", ".join(f"`{m}`" for m in HUB_MODELS) + " (the order" in text


def test_a_method_without_conflict_aware_pruning_states_no_order():
    text = card_in_process(hub_config("nm_linear", HUB_MODELS[:2]))
    assert "pruned first to last" not in text
    assert "independently for each model" in text


def test_dare_variant_cites_dare_and_states_rescale():
    config = config_dict("ca_dare_linear", "/m/base", ["/m/a", "/m/b"], densities=[0.6, 0.6])
    card = ModelCard(card_in_process(config))
    assert "(https://arxiv.org/abs/2311.03099)" in card.text
    assert "@inproceedings{yu2024dare," in card.text
    assert "rescaled by 1/density" in card.text
    assert "the densities sum to more than 1: nowhere" in card.text


def test_gradient_parameter_is_reported_as_varying_by_tensor():
    config = config_dict("nm_linear", "/m/base", ["/m/a"], {"block_size": 16})
    config["models"][0]["parameters"]["density"] = [0.25, 0.5]
    card = ModelCard(card_in_process(config))
    assert "`/m/a` (weight 1.2, density varies by tensor)" in card.text
    assert "independently for each model" in card.text


def test_builtin_method_card_is_mergekits_unchanged():
    from mergekit.card import generate_card as mergekit_generate_card

    config = config_dict("task_arithmetic", "/m/base", ["/m/a", "/m/b"])
    for model in config["models"]:
        del model["parameters"]["density"]
    text = yaml.safe_dump(config, sort_keys=False)
    want = mergekit_generate_card(MergeConfiguration.model_validate(config), text, "merged")
    assert card_in_process(config) == want


def test_card_is_extended_once_however_often_registration_runs():
    import mergekit.merge

    register_all()
    extended = mergekit.merge.generate_card
    register_all()
    assert mergekit.merge.generate_card is extended
    assert not getattr(extended.__wrapped__, "__mergekit_cabs__", False)


def test_every_method_has_a_card_paragraph():
    for info in METHODS_BY_NAME.values():
        config = config_dict(info.name, "/m/base", ["/m/a", "/m/b"], densities=[0.25, 0.25])
        text = ModelCard(card_in_process(config)).text
        assert f"`{info.name}` ({info.pretty_name}, the row \"{info.paper_row}\"" in text
        assert "scaled by λ = 1" in text


def test_the_norm_rescale_is_stated_with_its_factor_and_norm():
    config = config_dict("cabs", "/m/base", ["/m/a", "/m/b"], {"block_size": 16, "rescale": "l1"})
    card = ModelCard(card_in_process(config))
    assert "multiplied by wᵢ · cᵢ" in card.text and "Σᵢ wᵢ · cᵢ · (Mᵢ ⊙ τᵢ)" in card.text
    assert "cᵢ = ‖τᵢ‖_1 / ‖Mᵢ ⊙ τᵢ‖_1 per tensor" in card.text
    plain = ModelCard(card_in_process(config_dict("cabs", "/m/base", ["/m/a", "/m/b"], {"block_size": 16})))
    assert "cᵢ" not in plain.text


def test_a_config_written_by_search_gets_a_card_saying_how_its_weights_were_found():
    from mergekit_cabs.provenance import search_comment

    record = {"version": "0.1.0", "evaluated": 100, "fitness": "absolute", "alpha": 1.0, "beta": 1.0,
              "evaluations": 100, "shared_stage": True, "log_scale": True, "bounds": [0.0625, 16.0],
              "layer_groups": False, "loss": "error", "start_weights": {"/m/a": 1.0, "/m/b": 1.0},
              "tasks": [{"data": "a.jsonl", "texts": 32, "predicted_tokens": 64, "start_loss": 0.5, "best_loss": 0.25},
                        {"data": "b.jsonl", "texts": 32, "predicted_tokens": 70, "start_loss": 0.4, "best_loss": 0.375}]}
    config = config_dict("cabs", "/m/base", ["/m/a", "/m/b"], {"block_size": 16})
    text = search_comment(record) + yaml.safe_dump(config, sort_keys=False)
    import mergekit.merge

    register_all()
    card = ModelCard(mergekit.merge.generate_card(config=MergeConfiguration.model_validate(config),
                                                  config_yaml=text, name="merged")).text
    assert "The weights were found by `mergekit-cabs search` (mergekit-cabs 0.1.0): 100 evaluations" in card
    assert "`absolute` fitness (α = 1, β = 1)" in card and "calibration error" in card
    assert "`a.jsonl` (32 texts, 64 predicted tokens): 0.5 → 0.25" in card
    assert "found by `mergekit-cabs search`" not in ModelCard(card_in_process(config)).text
