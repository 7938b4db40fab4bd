"""Plumbing of benchmarks/quality on a tiny BertModel and synthetic tasks (not the real run).

Light regime: fine-tune two tasks, merge with `cabs` through `mergekit-multi` at scale 1 and
again through plain `mergekit-yaml` at the chosen scale, and check the record the report is
built from. Shared-ancestry regime: ancestor, descendants, merges against the base and the
ancestor, `mergekit-cabs inspect`, the order study and every report stage. Few merge
processes, to stay fast; tests/test_bert_merge.py covers MergeKit's own methods on BERT.
"""

import pytest
import torch

import benchmarks.quality.run as quality_run
from benchmarks.quality.merging import MethodRun
from benchmarks.quality.pipeline import AncestrySettings, SeedSettings, candidate_orders, equal_kept_runs, run_seed
from benchmarks.quality.report import aggregate, ca_gains, comparisons, ingredient_effects, markdown, search_effects
from benchmarks.quality.tasks import SplitSizes, fit_sizes
from benchmarks.quality.training import EncodedTask, TrainSettings, encode_split

# Merges and training runs: the full suite only (`-m "not slow"` skips them).
pytestmark = pytest.mark.slow

VOCAB = 64


def synthetic_task(name: str, marker: int, seed: int) -> EncodedTask:
    """Label 1 iff token ``marker`` occurs: learnable in one epoch by a tiny encoder."""
    generator = torch.Generator().manual_seed(seed)

    def split(n: int):
        ids, labels = [], []
        for row in range(n):
            length = int(torch.randint(4, 10, (1,), generator=generator))
            tokens = torch.randint(5, VOCAB, (length,), generator=generator)
            tokens[tokens == marker] = marker + 1
            label = row % 2
            if label:
                tokens[int(torch.randint(0, length, (1,), generator=generator))] = marker
            ids.append([2, *tokens.tolist(), 3])
            labels.append(label)
        return encode_split(ids, labels)

    return EncodedTask(name, 2, split(32), split(8), split(8))


@pytest.fixture()
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=32)
    return BertModel(config)


@pytest.mark.benchmark
def test_one_seed_end_to_end(tiny_bert, tmp_path):
    tasks = [synthetic_task("alpha", 7, 1), synthetic_task("beta", 11, 2)]
    runs = [MethodRun("cabs", 0.25, 16)]
    settings = SeedSettings(train=TrainSettings(epochs=1, batch_size=8, body_lr=1e-3),
                            densities=(0.25,), block_size=16, initial_exponents=(0, 1),
                            orders=False, inspect=False, search=(("cabs@0.25", "search"), ("cabs@0.25", "search, first stage"),
                                    ("cabs@0.25", "search, layer groups")),
                            search_evaluations=10)  # the start, 3 shared-stage points, 1 generation of 6
    arms = run_seed(tiny_bert, tasks, settings, seed=0, workdir=tmp_path, runs=runs, log=lambda _: None)

    (record,) = arms.values()
    cabs = record["methods"]["cabs@0.25"]
    assert cabs["rescale_max_abs_diff"] < 1e-5  # base + s * D is what mergekit-yaml writes at s
    scales = sorted(float(s) for s in cabs["val_curve"])
    assert scales[0] < cabs["scale"] < scales[-1]  # the best is interior
    assert set(cabs["test"]) == {"alpha", "beta"}
    assert len(cabs["test_correct"]["alpha"]) == 8  # one bit per test sentence
    kinds = {"magnitude_linear@0.25", "nm_linear@0.25", "cabs@0.25"}
    assert set(record["overlap"]) == kinds | {k + " (encoder layers)" for k in kinds}
    assert record["overlap"]["cabs@0.25"] == 0.0  # 2 x 0.25 <= 1: CA masks are disjoint
    assert record["overlap"]["magnitude_linear@0.25"] > 0.0
    assert record["train"]["steps"] == {"alpha": 4, "beta": 4}  # 32 sentences, batch 8, 1 epoch
    searched = record["methods"]["cabs@0.25 [search]"]  # merged by mergekit-yaml at the found weights
    assert searched["search"]["evaluations"] == 10 and len(searched["weights"]) == 2
    assert all(1 / 16 <= w <= 16.0 for w in searched["weights"].values())
    assert searched["search"]["best_fitness"] <= searched["search"]["start_fitness"] == 0.0
    assert len(searched["test_correct"]["beta"]) == 8 and 0.0 <= searched["val_mean"] <= 1.0
    staged = record["methods"]["cabs@0.25 [search, first stage]"]["search"]
    assert staged["variant"] == "search, first stage" and staged["evaluations"] > 10  # the cheap stage's too
    grouped = record["methods"]["cabs@0.25 [search, layer groups]"]["weights"]
    assert all(set(groups) == {"attention", "mlp", "embeddings"} for groups in grouped.values())
    effect, staged_effect, _ = search_effects([record])
    assert effect["vs_plain"] is None and staged_effect["vs_plain"] is not None
    assert effect["grid"] == "cabs@0.25" and effect["grid_scales"] == [cabs["scale"]]
    summary = aggregate([record], ["alpha", "beta"])
    text = markdown({"light": {**summary, "comparisons": comparisons([record]), "searches": [effect]}},
                    {"light": [record]}, {"light": ["alpha", "beta"]}, [], {"preset": "smoke", "order_density": 0.1})
    assert "| cabs@0.25 |" in text and "| merge base + task heads |" in text and "| cabs@0.25 [search] | 10 |" in text


@pytest.mark.slow  # ~7 MergeKit processes: about 1-2 minutes on 2 shared cores
@pytest.mark.benchmark
def test_ancestry_regime_end_to_end(tiny_bert, tmp_path):
    tasks = [synthetic_task("alpha", 7, 1), synthetic_task("beta", 11, 2)]
    runs = [MethodRun("nm_linear", 0.25, 16), MethodRun("cabs", 0.25, 16)]
    train = TrainSettings(epochs=1, batch_size=8, body_lr=1e-3)
    settings = SeedSettings(train=train, densities=(0.25,), block_size=16, initial_exponents=(0, 1),
                            verify=lambda run: False, order_density=0.25,
                            ancestry=AncestrySettings(descendants=(("near", train),)))
    arms = run_seed(tiny_bert, tasks, settings, seed=0, workdir=tmp_path, runs=runs, name="ancestry",
                    log=lambda _: None)

    assert set(arms) == {"ancestry near, vs base", "ancestry near, vs ancestor"}
    vs_base, vs_ancestor = arms["ancestry near, vs base"], arms["ancestry near, vs ancestor"]
    assert vs_base["ancestor_alone"] == vs_ancestor["ancestor_alone"]
    # The same descendants: larger task vectors against the base than against the ancestor.
    assert all(vs_base["task_vector_norms"][t] > vs_ancestor["task_vector_norms"][t] for t in ("alpha", "beta"))
    inspected = vs_base["inspect"]["cabs@0.25"]
    assert inspected["overlap"]["method"] == 0.0 and inspected["overlap"]["magnitude"] > 0.0
    assert len(inspected["kept_share"]["method"]) == 2 and len(inspected["lost_to_ca"]) == 2
    assert sum("orders" in a for a in arms.values()) == 1  # in the arm with the largest overlap
    gains = ca_gains({label: [arm] for label, arm in arms.items()})
    assert {g["arm"] for g in gains} == set(arms) and {g["pair"] for g in gains} == {"cabs - nm_linear"}
    summaries = {label: {**aggregate([arm], ["alpha", "beta"]), "comparisons": comparisons([arm])}
                 for label, arm in arms.items()}
    assert "ancestor alone" in summaries["ancestry near, vs base"]["comparisons"]["cabs@0.25"]
    text = markdown(summaries, {label: [arm] for label, arm in arms.items()},
                    {label: ["alpha", "beta"] for label in arms}, gains, {"preset": "smoke", "order_density": 0.25})
    assert "ancestor alone (mixture fine-tune, its own heads)" in text and "largest norm first" in text


def test_orders_always_include_the_norm_rule_and_the_yaml_order():
    settings = SeedSettings(train=TrainSettings(epochs=1), densities=(0.1,), block_size=32, max_orders=4)
    orders = candidate_orders(6, [1.0, 5.0, 2.0, 3.0, 0.5, 4.0], settings, seed=0)
    named = {rule: order for order, rules in orders.items() for rule in rules}
    assert named["largest norm first"] == (1, 5, 3, 2, 0, 4)
    assert named["yaml order"] == (0, 1, 2, 3, 4, 5)
    assert len(orders) <= 4 + 3


def test_equal_kept_density_scales_n_by_the_kept_share_ratio():
    inspected = {"cabs@0.1": {"kept_share": {"method": [0.05, 0.05], "magnitude": [0.09, 0.09]}}}
    (run,) = equal_kept_runs(["cabs", "nm_linear"], inspected, 0.1, 32)
    assert (run.method, run.density) == ("cabs", 6 / 32)  # round(3.2 * 0.09 / 0.05) = 6


def test_a_small_task_keeps_validation_and_shares_the_rest():
    assert fit_sizes(SplitSizes(2000, 200, 1000), 1114) == SplitSizes(train=457, val=200, test=457)
    assert fit_sizes(SplitSizes(512, 96, 256), 1114) == SplitSizes(512, 96, 256)
    assert fit_sizes(SplitSizes(512, 96, 1000), 1114) == SplitSizes(train=509, val=96, test=509)


def test_full_preset_runs_cabs_ties_only_where_the_densities_sum_above_one():
    regime = quality_run.PRESETS["full"]["interference"]
    labels = {r.label for r in quality_run.regime_runs(regime, quality_run.DENSITIES, None)}
    assert "cabs_ties@0.25" in labels and 6 * 0.25 > 1  # six tasks: positions are shared
    assert "cabs_ties@0.1" not in labels and "dare_ties@0.25" not in labels
    assert {"cabs@0.1", "nm_linear@0.1", "cabs@0.25", "nm_linear@0.25"} <= labels  # the CA pair, both densities
    ancestry = quality_run.PRESETS["full"]["ancestry"]
    assert {"cabs@0.1", "cabs@0.25", "nm_linear@0.25"} <= {r.label for r in quality_run.regime_runs(ancestry, quality_run.DENSITIES, None)}


def test_resume_keeps_a_finished_regime_only_if_it_ran_with_the_same_settings():
    settings = {"tasks": ["a", "b"], "seeds": [0], "split_sizes_per_task": {}, "train": {"epochs": 2},
                "ancestry": None, "runs": ["cabs@0.1"], "equal_kept": []}
    previous = {"meta": {"preset": "full", "densities": [0.1, 0.25], "command": "python run.py",
                         "regimes": {"light": {**settings, "wall_seconds": 5.0}}}}
    kept = quality_run.finished_regime(previous, "light", settings, "full", (0.1, 0.25))
    assert kept["wall_seconds"] == 5.0 and kept["command"] == "python run.py"
    assert quality_run.finished_regime(previous, "light", {**settings, "seeds": [0, 1]}, "full", (0.1, 0.25)) is None
    assert quality_run.finished_regime(previous, "light", settings, "full", (0.1,)) is None  # other densities
    assert quality_run.finished_regime(previous, "light", settings, "quick", (0.1, 0.25)) is None
    assert quality_run.finished_regime(previous, "ancestry", settings, "full", (0.1, 0.25)) is None  # never ran
    assert quality_run.finished_regime({"arms": {}}, "light", settings, "full", (0.1, 0.25)) is None  # stopped half-way
    assert quality_run.arm_regime("ancestry near, vs base") == "ancestry" and quality_run.arm_regime("light") == "light"


def test_an_ingredient_effect_is_the_paired_difference_with_minus_without():
    seeds = [{"methods": {"nm_linear@0.1": {"density": 0.1, "test_correct": {"a": "1111", "b": "1010"}},
                          "magnitude_linear@0.1": {"density": 0.1, "test_correct": {"a": "1100", "b": "1010"}}}}]
    (effect,) = ingredient_effects(seeds)
    assert effect["with"] == "nm_linear@0.1" and effect["without"] == "magnitude_linear@0.1"
    assert effect["mean"] == 0.25 and effect["low"] <= 0.25 <= effect["high"]  # (0.5 + 0) / 2 tasks
