"""Every example config parses, names a registered method and has valid parameters (offline)."""

from pathlib import Path

import pytest
import yaml

# The new merge-method API's resolver (mergekit >= 0.1.5, where the full suite runs); the host
# tier of the old-API hosts collects this module without running it.
resolver = pytest.importorskip("mergekit.parameter_resolver")
from mergekit import merge_methods  # noqa: E402
from mergekit.config import MergeConfiguration  # noqa: E402

from mergekit_cabs import register_all  # noqa: E402
from mergekit_cabs.methods import METHOD_TABLE  # noqa: E402

EXAMPLES = sorted((Path(__file__).parents[1] / "example_configs").glob("*.yml"))
TENSOR = "model.layers.0.mlp.up_proj.weight"


def test_there_is_an_example_per_method_name_and_the_papers_two():
    names = {p.stem for p in EXAMPLES}
    assert {info.name for info in METHOD_TABLE} <= names
    assert {"paper_mistral_7b_cabs", "roberta_4task_sparsity90"} <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_config_resolves_with_the_planning_checks(path):
    config = MergeConfiguration.model_validate(yaml.safe_load(path.read_text()))
    assert config.merge_method in register_all()
    spec = merge_methods.get(config.merge_method).spec
    by_model = {m.model: m.parameters for m in config.models}

    def sources(model):
        return ([by_model[model]] if model is not None else []) + [config.parameters]

    assert getattr(resolver.resolve_parameters, "__mergekit_cabs__", False)
    shared, per_model = resolver.resolve_parameters(
        spec, tensor_name=TENSOR, inputs={m: TENSOR for m in by_model},
        sources=sources, base_model=config.base_model)
    assert shared["lambda"] == 1.0
    for params in per_model.values():
        assert 0 < params["density"] <= 1 and params["weight"] > 0
