"""Same inputs, same bytes: across runs, thread counts and chunk sizes; DARE variants by
`--random-seed`. And installing the plugin leaves MergeKit's own methods byte-identical."""

import hashlib

import pytest
import torch

from conftest import once_per_run, run_mergekit_yaml_in_process, run_python, write_config
from mergekit_cabs import methods
from mergekit_cabs.tiny_models import load_state

PARAMS = [{"weight": 1.2, "density": 0.25}, {"weight": 0.9, "density": 0.3}, {"weight": 1.1, "density": 0.4}]


def digest(folder):
    return hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


def write_method_config(tmp_path, method, tiny_family, params=PARAMS, shared=None):
    base, models = tiny_family
    write_config(tmp_path / f"{method}.yml", method, base, models[: len(params)], params, shared)
    return tmp_path / f"{method}.yml"


def hash_here(config, out, *flags):
    """The merge's hash, merged by MergeKit's command in this interpreter."""
    code, error = run_mergekit_yaml_in_process(config, out, *flags)
    assert code == 0, error[-2000:]
    return digest(out)


def hashes_in_a_fresh_interpreter(config, runs):
    """{name: hash} for ``runs`` ([(name, mergekit-yaml flags)]), merged one after another in
    one fresh interpreter (flags such as --num-threads stay set)."""
    result = run_python(MERGE_ALL.format(runs=[[str(config), str(config.parent / name), *flags]
                                               for name, flags in runs]))
    assert result.returncode == 0, result.stderr[-2000:]
    return {name: digest(config.parent / name) for name, _ in runs}


# Each test merges in this interpreter and in a fresh one: a result that hung on hash order
# (a set's, as in MergeKit's lists of models) would differ between the two.
@pytest.mark.slow
def test_cabs_gives_the_same_bytes_twice_and_on_one_thread(tiny_family, tmp_path):
    config = write_method_config(tmp_path, "cabs_ties", tiny_family, shared={"block_size": 16})
    first = hash_here(config, tmp_path / "a")
    again = hashes_in_a_fresh_interpreter(config, [("b", []), ("c", ["--num-threads", "1"])])
    assert again == {"b": first, "c": first}


@pytest.mark.slow
def test_dare_variant_is_reproducible_by_random_seed_at_any_thread_count(tiny_family, tmp_path):
    config = write_method_config(tmp_path, "ca_dare_ties", tiny_family)
    first = hash_here(config, tmp_path / "a", "--random-seed", "7")
    again = hashes_in_a_fresh_interpreter(config, [("b", ["--random-seed", "7", "--num-threads", "1"]),
                                                   ("c", ["--random-seed", "8"])])
    assert again["b"] == first
    assert again["c"] != first


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
    "slerp": ([None, None], {"t": 0.3}, ()),
    # Last: `--num-threads 1` stays set in the process that runs the merges one after another.
    "dare_ties": ([{"weight": 0.7, "density": 0.5}, {"weight": 0.5, "density": 0.3}], None,
                  ("--random-seed", "3", "--num-threads", "1")),
}

# MergeKit's own command for every config, one after another in one fresh interpreter (a
# process per merge would add ~7 s of imports each): run_merge sets --random-seed itself.
MERGE_ALL = """
import sys
from mergekit.scripts.run_yaml import main
for args in {runs!r}:
    main(args=[*args, "--no-copy-tokenizer", "--quiet"], standalone_mode=False)
print("mergekit_cabs" in sys.modules)
"""


@pytest.fixture(scope="module")
def builtin_merges(tiny_family, tmp_path_factory):
    """{(method, "with" | "without" the plugin): output folder} of MergeKit's own methods."""
    base, models = tiny_family
    outputs = {(method, plugin): f"{method}-{plugin}" for method in BUILT_INS for plugin in ("with", "without")}

    def merge_all(root):
        for plugin, env in (("with", {}), ("without", {"MERGEKIT_CABS_NO_HOOK": "1"})):
            runs = []
            for method, (params, shared, flags) in BUILT_INS.items():
                tuned = [base, models[0]] if method == "slerp" else models  # slerp: the base and one other
                write_config(root / f"{method}.yml", method, base, tuned[: len(params)], params, shared)
                runs.append([str(root / f"{method}.yml"), str(root / outputs[method, plugin]), *flags])
            result = run_python(MERGE_ALL.format(runs=runs), env=env)
            assert result.returncode == 0, result.stderr[-3000:]
            assert result.stdout.strip() == str(plugin == "with")
        return {}

    root, _ = once_per_run(tmp_path_factory, "builtin-merges", merge_all)
    return {key: root / name for key, name in outputs.items()}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(BUILT_INS))
def test_builtin_method_gives_the_same_bytes_with_and_without_the_plugin(method, builtin_merges, tiny_family):
    with_plugin, without = builtin_merges[method, "with"], builtin_merges[method, "without"]
    assert (with_plugin / "model.safetensors").read_bytes() == (without / "model.safetensors").read_bytes()
    assert load_state(with_plugin).keys() == load_state(tiny_family[0]).keys()
