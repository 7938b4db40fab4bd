"""The host tier: every registered name merges, is discovered and refuses bad inputs on the
host this venv has (``MERGEKIT_CABS_TEST_HOST``: mergekit 0.1.5 or 0.1.4, or mergekitty).

CI runs ``-m host`` once per host venv. With ``MERGEKIT_CABS_HOST_HASHES`` set, the merges
write the SHA-256 of every input and output tensor to ``<dir>/<host>-<version>/`` (one
file per merge: xdist workers never share one);
``tests/test_host_bytes.py`` then checks that every host gave the same bytes.
"""

import hashlib
import importlib.util
import json
import os
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

import reference
from conftest import HOST, run_host_yaml, run_host_yaml_in_process, run_python, write_config
from mergekit_cabs.kernels import random_scores, tensor_seed
from mergekit_cabs.methods import METHOD_TABLE
from mergekit_cabs.tiny_models import build_tiny_family, load_state, save_tiny_tokenizer, tiny_llama_config
from test_bad_inputs import BAD, assert_nothing_written, odd_models  # noqa: F401 - a fixture

pytestmark = pytest.mark.host

SEED = 1234
WEIGHTS = [1.2, 0.9, 1.1]
DENSITIES = [0.25, 0.3, 0.4]

NAMES = sorted(info.name for info in METHOD_TABLE)
OLD_API = not hasattr(__import__(f"{HOST}.merge_methods.base", fromlist=["base"]), "GroupMergeMethod")
# What an old-API host says instead (docs/bad-inputs.md, "Per host"): its own config schema
# refuses a string before any method sees it, and it merges tensors in another order.
OLD_API_MESSAGES = {
    "density-string": "models.0.parameters.density",
    "shape-mismatch": "Tensor size mismatch for model.layers.",
}


def seeded_state(names_shapes, generator, base=None):
    """Tensors from ``generator`` alone: the same bytes whatever transformers initializes."""
    state = {}
    for name, shape in names_shapes:
        value = torch.randn(shape, generator=generator) * 0.02
        if base is not None:
            keep = torch.rand(shape, generator=generator) >= 0.1
            value = base[name] + value * keep
        state[name] = value
    return state


@pytest.fixture(scope="module")
def host_family(tmp_path_factory):
    """Tiny Llama models with a tokenizer each (mergekitty always builds one) whose
    tensors depend only on a torch generator: the same inputs on every host."""
    base, models = build_tiny_family(tmp_path_factory.mktemp("host"), n_finetuned=3, seed=0)
    shapes = [(k, v.shape) for k, v in sorted(load_state(base).items())]
    generator = torch.Generator().manual_seed(7)
    base_state = seeded_state(shapes, generator)
    for path, state in [(base, base_state)] + [(m, seeded_state(shapes, generator, base_state))
                                               for m in models]:
        save_file(state, Path(path) / "model.safetensors", metadata={"format": "pt"})
        save_tiny_tokenizer(path, tiny_llama_config().vocab_size)
    return base, models


def digest(state):
    return {name: hashlib.sha256(value.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()
            for name, value in sorted(state.items())}


def record_hashes(section, key, hashes):
    """Write ``hashes`` as ``<section>/<key>`` of this host (when CI asks for it)."""
    folder = os.environ.get("MERGEKIT_CABS_HOST_HASHES")
    if not folder:
        return
    path = Path(folder) / f"{HOST}-{version(HOST)}" / section / f"{key}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(hashes, indent=1, sort_keys=True))


def reference_state(info, base, tuned, block_size, lam=1.0, normalize=False):
    """The merge of state dicts by ``tests/reference.py`` (DARE's scores as the merge draws
    them with ``--random-seed SEED``)."""
    out = {}
    for name, b in base.items():
        ts = [t[name] for t in tuned]
        scores = None
        if info.recipe.sparsifier.value == "random":
            scores = [random_scores(b.shape, tensor_seed(SEED, name, i), b.device).reshape(-1).tolist()
                      for i in range(len(ts))]
        out[name] = reference.merge(
            b, ts, WEIGHTS, DENSITIES, sparsifier=info.recipe.sparsifier.value,
            conflict_aware=info.recipe.conflict_aware, combine=info.recipe.combine.value,
            block_size=block_size, lam=lam, normalize=normalize, scores=scores)
    return out


def method_config(info, base, models):
    shared = {"lambda": 0.9, "normalize": info.recipe.combine.value == "ties"}
    if info.sparsifier.has_blocks:
        shared["block_size"] = 16
    params = [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)]
    return shared, params


@pytest.mark.parametrize("info", METHOD_TABLE, ids=lambda i: i.name)
def test_host_yaml_merge_equals_the_reference_and_records_its_bytes(info, host_family, tmp_path):
    # The host's command in this process: a fresh interpreter per method would add ~7 s of
    # imports each and test nothing more (the plain command's discovery: the tests below).
    base, models = host_family
    shared, params = method_config(info, base, models)
    write_config(tmp_path / "c.yml", info.name, base, models, params, shared)
    code, error = run_host_yaml_in_process(tmp_path / "c.yml", tmp_path / "out", "--random-seed", str(SEED))
    assert code == 0, error[-3000:]
    merged = load_state(tmp_path / "out")
    inputs = [load_state(p) for p in (base, *models)]
    want = reference_state(info, inputs[0], inputs[1:], block_size=16, lam=0.9,
                           normalize=shared["normalize"])
    assert merged.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(merged[name], want[name], rtol=1e-6, atol=1e-6, msg=name)
    record_hashes("inputs", "family", [digest(s) for s in inputs])
    record_hashes("outputs", info.name, digest(merged))


def test_host_yaml_writes_our_card(host_family, tmp_path):
    base, models = host_family
    write_config(tmp_path / "c.yml", "cabs_ties", base, models[:2],
                 [{"weight": 1.0, "density": 0.25}] * 2, {"block_size": 16})
    result = run_host_yaml(tmp_path / "c.yml", tmp_path / "out")
    assert result.returncode == 0, result.stderr[-3000:]
    card = (tmp_path / "out" / "README.md").read_text()
    assert '`cabs_ties` (CABS with TIES, the row "TIES + CABS"' in card
    assert "→ 4:16" in card
    assert "@inproceedings{yadav2023ties," in card



# Our names as the host's registry lists them, then whether every host object our adapter
# replaces is our wrapper (registration bound each name, whatever was imported first).
NAMES_PROBE = f"""
from {HOST} import merge_methods
import {HOST}.plan, {HOST}.merge, {HOST}.config
registry = getattr(merge_methods, "REGISTERED_MERGE_METHODS", None)
names = list(registry) if registry is not None else [m.spec.name for m in merge_methods.registered_methods()]
print(sorted(n for n in names if n in {NAMES!r}))
replaced = [{HOST}.merge.generate_card, {HOST}.config.MergeConfiguration.referenced_models,
            {HOST}.plan.MergePlanner.plan_tensor, getattr({HOST}.plan, "resolve_parameters", None)]
print(all(getattr(f, "__mergekit_cabs__", False) for f in replaced if f is not None))
"""

# Each module of the host a user's code may import first (those this host has).
FIRST_IMPORTS = [m for m in ("plan", "merge", "config", "card", "merge_methods.base", "scripts.run_yaml",
                             "parameter_resolver", "scripts.multimerge")
                 if importlib.util.find_spec(f"{HOST}.{m}") is not None]


def assert_registered_and_installed(result):
    assert result.returncode == 0, result.stderr[-3000:]
    assert "failed to load" not in result.stderr, result.stderr[-3000:]
    assert result.stdout.strip().split("\n")[-2:] == [str(NAMES), "True"]


def test_a_find_spec_probe_before_the_import_still_registers():
    assert_registered_and_installed(run_python(
        f"import importlib.util\nimportlib.util.find_spec('{HOST}.merge_methods')\n" + NAMES_PROBE))


@pytest.mark.parametrize("first", FIRST_IMPORTS)
def test_importing_a_host_module_first_still_registers(first):
    # mergekit.parameter_resolver first used to import merge_methods half-way through
    # itself: the plugin then met a partially initialized module.
    assert_registered_and_installed(run_python(f"import {HOST}.{first}\n" + NAMES_PROBE))


def test_without_the_hook_the_host_does_not_know_cabs():
    result = run_python(NAMES_PROBE, env={"MERGEKIT_CABS_NO_HOOK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().split("\n")[0] == "[]"


def test_import_mergekit_cabs_first_registers_once_the_host_loads():
    result = run_python(f"import sys, mergekit_cabs\nprint({HOST!r} in sys.modules)\n" + NAMES_PROBE,
                        env={"MERGEKIT_CABS_NO_HOOK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().split("\n") == ["False", str(NAMES), "True"]


def test_host_python_api_merges_as_its_command(host_family, tmp_path):
    base, models = host_family
    write_config(tmp_path / "c.yml", "cabs", base, models[:2], [{"density": 0.25}] * 2,
                 {"block_size": 16})
    result = run_python(f"""
        import yaml
        from {HOST}.config import MergeConfiguration
        from {HOST}.merge import run_merge
        from {HOST}.options import MergeOptions
        text = open({str(tmp_path / "c.yml")!r}).read()
        run_merge(MergeConfiguration.model_validate(yaml.safe_load(text)), {str(tmp_path / "api")!r},
                  options=MergeOptions(copy_tokenizer=False), config_source=text)
        import sys
        print("mergekit_cabs" in sys.modules)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "True"  # loaded by the hook, not by the script
    cli = run_host_yaml(tmp_path / "c.yml", tmp_path / "cli")
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert load_state(tmp_path / "api").keys() == load_state(tmp_path / "cli").keys()
    assert all(torch.equal(a, b) for a, b in zip(load_state(tmp_path / "api").values(),
                                                 load_state(tmp_path / "cli").values()))


@pytest.mark.parametrize("case_id", [p.id for p in BAD])
def test_bad_input_fails_clearly_on_this_host(case_id, tiny_family, odd_models, tmp_path):  # noqa: F811
    (build, message), = [p.values for p in BAD if p.id == case_id]
    if OLD_API:
        message = OLD_API_MESSAGES.get(case_id, message)
    base, models = tiny_family
    (tmp_path / "c.yml").write_text(yaml.safe_dump(build(base, models, odd_models), sort_keys=False))
    code, error = run_host_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code != 0
    assert message in error, error[-2000:]
    assert_nothing_written(tmp_path / "out")


@pytest.mark.parametrize("density, warned", [(0.3, True), (0.1, False)])
def test_planning_warns_when_conflict_aware_pruning_starves_a_model(host_family, tmp_path, caplog, density,
                                                                    warned):
    base, models = host_family
    write_config(tmp_path / "c.yml", "cabs", base, models, [{"density": density}] * 3, {"block_size": 16})
    code, error = run_host_yaml_in_process(tmp_path / "c.yml", tmp_path / "out")
    assert code == 0, error[-2000:]
    # 5:16 each: the third model finds 6 of 16 positions free, less than twice its 5.
    message = f"{models[2]} (model 3 of 3) 38% of each block free for a keep share of 31%"
    assert (message in caplog.text) is warned
    assert ("list that model earlier, or use the method without conflict-aware pruning" in caplog.text) is warned
