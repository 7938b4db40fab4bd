"""The searched best model is the one plain `mergekit-yaml merge.yml` writes (slow: subprocess merges)."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergekit_cabs.search import DEFAULT_LOSS, SearchSettings, search_causal_lm
from mergekit_cabs.search.calibration import CausalLMLoss, load_base_tokenizer, read_task
from tests.conftest import run_mergekit_yaml
from tests.search_helpers import same_bits, tiny_family_with_tokenizer, write_search_config, write_task


@pytest.mark.slow
@pytest.mark.parametrize("method, random_seed", [("cabs", None), ("ca_dare_ties", 77)])
def test_merging_merge_yml_with_mergekit_yaml_gives_the_reported_best_losses(tmp_path, method, random_seed):
    base, tuned = tiny_family_with_tokenizer(tmp_path / "family")
    tasks = [write_task(tmp_path / "a.jsonl", 1, words=range(3, 30)),
             write_task(tmp_path / "b.jsonl", 2, words=range(30, 64))]
    config = write_search_config(tmp_path / "c.yml", method, base, tuned, density=0.4)
    settings = SearchSettings(evaluations=9, population=4, random_seed=random_seed)
    result = search_causal_lm(config, tasks, tmp_path / "out", settings, max_length=24, batch_size=3,
                              progress=False)
    flags = ["--random-seed", str(random_seed)] if random_seed is not None else []
    merge = run_mergekit_yaml(tmp_path / "out" / "merge.yml", tmp_path / "merged", *flags)
    assert merge.returncode == 0, merge.stderr
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.bfloat16).eval()
    searched = result.candidate.model.state_dict()
    assert all(same_bits(searched[name], value) for name, value in merged.state_dict().items())
    tokenizer = load_base_tokenizer(base)
    losses = [CausalLMLoss(read_task(path, tokenizer, 24), 3, "cpu", DEFAULT_LOSS)(merged) for path in tasks]
    reported = json.loads((tmp_path / "out" / "search.json").read_text())["best"]["losses"]
    assert losses == reported
