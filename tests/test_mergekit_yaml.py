"""Every registered name through plain `mergekit-yaml`, compared with the reference merge."""

import pytest
import torch

import reference
from conftest import run_mergekit_yaml, write_config
from mergekit_cabs.kernels import random_scores, tensor_seed
from mergekit_cabs.methods import METHOD_TABLE
from mergekit_cabs.tiny_models import load_state

# Subprocess merges: the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

SEED = 1234
WEIGHTS = [1.2, 0.9, 1.1]
DENSITIES = [0.25, 0.3, 0.4]


def reference_state(info, base, tuned, block_size, lam=1.0, normalize=False):
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


@pytest.mark.parametrize("info", METHOD_TABLE, ids=lambda i: i.name)
def test_mergekit_yaml_merge_equals_reference(info, tiny_family, tmp_path):
    base, models = tiny_family
    shared = {"lambda": 0.9, "normalize": info.recipe.combine.value == "ties"}
    if info.recipe.sparsifier.value == "n:m":
        shared["block_size"] = 16
    write_config(tmp_path / "c.yml", info.name, base, models,
                 [{"weight": w, "density": d} for w, d in zip(WEIGHTS, DENSITIES)], shared)
    result = run_mergekit_yaml(tmp_path / "c.yml", tmp_path / "out", "--random-seed", str(SEED))
    assert result.returncode == 0, result.stderr[-3000:]
    merged = load_state(tmp_path / "out")
    want = reference_state(info, load_state(base), [load_state(m) for m in models],
                           block_size=16, lam=0.9, normalize=shared["normalize"])
    assert merged.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(merged[name], want[name], rtol=1e-6, atol=1e-6, msg=name)
