"""Same inputs, same bytes: across runs, thread counts and chunk sizes; DARE variants by
`--random-seed`. And installing the plugin leaves MergeKit's own methods byte-identical."""

import hashlib

import pytest
import torch

from conftest import run_mergekit_yaml, write_config
from mergekit_cabs import methods
from mergekit_cabs.tiny_models import load_state

PARAMS = [{"weight": 1.2, "density": 0.25}, {"weight": 0.9, "density": 0.3}, {"weight": 1.1, "density": 0.4}]


def merged_bytes(tmp_path, name, method, tiny_family, *flags, env=None, params=PARAMS, shared=None):
    base, models = tiny_family
    config = tmp_path / f"{name}.yml"
    write_config(config, method, base, models[: len(params)], params, shared)
    result = run_mergekit_yaml(config, tmp_path / name, *flags, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return hashlib.sha256((tmp_path / name / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_cabs_gives_the_same_bytes_twice_and_on_one_thread(tiny_family, tmp_path):
    shared = {"block_size": 16}
    first = merged_bytes(tmp_path, "a", "cabs_ties", tiny_family, shared=shared)
    assert merged_bytes(tmp_path, "b", "cabs_ties", tiny_family, shared=shared) == first
    assert merged_bytes(tmp_path, "c", "cabs_ties", tiny_family, "--num-threads", "1",
                        shared=shared) == first


@pytest.mark.slow
def test_dare_variant_is_reproducible_by_random_seed_at_any_thread_count(tiny_family, tmp_path):
    seeded = ("--random-seed", "7")
    first = merged_bytes(tmp_path, "a", "ca_dare_ties", tiny_family, *seeded)
    assert merged_bytes(tmp_path, "b", "ca_dare_ties", tiny_family, *seeded,
                        "--num-threads", "1") == first
    assert merged_bytes(tmp_path, "c", "ca_dare_ties", tiny_family, "--random-seed", "8") != first


@pytest.mark.parametrize("chunk_elements", [16, 48, 1 << 22])
def test_chunk_size_does_not_change_the_merge(chunk_elements, monkeypatch):
    from mergekit.merge_methods.api import merge_tensors

    g = torch.Generator().manual_seed(3)
    base = torch.randn(40, 36, generator=g).to(torch.bfloat16)
    tuned = [(base.float() + torch.randn(40, 36, generator=g) * 0.05).to(torch.bfloat16)
             for _ in range(3)]
    args = dict(base_index=0, name="w",
                parameters={"weight": [1.0] * 3, "density": [0.25] * 3, "block_size": 16})
    whole = merge_tensors([base, *tuned], "cabs", **args)
    monkeypatch.setattr(methods, "CHUNK_ELEMENTS", chunk_elements)
    chunked = merge_tensors([base, *tuned], "cabs", **args)
    assert torch.equal(chunked.view(torch.int16), whole.view(torch.int16))


BUILT_INS = {
    "task_arithmetic": ([{"weight": 0.7}, {"weight": 0.5}], None, ()),
    "ties": ([{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.3}], None, ()),
    "dare_ties": ([{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.3}], None,
                  ("--random-seed", "3", "--num-threads", "1")),
    "slerp": ([None, None], {"t": 0.3}, ()),
}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BUILT_INS))
def test_builtin_method_gives_the_same_bytes_with_and_without_the_plugin(method, tiny_family, tmp_path):
    params, shared, flags = BUILT_INS[method]
    base, models = tiny_family
    if method == "slerp":  # slerp takes the base plus exactly one other model
        tiny_family = (base, [base, models[0]])
    with_plugin = merged_bytes(tmp_path, "with", method, tiny_family, *flags, params=params,
                               shared=shared)
    without = merged_bytes(tmp_path, "without", method, tiny_family, *flags, params=params,
                           shared=shared, env={"MERGEKIT_CABS_NO_HOOK": "1"})
    assert with_plugin == without
    assert load_state(tmp_path / "with").keys() == load_state(base).keys()
