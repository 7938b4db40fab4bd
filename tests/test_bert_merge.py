"""BERT-family models merge through plain `mergekit-yaml` (hosts.mergekit_new.plan_tensor_with_concatenable_aliases).

MergeKit 0.1.5 plans BERT's optional weights that have aliases (``position_ids``) with
``[name] + aliases`` on a tuple and crashes before loading anything; the plugin's start-up
hook patches the planner, for MergeKit's own methods as well as ours.
"""

from importlib.metadata import version

import pytest
import torch

from conftest import run_mergekit_yaml, run_mergekit_yaml_in_process, write_config
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, keep_count, merge_tensor
from mergekit_cabs.tiny_models import load_state

# Merges (one in a fresh interpreter): the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

DENSITY, BLOCK_SIZE, WEIGHT = 0.25, 16, 1.5


def tiny_bert_config():
    from transformers import BertConfig

    return BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, max_position_embeddings=32)


@pytest.fixture(scope="module")
def tiny_bert_family(tmp_path_factory):
    """A tiny BertModel base and two seeded perturbations of it, as safetensors (absolute paths)."""
    from transformers import BertModel

    root = tmp_path_factory.mktemp("bert").resolve()
    torch.manual_seed(0)
    base = BertModel(tiny_bert_config())
    base.save_pretrained(root / "base", safe_serialization=True)
    generator = torch.Generator().manual_seed(1)
    paths = []
    for index in range(2):
        tuned = BertModel(tiny_bert_config())
        tuned.load_state_dict({
            name: value + 0.02 * torch.randn(value.shape, generator=generator) if value.is_floating_point() else value
            for name, value in base.state_dict().items()
        })
        tuned.save_pretrained(root / f"tuned_{index}", safe_serialization=True)
        paths.append(str(root / f"tuned_{index}"))
    return str(root / "base"), paths


def write_merge_config(tmp_path, method, family, shared=None):
    base, models = family
    write_config(tmp_path / "c.yml", method, base, models,
                 [{"weight": WEIGHT, "density": DENSITY}] * len(models), shared)
    return tmp_path / "c.yml"


def merge_with_the_plugin(tmp_path, method, family, shared=None):
    """MergeKit's command in this process, where the plugin is registered (a fresh
    interpreter would only add its start-up; the hook's own tests are test_discovery's)."""
    code, error = run_mergekit_yaml_in_process(write_merge_config(tmp_path, method, family, shared),
                                               tmp_path / "out")
    assert code == 0, error[-3000:]


@pytest.mark.skipif(version("mergekit") != "0.1.5", reason="documents MergeKit 0.1.5's bug")
def test_builtin_ties_crashes_on_bert_without_the_plugin(tiny_bert_family, tmp_path):
    result = run_mergekit_yaml(write_merge_config(tmp_path, "ties", tiny_bert_family), tmp_path / "out",
                               env={"MERGEKIT_CABS_NO_HOOK": "1"})
    assert result.returncode != 0
    assert "can only concatenate list" in result.stderr


def test_builtin_ties_merges_bert(tiny_bert_family, tmp_path):
    merge_with_the_plugin(tmp_path, "ties", tiny_bert_family)
    base = load_state(tiny_bert_family[0])
    merged = load_state(tmp_path / "out")
    floats = {k for k, v in base.items() if v.is_floating_point()}
    assert floats <= merged.keys()
    assert all(merged[k].shape == base[k].shape for k in floats)
    assert any(not torch.equal(merged[k], base[k]) for k in floats)


def test_cabs_merges_bert_as_the_kernels_do(tiny_bert_family, tmp_path):
    merge_with_the_plugin(tmp_path, "cabs", tiny_bert_family, shared={"block_size": BLOCK_SIZE})
    base_path, model_paths = tiny_bert_family
    base, tuned = load_state(base_path), [load_state(p) for p in model_paths]
    merged = load_state(tmp_path / "out")
    assert keep_count(DENSITY, BLOCK_SIZE) == 4
    recipe = Recipe(Sparsifier.NM, True, Combine.SUM)
    for name, value in base.items():
        if not value.is_floating_point():
            continue
        want = merge_tensor(recipe, value, [t[name] for t in tuned], MergeArgs(weights=[WEIGHT] * 2,
                            densities=[DENSITY] * 2, block_size=BLOCK_SIZE))
        torch.testing.assert_close(merged[name], want, rtol=1e-6, atol=1e-6, msg=name)
