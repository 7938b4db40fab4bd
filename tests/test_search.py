"""mergekit-cabs search (CABS+ adaptive weight allocation) on tiny models: unit tier."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_cabs.search import DEFAULT_FITNESS, SearchInputError, SearchSettings, fitness, search_causal_lm, search_weights
from mergekit_cabs.kernels import task_masks, tensor_seed
from mergekit_cabs.methods import METHODS_BY_NAME
from mergekit_cabs.kernels import rescale
from mergekit_cabs.search import config as search_config
from mergekit_cabs.search import groups, pruned
from mergekit_cabs.search.calibration import CausalLMLoss, CalibrationTask, load_base_tokenizer, read_task
from mergekit_cabs.search.model import CandidateModel
from tests.search_helpers import (
    merged_state,
    same_bits,
    tiny_family_with_tokenizer,
    write_search_config,
    write_task,
)


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    return tiny_family_with_tokenizer(tmp_path_factory.mktemp("search_family"))


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    root = tmp_path_factory.mktemp("search_tasks")
    return [write_task(root / "a.jsonl", 1, words=range(3, 30)),
            write_task(root / "b.jsonl", 2, words=range(30, 64))]


@pytest.fixture(scope="module")
def task_losses(family, tasks):
    tokenizer = load_base_tokenizer(family[0])
    return [CausalLMLoss(read_task(path, tokenizer, 32), 4, "cpu") for path in tasks]


def quick(**overrides):
    return SearchSettings(**{"evaluations": 13, "population": 4, "shared_stage": False, **overrides})


def test_the_paper_fitness_matches_a_hand_computed_case():
    # Delta = (1.1 - 1)/1 = 0.1 > 0 -> 100 * 0.1 = 10; (1.5 - 2)/2 = -0.25 -> 1 * -0.25.
    assert fitness([1.1, 1.5], [1.0, 2.0], alpha=100, beta=1) == pytest.approx(10 - 0.25, abs=1e-12)
    assert fitness([0.5], [1.0], alpha=100, beta=3) == pytest.approx(-1.5, abs=1e-12)
    assert fitness([1.0, 2.0], [1.0, 2.0], alpha=100, beta=1) == 0.0
    assert fitness([math.nan, 1.0], [1.0, 1.0], alpha=100, beta=1) == math.inf


def test_the_absolute_fitness_matches_a_hand_computed_case():
    # d = 1.1 - 1 = 0.1 > 0 -> 3 * 0.1 = 0.3; 1.5 - 2 = -0.5 -> 2 * -0.5 = -1.
    assert fitness([1.1, 1.5], [1.0, 2.0], alpha=3, beta=2, name="absolute") == pytest.approx(0.3 - 1.0, abs=1e-12)
    assert fitness([1.0, 2.0], [1.0, 2.0], alpha=1, beta=1, name="absolute") == 0.0
    assert fitness([1.0, math.inf], [1.0, 1.0], alpha=1, beta=1, name="absolute") == math.inf


def test_a_near_solved_task_freezes_the_paper_fitness_but_not_the_absolute_fitness():
    # The causal-LM benchmark's case: last_digit 0.0012 -> 0.0077 nats (+550 %) while the
    # other three tasks fall by 3-21 %. The paper's fitness rejects the candidate.
    start, candidate = [0.0012, 0.8, 0.5, 1.2], [0.0077, 0.776, 0.45, 0.948]
    assert fitness(candidate, start, alpha=100, beta=1, name="cabs-plus") > 500
    assert fitness(candidate, start, alpha=1, beta=1, name="absolute") == pytest.approx(0.0065 - 0.024 - 0.05 - 0.252)


def test_each_fitness_has_its_own_default_factors_and_settings_can_override_them():
    assert SearchSettings(fitness="cabs-plus").fitness_factors() == (100.0, 1.0)
    assert SearchSettings(fitness="absolute").fitness_factors() == (1.0, 1.0)
    assert SearchSettings(fitness="absolute", alpha=4.0).fitness_factors() == (4.0, 1.0)
    assert SearchSettings().fitness == DEFAULT_FITNESS


def test_the_same_seed_gives_the_same_evaluations(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    runs = [search_weights(config, task_losses, quick(seed=seed, evaluations=9), progress=False) for seed in (3, 3, 4)]
    assert runs[0].evaluations == runs[1].evaluations
    assert [r.weights for r in runs[0].evaluations] != [r.weights for r in runs[2].evaluations]


@pytest.mark.parametrize("log_scale", [True, False], ids=["log", "linear"])
def test_every_evaluated_weight_lies_within_the_bounds(family, task_losses, tmp_path, log_scale):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family, weights=[0.7, 0.7])
    result = search_weights(config, task_losses, quick(bounds=(0.6, 0.8), sigma=5.0, log_scale=log_scale,
                                                       shared_stage=True), progress=False)
    weights = [w for r in result.evaluations for w in r.weights]
    assert len(weights) == 2 * len(result.evaluations) > 2
    assert all(0.6 <= w <= 0.8 for w in weights)
    assert result.start.weights == (0.7, 0.7) and result.start.fitness == 0.0


def test_the_shared_stage_scales_every_weight_by_one_power_of_two_and_refines_by_half_a_power(
        family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family, weights=[1.0, 0.5])
    result = search_weights(config, task_losses, quick(evaluations=40, shared_stage=True), progress=False)
    shared = [r for r in result.evaluations if r.stage == "shared"]
    factors = sorted(math.log2(r.weights[0]) for r in shared)
    assert all(r.weights[1] == pytest.approx(r.weights[0] / 2) for r in shared)
    whole = sorted([k for k in factors if k == round(k)] + [0.0])  # the start is 2^0
    assert {-1.0, 1.0, 2.0} <= set(whole) and whole == list(range(int(whole[0]), int(whole[-1]) + 1))
    whole_points = [result.start] + [r for r in shared if math.log2(r.weights[0]) in whole]
    best = min(whole_points, key=lambda r: (r.fitness, abs(math.log2(r.weights[0]))))
    k = math.log2(best.weights[0])
    assert k not in (whole[0], whole[-1]) or k in (-4.0, 4.0)  # interior, or at a bound of the box
    assert sorted(f for f in factors if f != round(f)) == pytest.approx([k - 0.5, k + 0.5])
    stages = [r.stage for r in result.evaluations]
    assert stages.index("main") > max(i for i, st in enumerate(stages) if st == "shared")


def test_the_shared_stage_widens_toward_a_best_factor_at_its_edge(family, tmp_path):
    # A loss that falls as the weights grow: the stage widens upward to the bound 16 = 2^4.
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)

    def shrinking(model):
        return 1.0 / (1.0 + sum(float(p.abs().sum()) for p in model.parameters()) * 1e-3)

    result = search_weights(config, [shrinking], quick(evaluations=30, shared_stage=True), progress=False)
    factors = sorted(math.log2(r.weights[0]) for r in result.evaluations if r.stage == "shared")
    assert factors[-1] == 4.0 and 3.5 in factors and 4.5 not in factors


def test_the_log_scale_moves_every_weight_by_factors_around_the_start(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family, weights=[4.0, 4.0])
    result = search_weights(config, task_losses, quick(evaluations=21, sigma=0.25), progress=False)
    main = [w for r in result.evaluations if r.stage == "main" for w in r.weights]
    assert main and all(1.0 < w < 16.0 for w in main)  # within 8 sigma of log2(4) = 2


@pytest.mark.parametrize("method, density, shared, seed", [
    ("cabs", 0.25, None, None),
    ("cabs_ties", 0.4, {"normalize": True, "block_size": 16}, None),
    ("nm_linear", 0.75, {"lambda": 0.8}, None),
    ("magnitude_linear", 0.3, {"normalize": True}, None),
    ("ca_ties", 0.6, None, None),
    ("ca_dare_ties", 0.5, None, 1234),
    ("cabs", 0.3, {"rescale": "l1", "block_size": 16}, None),
    ("ca_magnitude_linear", 0.3, {"rescale": "l2", "normalize": True}, None),
    ("ca_dare_linear", 0.4, {"rescale": "l1"}, 99),
])
def test_an_assembled_candidate_is_bit_for_bit_the_mergekit_merge(family, tmp_path, method, density, shared, seed):
    config = write_search_config(tmp_path / "c.yml", method, *family, density=density, shared=shared)
    search = search_config.read_search_config(config)
    candidate = CandidateModel.prepare(search, random_seed=seed)
    for vector in ([0.37, 1.61], [1.9, 0.1], [-0.6, -1.3]):  # negative: every dropped entry a -0
        scales = candidate.scales(False)
        candidate.assemble(candidate.tensor_weights(scales, vector))
        reference = merged_state(search_config.merge_config_text(search, vector), tmp_path / f"m{vector[0]}", seed)
        state = candidate.model.state_dict()
        assert reference and all(same_bits(state[name], value) for name, value in reference.items())


@pytest.mark.parametrize("method", ["cabs", "nm_linear", "magnitude_linear"])
def test_masks_pruned_span_by_span_are_the_whole_tensors_masks(monkeypatch, method):
    torch.manual_seed(0)
    base = torch.randn(1000).bfloat16()  # 62 blocks of 16 and a tail of 8
    tuned = tuple((base.float() + 0.1 * torch.randn(1000)).bfloat16() for _ in range(3))
    recipe = METHODS_BY_NAME[method].recipe
    inputs = pruned.TensorInputs("w", base, tuned, torch.bfloat16, recipe, (0.3, 0.2, 0.25), 16, 1.0, False, 0)
    monkeypatch.setattr(rescale, "NORM_SPAN", 40)  # spans of 2 blocks
    got, sums = pruned.model_masks(inputs, base, list(tuned))
    taus = [t.float() - base.float() for t in tuned]  # the reference: the whole tensor at once
    want = task_masks(recipe, taus, (0.3, 0.2, 0.25), 16, [tensor_seed(0, "w", i) for i in range(3)])
    assert all(torch.equal(a, b) for a, b in zip(got, want)) and all(m.any() for m in got)
    for i, (tau, mask) in enumerate(zip(taus, want)):
        tau = tau.double()
        assert sums.dense[1][i] == pytest.approx(float(tau.abs().sum()), rel=1e-12)
        assert sums.kept[1][i] == pytest.approx(float((tau * mask).abs().sum()), rel=1e-12)
        assert sums.dense[2][i] == pytest.approx(float(tau.square().sum()), rel=1e-12)
        assert sums.kept[2][i] == pytest.approx(float((tau * mask).square().sum()), rel=1e-12)


@pytest.mark.parametrize("method", ["cabs", "cabs_ties"])
def test_a_candidate_pruned_and_merged_in_small_spans_is_bit_for_bit_the_mergekit_merge(family, tmp_path,
                                                                                         monkeypatch, method):
    monkeypatch.setattr(pruned, "SUPPORT_CHUNK", 24)
    config = write_search_config(tmp_path / "c.yml", method, *family, density=0.3, shared={"block_size": 8})
    search = search_config.read_search_config(config)
    candidate = CandidateModel.prepare(search)
    vector = [0.37, 1.61]
    candidate.assemble(candidate.tensor_weights(candidate.scales(False), vector))
    reference = merged_state(search_config.merge_config_text(search, vector), tmp_path / "m")
    state = candidate.model.state_dict()
    assert reference and all(same_bits(state[name], value) for name, value in reference.items())


def test_layer_group_weights_become_filters_that_mergekit_resolves_to_the_same_merge(family, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    search = search_config.read_search_config(config)
    candidate = CandidateModel.prepare(search)
    scales = candidate.scales(True)
    assert [g for _, g in scales] == ["attention"] * 2 + ["mlp"] * 2 + ["embeddings"] * 2
    vector = [0.3, 1.2, 1.7, 0.5, 0.9, 1.1]
    candidate.assemble(candidate.tensor_weights(scales, vector))
    by_model = {m: {} for m in search.models}
    for (model, group), weight in zip(scales, vector):
        by_model[model][group] = weight
    reference = merged_state(search_config.merge_config_text(search, [by_model[m] for m in search.models]), tmp_path / "m")
    state = candidate.model.state_dict()
    assert all(same_bits(state[name], value) for name, value in reference.items())


@pytest.mark.parametrize("name, group", [
    ("model.layers.0.self_attn.q_proj.weight", "attention"), ("model.layers.0.mlp.up_proj.weight", "mlp"),
    ("model.embed_tokens.weight", "embeddings"), ("lm_head.weight", "embeddings"),
    ("encoder.layer.0.attention.self.query.weight", "attention"),
    ("encoder.layer.0.attention.output.dense.weight", "attention"),
    ("encoder.layer.0.intermediate.dense.weight", "mlp"), ("encoder.layer.0.output.dense.weight", "mlp"),
    ("encoder.layer.0.output.LayerNorm.weight", "embeddings"), ("embeddings.word_embeddings.weight", "embeddings"),
])
def test_llama_and_bert_tensor_names_fall_in_their_layer_groups(name, group):
    assert groups.group_of(name) == group


def test_layer_group_weights_without_a_group_write_filters_for_the_groups_they_have(family, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    search = search_config.read_search_config(config)
    text = search_config.merge_config_text(search, [{"mlp": 1.5}, {"attention": 0.5, "embeddings": 0.25}])
    first, second = (m["parameters"]["weight"] for m in yaml.safe_load(text)["models"])
    assert first == [{"filter": "mlp", "value": 1.5}, {"filter": "intermediate", "value": 1.5},
                     {"filter": "output.dense", "value": 1.5}, {"value": 1.5}]
    assert second[-1] == {"value": 0.25} and {e.get("filter") for e in second[:-1]} == {"attn", "attention"}


def test_no_checkpoint_is_read_and_nothing_is_pruned_again_after_preparation(family, tmp_path, monkeypatch):
    copies = [shutil.copytree(p, tmp_path / Path(p).name) for p in (family[0], *family[1])]
    config = write_search_config(tmp_path / "c.yml", "cabs", str(copies[0]), [str(c) for c in copies[1:]])
    search = search_config.read_search_config(config)
    reference = merged_state(search_config.merge_config_text(search, [0.5, 1.5]), tmp_path / "m")
    candidate = CandidateModel.prepare(search)
    for copy in copies:
        shutil.rmtree(copy)
    from mergekit_cabs.search import pruned

    monkeypatch.setattr(pruned, "task_masks", lambda *a, **k: pytest.fail("pruned again"))
    candidate.assemble(candidate.tensor_weights(candidate.scales(False), [0.5, 1.5]))
    state = candidate.model.state_dict()
    assert all(same_bits(state[name], value) for name, value in reference.items())


def test_the_batched_loss_is_the_mean_over_every_predicted_token(family, tasks):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.float32).eval()
    task = read_task(tasks[0], load_base_tokenizer(family[0]), 32)
    total, count = 0.0, 0
    with torch.no_grad():
        for ids in task.token_ids:  # one text at a time, no padding: the slow reference
            logits = model(torch.tensor([ids])).logits[0, :-1]
            total += float(torch.nn.functional.cross_entropy(logits, torch.tensor(ids[1:]), reduction="sum"))
            count += len(ids) - 1
    assert CausalLMLoss(task, 3, "cpu")(model) == pytest.approx(total / count, rel=1e-5)


def test_a_prompt_completion_line_counts_only_the_completion_tokens(family, tmp_path):
    from transformers import AutoModelForCausalLM

    tokenizer = load_base_tokenizer(family[0])
    path = tmp_path / "pairs.jsonl"
    pairs = [("w3 w4 w5 w6", "w7 w8"), ("w9 w10", "w11 w12 w13"), ("w14", "w15")]
    path.write_text("".join(json.dumps({"prompt": p, "completion": c}) + "\n" for p, c in pairs)
                    + json.dumps({"text": "w16 w17 w18"}) + "\n")
    task = read_task(str(path), tokenizer, 32)
    model = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():  # the slow reference: each sequence alone, the predicted part by hand
        for prompt, completion in pairs + [("w16 w17 w18", None)]:
            head = tokenizer(prompt)["input_ids"]
            tail = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
            ids = head + tail
            start = len(head) if completion else 1
            logits = model(torch.tensor([ids])).logits[0]
            total += float(torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]),
                                                             reduction="sum"))
            count += len(ids) - start
    assert task.starts[:3] == tuple(len(tokenizer(p)["input_ids"]) for p, _ in pairs) and task.starts[3] == 1
    assert CausalLMLoss(task, 2, "cpu")(model) == pytest.approx(total / count, rel=1e-5)
    assert task.subset(0.5).starts == (task.starts[0], task.starts[2])


def chat_like_task(tokenizer, tmp_path, lines=7):
    """Prompt-completion lines that share a 12-token prefix, as chat-formatted prompts do."""
    prefix = " ".join(f"w{i}" for i in range(3, 15))
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"{prefix} w{20 + i} w{30 + (i * 7) % 20}" + " w40" * (i % 3),
                                        "completion": f"w{50 + i % 5} w2"}) + "\n" for i in range(lines)))
    return read_task(str(path), tokenizer, 64)


def slow_text_nlls(model, task):
    """The reference: each whole text alone through the model, its predicted tokens' NLL."""
    out = []
    with torch.no_grad():
        for ids, start in zip(task.token_ids, task.starts):
            logits = model(torch.tensor([ids])).logits[0]
            out.append(float(torch.nn.functional.cross_entropy(logits[start - 1:-1], torch.tensor(ids[start:]),
                                                               reduction="sum")))
    return out


def test_a_shared_prompt_prefix_runs_once_and_gives_every_texts_loss(family, tmp_path):
    from transformers import AutoModelForCausalLM

    from mergekit_cabs.search.forward import TextNLL

    model = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.float32).eval()
    task = chat_like_task(load_base_tokenizer(family[0]), tmp_path)
    nll = TextNLL(task.token_ids, task.starts, 3, torch.device("cpu"))
    assert nll.prefix == 12 and nll(model) == pytest.approx(slow_text_nlls(model, task), rel=1e-5)
    assert nll.fast and nll.keep_logits  # both shortcuts checked and kept
    assert [len(b.input_ids[0]) for b in nll.prefixed] < [len(b.input_ids[0]) for b in nll.plain]


def test_a_model_whose_cache_fails_falls_back_to_whole_texts(family, tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from mergekit_cabs.search import forward

    model = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.float32).eval()
    task = chat_like_task(load_base_tokenizer(family[0]), tmp_path)
    plain_logits = forward.batch_logits

    def broken(model, batch, prefix_ids, keep_logits):
        if prefix_ids is not None:
            raise AttributeError("no batch_repeat_interleave")
        return plain_logits(model, batch, prefix_ids, keep_logits)

    monkeypatch.setattr(forward, "batch_logits", broken)
    nll = forward.TextNLL(task.token_ids, task.starts, 3, torch.device("cpu"))
    assert nll(model) == pytest.approx(slow_text_nlls(model, task), rel=1e-5) and nll.fast is False


def test_the_error_loss_is_one_minus_each_texts_mean_token_probability(family, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(family[0], dtype=torch.float32).eval()
    task = chat_like_task(load_base_tokenizer(family[0]), tmp_path)
    counts = [len(ids) - start for ids, start in zip(task.token_ids, task.starts)]
    want = sum(1 - math.exp(-v / n) for v, n in zip(slow_text_nlls(model, task), counts)) / len(counts)
    assert CausalLMLoss(task, 4, "cpu", kind="error")(model) == pytest.approx(want, rel=1e-5)
    assert 0 < want < 1


def test_a_first_stage_subset_spreads_over_the_file():
    task = CalibrationTask("t", tuple((i, i + 1) for i in range(10)))
    assert [ids[0] for ids in task.subset(0.4).token_ids] == [0, 2, 5, 7]
    assert len(task.subset(1.0).token_ids) == 10


def test_a_first_stage_runs_before_the_main_stage_and_best_is_from_the_main_stage(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    first = [CausalLMLoss(CalibrationTask(loss.task.path, loss.task.token_ids[:3]), 4, "cpu") for loss in task_losses]
    result = search_weights(config, task_losses, quick(first_stage_evaluations=9), first_stage_losses=first,
                            progress=False)
    stages = [r.stage for r in result.evaluations]
    assert stages[0] == "start" and stages[1:10] == ["first"] * 9 and set(stages[10:]) == {"main"}
    assert result.best.stage in ("start", "main")
    assert sum(s != "first" for s in stages) <= 13


def test_patience_stops_the_search_when_the_best_fitness_stops_moving(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    result = search_weights(config, task_losses, quick(evaluations=40, patience=1, min_improvement=1e9),
                            progress=False)
    assert len(result.evaluations) == 1 + 2 * 4
    assert "no improvement" in result.stopped


def test_the_cli_writes_merge_yml_with_the_best_weights_and_search_json(family, tasks, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    out = tmp_path / "out"
    result = search_causal_lm(config, tasks, out, quick(), max_length=32, batch_size=4, progress=False)
    record = json.loads((out / "search.json").read_text())
    merged = yaml.safe_load((out / "merge.yml").read_text())
    weights = [m["parameters"]["weight"] for m in merged["models"]]
    assert weights == list(result.best.weights) == list(record["best"]["weights"].values())
    assert record["best"]["losses"] == list(result.best.losses) and len(record["best"]["losses"]) == 2
    assert record["bounds"] == [1 / 16, 16.0] and record["start"]["fitness"] == 0.0
    assert set(record["kept_shares"]) == set(result.models)
    assert all(0 < v["l1"] < 1 and 0 < v["energy"] < 1 for v in record["kept_shares"].values())
    assert [c["texts"] for c in record["calibration"]] == [10, 10]
    assert record["best_at_bounds"] == result.best_at_bounds()
    assert len(record["evaluations"]) == len(result.evaluations) and record["versions"]["cmaes"]
    assert record["best"]["fitness"] == min(e["fitness"] for e in record["evaluations"] if e["stage"] != "first")
    assert (out / "search.png").is_file()


def test_weights_within_one_percent_of_the_box_width_from_an_edge_are_named_with_the_edge():
    from mergekit_cabs.search.engine import weights_at_bounds

    scales = [("a", None), ("b", None), ("c", "mlp"), ("d", None)]
    hits = weights_at_bounds(scales, [1.985, 1.0, 0.118, 0.12], (0.1, 2.0))
    assert hits == [{"model": "a", "group": None, "weight": 1.985, "bound": "upper"},
                    {"model": "c", "group": "mlp", "weight": 0.118, "bound": "lower"}]
    # On the log scale the margin is 1 % of log2(16) - log2(1/16) = 8 powers of two.
    log_hits = weights_at_bounds(scales[:2], [15.2, 1 / 15.5], (1 / 16, 16.0), log_scale=True)
    assert [h["bound"] for h in log_hits] == ["upper", "lower"]
    assert weights_at_bounds(scales[:1], [14.0], (1 / 16, 16.0), log_scale=True) == []


def test_the_cli_says_which_weight_ended_at_a_bound_and_how_to_widen_it(monkeypatch, tmp_path):
    from types import SimpleNamespace

    from click.testing import CliRunner

    import mergekit_cabs.search as search_package
    from mergekit_cabs.cli import main

    best = SimpleNamespace(fitness=-0.5, index=3, weights=(2.0, 0.7))
    result = SimpleNamespace(best=best, evaluations=[best] * 5, stopped="budget spent",
                             weights_record=lambda w: {"m1": w[0], "m2": w[1]},
                             best_at_bounds=lambda: [{"model": "m1", "group": None, "weight": 2.0, "bound": "upper"}])
    monkeypatch.setattr(search_package, "search_causal_lm", lambda *a, **k: result)
    run = CliRunner().invoke(main, ["search", str(tmp_path / "c.yml"), "--data", "t.jsonl", "--quiet"])
    assert run.exit_code == 0, run.output
    assert "m1 at the upper bound 2; the best weights may lie beyond --bounds 0.0625 16: widen them" in run.output


# ---- bad input fails before the search starts ----

@pytest.fixture
def no_search(monkeypatch):
    monkeypatch.setattr(CandidateModel, "prepare", classmethod(lambda *a, **k: pytest.fail("search started")))


def cli_search(config, data, out, **settings):
    return search_causal_lm(config, data, out, quick(**settings), max_length=32, progress=False)


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    ("\n\n", "has no texts"),
    ('{"text": "w3 w4"}\nnot json\n', "line 2 is not JSON"),
    ('{"text": "w3 w4"}\n{"txt": "w3 w4"}\n', 'line 2 has no "text"'),
    ('{"text": "w3 w4"}\n{"text": "w5"}\n', "line 2: the text gives 1 token"),
    ('{"text": "w3 w4"}\n{"prompt": "w3 w4"}\n', 'line 2 has no "text" string and no "prompt" and "completion"'),
    ('{"prompt": "' + " ".join(["w3"] * 40) + '", "completion": "w4"}\n', "line 1: no completion token is left"),
])
def test_a_bad_data_file_fails_naming_the_file_and_line(family, tmp_path, no_search, content, message):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    data = tmp_path / "task.jsonl"
    if content is not None:
        data.write_text(content)
    with pytest.raises(SearchInputError, match=message) as error:
        cli_search(config, [str(data)], tmp_path / "out")
    assert str(data) in str(error.value)


def test_a_base_without_a_tokenizer_fails_naming_the_base(tmp_path, tasks, no_search):
    base, tuned = tiny_family_with_tokenizer(tmp_path / "f", n_finetuned=1)
    for name in Path(base).iterdir():
        if "token" in name.name or name.name == "special_tokens_map.json":
            name.unlink()
    config = write_search_config(tmp_path / "c.yml", "cabs", base, tuned)
    with pytest.raises(SearchInputError, match="has no tokenizer"):
        cli_search(config, tasks, tmp_path / "out")


@pytest.mark.parametrize("bounds", [(1.0, 1.0), (2.0, 0.5), (-0.1, 2.0)])
def test_bounds_with_lo_not_below_hi_or_negative_fail(family, tasks, tmp_path, no_search, bounds):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    with pytest.raises(SearchInputError, match="--bounds"):
        cli_search(config, tasks, tmp_path / "out", bounds=bounds)


@pytest.mark.parametrize("edit, message", [
    ({"merge_method": "ties"}, "not one of this package's methods"),
    ({"merge_method": "task_arithmetic"}, "magnitude_linear with density 1"),
    ({"tokenizer_source": "base"}, "tokenizer_source"),
    ({"weight": [0.5, 1.5]}, "a gradient or filter"),
])
def test_a_config_the_search_cannot_take_fails_naming_the_fix(family, tasks, tmp_path, no_search, edit, message):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    raw = yaml.safe_load(Path(config).read_text())
    if "weight" in edit:
        raw["models"][1]["parameters"]["weight"] = edit["weight"]
    else:
        raw.update(edit)
    Path(config).write_text(yaml.safe_dump(raw))
    with pytest.raises(SearchInputError, match=message):
        cli_search(config, tasks, tmp_path / "out")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_fails(family, tasks, tmp_path, no_search):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    with pytest.raises(SearchInputError, match="CUDA is not available"):
        cli_search(config, tasks, tmp_path / "out", device="cuda")


def test_a_dare_variant_without_random_seed_fails_naming_the_flag(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "ca_dare_linear", *family)
    with pytest.raises(SearchInputError, match="--random-seed"):
        search_weights(config, task_losses, quick(), progress=False)


def test_a_start_weight_outside_the_bounds_fails_naming_the_model(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family, weights=[1.0, 32.0])
    with pytest.raises(SearchInputError, match=f"start weight 32.0 of {family[1][1]}"):
        search_weights(config, task_losses, quick(), progress=False)


def test_a_forward_dtype_narrower_than_the_merge_fails(family, task_losses, tmp_path):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family, dtype="float32")
    with pytest.raises(SearchInputError, match="cannot hold the merge's float32"):
        search_weights(config, task_losses, quick(dtype="bfloat16"), progress=False)


def test_an_out_folder_with_a_foreign_merge_yml_is_refused_and_left_alone(family, tasks, tmp_path, no_search):
    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    out = tmp_path / "out"
    out.mkdir()
    (out / "merge.yml").write_text("mine\n")
    with pytest.raises(SearchInputError, match="no search wrote"):
        cli_search(config, tasks, out)
    assert (out / "merge.yml").read_text() == "mine\n"


def test_merge_yml_opens_with_the_search_record_that_the_card_reads(family, tasks, tmp_path):
    from mergekit_cabs.provenance import read_search_record

    config = write_search_config(tmp_path / "c.yml", "cabs", *family)
    search_causal_lm(config, tasks, tmp_path / "out", quick(), max_length=32, batch_size=4, progress=False)
    text = (tmp_path / "out" / "merge.yml").read_text()
    record = read_search_record(text)
    assert text.startswith("# Weights found by `mergekit-cabs search`")
    assert record["fitness"] == DEFAULT_FITNESS and record["loss"] == "error" and record["evaluated"] == 13
    assert [t["texts"] for t in record["tasks"]] == [10, 10] and record["tasks"][0]["data"] == "a.jsonl"
    assert yaml.safe_load(text)["merge_method"] == "cabs"  # the comment leaves the YAML as it was


def test_the_cli_paper_flag_sets_the_papers_search_unless_an_option_is_given(monkeypatch, tmp_path):
    from click.testing import CliRunner

    import mergekit_cabs.search as search_package
    from mergekit_cabs.cli import main

    seen = []

    def record_settings(*args, **kwargs):
        seen.append(args[3])
        raise SearchInputError("stop here")

    monkeypatch.setattr(search_package, "search_causal_lm", record_settings)
    for extra in ([], ["--bounds", "0.5", "4"]):
        run = CliRunner().invoke(main, ["search", str(tmp_path / "c.yml"), "--data", "t.jsonl", "--paper", *extra])
        assert "stop here" in run.output
    assert (seen[0].fitness, seen[0].shared_stage, seen[0].log_scale, seen[0].bounds) == ("cabs-plus", False, False,
                                                                                          (0.1, 2.0))
    assert seen[1].bounds == (0.5, 4.0) and seen[1].fitness == "cabs-plus"
