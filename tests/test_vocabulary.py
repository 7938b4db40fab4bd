"""Fine-tunes with a resized vocabulary (added chat tokens) merge under every MergeKit
tokenizer setting, with every method, and `inspect` takes the same configs: shapes are
checked on the tensors MergeKit has aligned, not on the files."""

import pytest
import yaml

from mergekit_cabs.diagnostics import inspect_config
from mergekit_cabs.methods import METHOD_TABLE
from mergekit_cabs.tiny_models import build_resized_vocab_family, load_state

ADDED = 8  # chat tokens of the second fine-tune; the base has 64 rows, it has 72
BASE_ROWS = 64

# tokenizer setting -> rows of the merged embedding
SETTINGS = {
    "tokenizer_source_base": ({"tokenizer_source": "base"}, BASE_ROWS),
    "tokenizer_source_union": ({"tokenizer_source": "union"}, BASE_ROWS + ADDED),
    "tokenizer_union_tokens_padded": (
        {"tokenizer": {"source": "union", "pad_to_multiple_of": 16,
                       "tokens": {"<|extra_0|>": {"source": "RESIZED"}}}}, 80),
}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def resized_family(tmp_path_factory):
    return build_resized_vocab_family(tmp_path_factory.mktemp("vocab"), added_tokens=ADDED)


def config_for(method, setting, family):
    base, models = family
    extra = yaml.safe_load(yaml.safe_dump(SETTINGS[setting][0]).replace("RESIZED", models[1]))
    nm = any(p == "block_size" for p in next(i for i in METHOD_TABLE if i.name == method).parameter_names)
    return {
        "merge_method": method,
        "base_model": base,
        "models": [{"model": m, "parameters": {"weight": 1.0, "density": 0.25}} for m in models],
        "parameters": {"block_size": 16} if nm else {},
        "dtype": "float32",
        **extra,
    }


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("method", [info.name for info in METHOD_TABLE])
def test_resized_vocabulary_merges_under_every_tokenizer_setting(method, setting, resized_family,
                                                                  tmp_path):
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    config = config_for(method, setting, resized_family)
    run_merge(MergeConfiguration.model_validate(config), str(tmp_path / "out"),
              options=MergeOptions(quiet=True), config_source=yaml.safe_dump(config))
    merged = load_state(tmp_path / "out")
    rows = SETTINGS[setting][1]
    assert merged["model.embed_tokens.weight"].shape == (rows, 32)
    assert merged["lm_head.weight"].shape == (rows, 32)


@pytest.mark.parametrize("setting", SETTINGS)
def test_inspect_accepts_every_tokenizer_setting(setting, resized_family, tmp_path):
    path = tmp_path / "c.yml"
    path.write_text(yaml.safe_dump(config_for("cabs", setting, resized_family)))
    report = inspect_config(path, tmp_path / "report", progress=False)
    assert "model.embed_tokens.weight" not in report["skipped_tensors"]
    assert report["overall"]["overlap"]["method"]["all_pairs"] == 0.0
