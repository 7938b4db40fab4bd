"""Bad inputs through `mergekit-yaml`: a clear message, a non-zero exit, no model file.

Each case id is a row of docs/bad-inputs.md (test_every_case_is_documented keeps them in step).
The table runs MergeKit's command in-process; two cases also run it as a plain subprocess.
"""

import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from conftest import run_mergekit_yaml, run_mergekit_yaml_in_process, write_config
from mergekit_cabs.tiny_models import load_state, tiny_llama_config

DOCS = Path(__file__).parents[1] / "docs" / "bad-inputs.md"


def cabs(base, models, **shared):
    return {
        "merge_method": "cabs",
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.25}} for m in models],
        "parameters": {"block_size": 16, **shared},
        "dtype": "float32",
    }


def set_model_param(config, index, **values):
    config["models"][index]["parameters"].update(values)
    return config


@pytest.fixture(scope="module")
def odd_models(tmp_path_factory, tiny_family):
    """A fine-tune with another MLP width, and one with a NaN in a tensor."""
    from transformers import LlamaForCausalLM

    root = tmp_path_factory.mktemp("odd")
    torch.manual_seed(5)
    LlamaForCausalLM(tiny_llama_config(intermediate_size=40)).save_pretrained(root / "wide")
    nan_dir = root / "nan"
    shutil.copytree(tiny_family[1][0], nan_dir)
    state = load_state(nan_dir)
    state["model.layers.1.mlp.up_proj.weight"][3, 5] = math.nan
    save_file(state, nan_dir / "model.safetensors", metadata={"format": "pt"})
    return {"wide": str(root / "wide"), "nan": str(nan_dir)}


def case(case_id, build, message):
    return pytest.param(build, message, id=case_id)


BAD = [
    case("density-negative", lambda b, m, o: set_model_param(cabs(b, m), 0, density=-0.1),
         "density must be the kept fraction"),
    case("density-above-one", lambda b, m, o: set_model_param(cabs(b, m), 1, density=1.5),
         "density must be the kept fraction"),
    case("density-nan", lambda b, m, o: set_model_param(cabs(b, m), 0, density=float("nan")),
         "density must be the kept fraction"),
    case("density-string", lambda b, m, o: set_model_param(cabs(b, m), 0, density="half"),
         "invalid `density` for model"),
    case("density-missing", lambda b, m, o: {**cabs(b, m), "models": [{"model": x} for x in m]},
         "has no `density`"),
    case("block-size-zero", lambda b, m, o: cabs(b, m, block_size=0),
         "block_size must be a whole number >= 1"),
    case("block-size-negative", lambda b, m, o: cabs(b, m, block_size=-4),
         "block_size must be a whole number >= 1"),
    case("block-size-fraction", lambda b, m, o: cabs(b, m, block_size=2.5),
         "invalid `block_size`"),
    case("block-size-gradient", lambda b, m, o: cabs(b, m, block_size=[16, 64]),
         "per-layer gradient"),
    case("weight-nan", lambda b, m, o: set_model_param(cabs(b, m), 0, weight=float("nan")),
         "must be a finite number"),
    case("weight-inf", lambda b, m, o: set_model_param(cabs(b, m), 2, weight=float("inf")),
         "must be a finite number"),
    case("lambda-nan", lambda b, m, o: cabs(b, m, **{"lambda": float("nan")}),
         "invalid `lambda`"),
    case("lambda-inf", lambda b, m, o: cabs(b, m, **{"lambda": float("-inf")}),
         "invalid `lambda`"),
    case("merged-values-overflow", lambda b, m, o: set_model_param(cabs(b, m, **{"lambda": 1e30}), 0, weight=1e30),
         "gives values beyond the range of torch.float32; lower weight or lambda"),
    case("density-rounds-to-zero", lambda b, m, o: set_model_param(cabs(b, m), 1, density=0.02),
         "keeps n = round(0.02 * 16) = 0 entries per block"),
    case("no-base-model", lambda b, m, o: {k: v for k, v in cabs(b, m).items() if k != "base_model"},
         "no base_model"),
    case("only-base-model", lambda b, m, o: {**cabs(b, m), "models": [{"model": b}]},
         "no fine-tuned model besides the base"),
    case("model-listed-twice", lambda b, m, o: {**cabs(b, m), "models": cabs(b, m)["models"] + cabs(b, m)["models"][:1]},
         "is listed twice"),
    case("block-size-per-model", lambda b, m, o: set_model_param(cabs(b, m), 1, block_size=64),
         "`block_size` is shared by all models, but model"),
    case("block-size-gradient-in-filter",
         lambda b, m, o: cabs(b, m, block_size=[{"filter": "mlp", "value": [16, 64]}, {"value": 16}]),
         "block_size [16, 64] (filter 'mlp') is a per-layer gradient"),
    case("shape-mismatch", lambda b, m, o: cabs(b, [m[0], o["wide"]]),
         "Tensor size mismatch for model.layers.0.mlp.down_proj.weight"),
    case("nan-in-checkpoint", lambda b, m, o: cabs(b, [m[1], o["nan"]]),
         "contains NaN or inf"),
    case("authors-n-val", lambda b, m, o: set_model_param(cabs(b, m), 0, n_val=64),
         "unknown parameter 'n_val' for cabs"),
    case("authors-default-m-val", lambda b, m, o: cabs(b, m, default_m_val=256),
         "unknown parameter 'default_m_val' for cabs"),
    case("authors-pruning-order", lambda b, m, o: cabs(b, m, pruning_order=[1, 0, 2]),
         "reorder that list"),
    case("unknown-parameter", lambda b, m, o: cabs(b, m, sparsity=0.75),
         "unknown parameter 'sparsity' for cabs"),
    case("block-size-for-magnitude", lambda b, m, o: {**cabs(b, m), "merge_method": "magnitude_linear"},
         "unknown parameter 'block_size' for magnitude_linear"),
    case("model-path-missing", lambda b, m, o: cabs(b, [m[0], str(Path(m[1]).parent / "finetuned_9")]),
         "finetuned_9 does not exist. Correct it in the config"),
    case("model-folder-without-weights", lambda b, m, o: cabs(b, [m[0], str(Path(m[1]).parent)]),
         "holds no weights: none of model.safetensors"),
    case("model-path-is-a-file", lambda b, m, o: cabs(str(Path(b) / "model.safetensors"), m),
         "model.safetensors is a file, not a model folder"),
]


def assert_nothing_written(out):
    assert not list(out.glob("*.safetensors"))
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("build,message", BAD)
def test_bad_input_fails_clearly_before_writing(build, message, tiny_family, odd_models, tmp_path):
    base, models = tiny_family
    config = build(base, models, odd_models)
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code != 0
    assert message in error, error[-2000:]
    assert_nothing_written(tmp_path / "out")


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["density-rounds-to-zero", "nan-in-checkpoint"])
def test_plain_mergekit_yaml_subprocess_reports_the_same_error(case_id, tiny_family, odd_models, tmp_path):
    (build, message), = [p.values for p in BAD if p.id == case_id]
    base, models = tiny_family
    (tmp_path / "c.yml").write_text(yaml.safe_dump(build(base, models, odd_models), sort_keys=False))
    result = run_mergekit_yaml(tmp_path / "c.yml", tmp_path / "out")
    assert result.returncode != 0
    # MergeKit prints the traceback; our message is its last line (docs/bad-inputs.md).
    assert message in result.stderr.strip().split("\n")[-1], result.stderr[-2000:]
    assert_nothing_written(tmp_path / "out")


@pytest.mark.slow
def test_block_size_larger_than_a_tensor_applies_the_tail_rule(tiny_family, tmp_path):
    base, models = tiny_family
    (tmp_path / "c.yml").write_text(yaml.safe_dump(cabs(base, models, block_size=4096)))
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code == 0, error[-2000:]
    merged, base_state = load_state(tmp_path / "out"), load_state(base)
    norm = "model.norm.weight"  # 32 elements: one short block keeping round(1024 * 32 / 4096) = 8 per task
    assert int((merged[norm] != base_state[norm]).sum()) <= 3 * 8


@pytest.mark.slow
def test_ties_variant_with_all_zero_task_vectors_returns_the_base(tiny_family, tmp_path):
    base, _ = tiny_family
    copy = tmp_path / "same_as_base"
    shutil.copytree(base, copy)
    config = {**cabs(base, [str(copy)]), "merge_method": "cabs_ties"}
    config["parameters"]["normalize"] = True
    (tmp_path / "c.yml").write_text(yaml.safe_dump(config))
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code == 0, error[-2000:]
    merged, base_state = load_state(tmp_path / "out"), load_state(base)
    assert all(torch.equal(merged[k], base_state[k]) for k in base_state)


def test_mergekit_memory_option_int8_mask_merges_with_a_notice(tiny_family, tmp_path, caplog):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabs", base, models[:2], [{"density": 0.25}] * 2,
                 {"block_size": 16, "int8_mask": True})
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code == 0, error[-2000:]
    assert "cabs: ignoring `int8_mask` (an option of MergeKit's ties that only saves memory" \
        in caplog.text


def test_densities_within_one_whose_counts_overflow_the_block_warn_with_a_block_size(
        tiny_family, tmp_path, caplog):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabs", base, models, [{"density": 0.33}] * 3,
                 {"block_size": 32})
    code, error = run_mergekit_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code == 0, error[-2000:]
    assert "keep 11 + 11 + 11 = 33 > 32 entries per block" in caplog.text
    assert "block_size 33 (or 64, the smallest power of two) makes them disjoint" in caplog.text


def test_every_case_is_documented():
    documented = DOCS.read_text()
    for param in BAD:
        assert f"`{param.id}`" in documented, param.id
    for extra in ("block-size-larger-than-tensor", "all-zero-task-vectors", "integer-buffers",
                  "int8-mask", "counts-overflow-block", "resized-vocabulary"):
        assert f"`{extra}`" in documented
