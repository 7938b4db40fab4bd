"""`mergekit-cabs inspect`: its report's numbers equal a direct computation on the tiny
models, conflict-aware masks do not overlap, and it writes the table, JSON and figures."""

import json
import sys

import pytest
import torch
from click.testing import CliRunner

from conftest import run_mergekit_yaml_in_process, write_config
from mergekit_cabs.cli import main
from mergekit_cabs.diagnostics import format_table, inspect_config, write_figures
from mergekit_cabs.kernels import Recipe, magnitude_mask, task_masks, tensor_seed
from mergekit_cabs.methods import METHODS_BY_NAME
from mergekit_cabs.tiny_models import load_state

DENSITIES = [0.25, 0.3, 0.4]  # sum 0.95 <= 1
BLOCK_SIZE = 20
SEED = 7


@pytest.fixture(scope="module")
def cabs_config(tiny_family, tmp_path_factory):
    base, models = tiny_family
    path = tmp_path_factory.mktemp("inspect") / "cabs.yml"
    write_config(path, "cabs", base, models, [{"weight": 1.0, "density": d} for d in DENSITIES],
                 {"block_size": BLOCK_SIZE})
    return path


@pytest.fixture(scope="module")
def cabs_report(cabs_config, tmp_path_factory):
    return inspect_config(cabs_config, tmp_path_factory.mktemp("report"), random_seed=SEED,
                          progress=False)


@pytest.fixture(scope="module")
def task_vectors(tiny_family):
    """{tensor name: [tau_1, tau_2, tau_3]} in float32, read straight from the files."""
    base, models = tiny_family
    base_state = load_state(base)
    tuned = [load_state(m) for m in models]
    return {name: [t[name].float() - value.float() for t in tuned]
            for name, value in base_state.items()}


def direct_masks(taus, recipe, name):
    seeds = [tensor_seed(SEED, name, i) for i in range(len(taus))]
    return task_masks(recipe, taus, DENSITIES, BLOCK_SIZE, seeds)


def magnitude_masks(taus):
    return [magnitude_mask(t, d) for t, d in zip(taus, DENSITIES)]


def pooled_overlap(mask_sets):
    """sum over tensors and pairs of |A & B|, divided by the same sum of |A | B|."""
    inter = union = 0
    for masks in mask_sets:
        for i in range(len(masks)):
            for j in range(i + 1, len(masks)):
                inter += int((masks[i] & masks[j]).sum())
                union += int((masks[i] | masks[j]).sum())
    return inter / union


def layer(report, name):
    return next(entry for entry in report["layers"] if entry["name"] == name)


def test_report_covers_every_tensor_in_merge_order(cabs_report, task_vectors, tiny_family):
    _, models = tiny_family
    assert cabs_report["models"] == models
    assert cabs_report["tensors"] == len(task_vectors)
    assert cabs_report["overall"]["elements"] == sum(t[0].numel() for t in task_vectors.values())


def test_magnitude_overlap_equals_direct_computation(cabs_report, task_vectors):
    overall = pooled_overlap(magnitude_masks(t) for t in task_vectors.values())
    assert cabs_report["overall"]["overlap"]["magnitude"]["all_pairs"] == pytest.approx(overall, abs=1e-12)
    layer_1 = pooled_overlap(magnitude_masks(t) for n, t in task_vectors.items()
                             if n.startswith("model.layers.1."))
    got = layer(cabs_report, "model.layers.1")["overlap"]["magnitude"]["all_pairs"]
    assert got == pytest.approx(layer_1, abs=1e-12)
    assert overall > 0.05  # independent magnitude masks do collide


def test_pair_overlap_equals_direct_computation(cabs_report, task_vectors):
    inter = union = 0
    for taus in task_vectors.values():
        a, _, c = magnitude_masks(taus)
        inter, union = inter + int((a & c).sum()), union + int((a | c).sum())
    pair = cabs_report["overall"]["overlap"]["magnitude"]["pairs"][1]  # (1, 3)
    assert pair["models"] == [cabs_report["models"][0], cabs_report["models"][2]]
    assert pair["overlap"] == pytest.approx(inter / union, abs=1e-12)


def test_conflict_aware_overlap_is_zero_when_densities_sum_to_at_most_one(cabs_report):
    for region in [cabs_report["overall"], *cabs_report["layers"]]:
        overlap = region["overlap"]["method"]
        assert overlap["all_pairs"] == 0.0
        assert all(pair["overlap"] == 0.0 for pair in overlap["pairs"])


def test_conflict_aware_overlap_is_positive_when_densities_exceed_one(tiny_family, tmp_path):
    base, models = tiny_family
    write_config(tmp_path / "c.yml", "cabs", base, models[:2],
                 [{"density": 0.75}, {"density": 0.75}], {"block_size": BLOCK_SIZE})
    report = inspect_config(tmp_path / "c.yml", tmp_path, progress=False)
    assert report["overall"]["overlap"]["method"]["all_pairs"] > 0.3


def test_kept_energy_and_loss_to_ca_equal_direct_computation(cabs_report, task_vectors):
    cabs = METHODS_BY_NAME["cabs"].recipe
    without_ca = Recipe(cabs.sparsifier, False, cabs.combine)
    kept = torch.zeros(3, dtype=torch.float64)
    kept_alone = torch.zeros(3, dtype=torch.float64)
    total = torch.zeros(3, dtype=torch.float64)
    for name, taus in task_vectors.items():
        if not name.startswith("model.layers.0."):
            continue
        for i, (m, m0, tau) in enumerate(zip(direct_masks(taus, cabs, name),
                                             direct_masks(taus, without_ca, name), taus)):
            energy = tau.double().square()
            kept[i] += (energy * m).sum()
            kept_alone[i] += (energy * m0).sum()
            total[i] += energy.sum()
    got = layer(cabs_report, "model.layers.0")
    assert got["kept_energy"]["method"] == pytest.approx((kept / total).tolist(), abs=1e-9)
    assert got["lost_to_ca"] == pytest.approx(((kept_alone - kept) / total).tolist(), abs=1e-9)
    assert got["lost_to_ca"][0] == 0.0  # the first task chooses freely
    assert got["lost_to_ca"][2] > 0


def test_balance_cv_equals_direct_computation(cabs_report, task_vectors):
    cabs = METHODS_BY_NAME["cabs"].recipe
    rows = {"method": [], "magnitude": []}
    blocks = {"method": [], "magnitude": []}
    for name, taus in task_vectors.items():
        for kind, masks in (("method", direct_masks(taus, cabs, name)),
                            ("magnitude", magnitude_masks(taus))):
            mask = masks[2].double()
            if mask.dim() == 2:
                rows[kind].append(mask.mean(dim=1))
            flat = mask.reshape(-1)
            full = flat.numel() // BLOCK_SIZE * BLOCK_SIZE
            blocks[kind].append(flat[:full].view(-1, BLOCK_SIZE).mean(dim=1))

    def cv(parts):
        values = torch.cat(parts)
        return float(values.std(correction=0) / values.mean())

    for kind in ("method", "magnitude"):
        got = cabs_report["balance"][kind][2]
        assert got["rows"] == pytest.approx(cv(rows[kind]), abs=1e-9)
        assert got["blocks"] == pytest.approx(cv(blocks[kind]), abs=1e-9)
    assert cabs_report["balance"]["method"][2]["blocks"] < cabs_report["balance"]["magnitude"][2]["blocks"]


def test_inspect_command_prints_table_and_writes_report_and_figures(cabs_config, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["inspect", str(cabs_config), "--out", str(out), "--quiet",
                                       "--random-seed", str(SEED)])
    assert result.exit_code == 0, result.output
    assert "overlap (intersection / union)" in result.output
    assert "  all pairs" in result.output
    report = json.loads((out / "report.json").read_text())
    assert report["merge_method"] == "cabs"
    for name in ("overlap_per_layer.png", "kept_energy_per_layer.png"):
        data = (out / name).read_bytes()
        assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000


def test_the_table_explains_its_no_ca_and_lost_columns(cabs_report):
    table = format_table(cabs_report)
    assert "no-CA    lost" in table
    assert ("(no-CA = kept energy share of the same pruning without conflict-aware masking; "
            "lost = no-CA - energy, what a model gave up to the models pruned before it)") in table


def test_inspecting_a_config_with_a_dtype_prints_no_deprecation(cabs_config, tmp_path):
    import logging

    assert "dtype: float32" in cabs_config.read_text()
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    transformers_log = logging.getLogger("transformers")  # its own handler, no propagation
    transformers_log.addHandler(handler)
    logging.Logger.warning_once.cache_clear()  # transformers warns once per process
    try:
        inspect_config(cabs_config, tmp_path, random_seed=SEED, progress=False)
    finally:
        transformers_log.removeHandler(handler)
    assert not [r for r in records if "torch_dtype" in r.getMessage()]


def test_figures_are_skipped_without_matplotlib(cabs_report, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import now fails
    assert write_figures(cabs_report, tmp_path) is None
    assert not list(tmp_path.glob("*.png"))


def test_inspect_rejects_a_method_that_is_not_ours(tiny_family, tmp_path):
    base, models = tiny_family
    write_config(tmp_path / "ta.yml", "task_arithmetic", base, models, [{"weight": 1.0}] * 3)
    result = CliRunner().invoke(main, ["inspect", str(tmp_path / "ta.yml"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "merge_method 'task_arithmetic' is not one of this package's methods" in result.output


@pytest.mark.slow
def test_dare_masks_are_the_merges_given_its_random_seed(tiny_family, tmp_path):
    """Disjoint masks: the merge moves exactly the positions the masks keep, no more."""
    base, models = tiny_family
    write_config(tmp_path / "dare.yml", "ca_dare_linear", base, models,
                 [{"density": d} for d in DENSITIES])
    code, error = run_mergekit_yaml_in_process(tmp_path / "dare.yml", tmp_path / "merged", "--random-seed", str(SEED))
    assert code == 0, error[-3000:]
    report = inspect_config(tmp_path / "dare.yml", tmp_path, random_seed=SEED, progress=False)
    merged, base_state = load_state(tmp_path / "merged"), load_state(base)
    moved = sum(int((merged[n] != base_state[n]).sum()) for n in base_state)
    kept = sum(share * report["overall"]["elements"]
               for share in report["overall"]["kept_share"]["method"])
    assert moved == round(kept)
