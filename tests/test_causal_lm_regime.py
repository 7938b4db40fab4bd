"""The causal-LM quality regime (benchmarks/quality/causal_lm) on a tiny Llama with a
word-level chat tokenizer and synthetic tasks: no wheel, no Hub.

Fast: the cached-prefix scoring and the cached-prefix fine-tuning step equal the obvious
whole-prompt computations. Slow: one seed end to end (fine-tune, merges through
mergekit-multi and mergekit-yaml, weight-1 and search rows, inspect, report).
"""

import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from benchmarks.quality.causal_lm.lm import (
    FineTuneSettings,
    answer_targets,
    choice_correct,
    encode_task,
    full_forward_logits,
    last_position_logits,
    prefixed_hidden,
    text_nll,
)
from benchmarks.quality.causal_lm.tasks import PromptTask
from mergekit_cabs.tiny_models import tiny_llama_config

WORDS = ["user", "assistant", "system", "say", "the", "colour", "answer", "yes", "no", "red", "blue", "green"]
WORDS += [f"q{i}" for i in range(40)]
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tokenizer(path=None):
    """A word-level tokenizer of ``WORDS`` plus the chat tokens, with a ChatML template."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<|im_start|>": 1, "<|im_end|>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    if path is not None:
        tokenizer.save_pretrained(path)
    return tokenizer


def synthetic_prompt_task(name: str, choices: tuple[str, ...], seed: int, sizes=(24, 8, 8)) -> PromptTask:
    """Questions of 1-4 words ``q*``; the answer is fixed by the first word (learnable)."""
    generator = torch.Generator().manual_seed(seed)

    def split(n):
        questions, answers = [], []
        for _ in range(n):
            words = torch.randint(0, 40, (int(torch.randint(1, 5, (1,), generator=generator)),), generator=generator)
            questions.append(" ".join(f"q{int(w)}" for w in words))
            answers.append(int(words[0]) % len(choices))
        return questions, answers

    train, val, test = (split(n) for n in sizes)
    return PromptTask(name, "say the answer", choices, train=train, val=val, test=test)


def tiny_causal_lm(seed=0):
    from transformers import LlamaForCausalLM

    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_llama_config(vocab_size=len(WORDS) + 3, tie_word_embeddings=True))


def test_cached_prefix_scoring_equals_each_whole_prompt_through_the_model():
    tokenizer = chat_tokenizer()
    task = encode_task(tokenizer, synthetic_prompt_task("colour", ("red", "blue", "green"), 1))
    model = tiny_causal_lm().eval()
    prompts = task.splits["test"]
    with torch.no_grad():
        fast = last_position_logits(model, prompts, range(len(prompts.suffixes)))
        reference = full_forward_logits(model, prompts, range(len(prompts.suffixes)))
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-5)
    expected = reference.argmax(dim=1) == torch.tensor(prompts.answers)
    assert torch.equal(choice_correct(model, prompts, batch_size=3), expected)


def test_length_batched_text_nll_equals_each_text_alone_in_input_order():
    model = tiny_causal_lm().eval()
    generator = torch.Generator().manual_seed(4)
    texts = [torch.randint(3, len(WORDS) + 3, (int(n),), generator=generator).tolist() for n in (9, 2, 6, 3, 12, 5, 2)]
    with torch.no_grad():
        reference = torch.stack([F.cross_entropy(model(input_ids=torch.tensor([t])).logits[0, :-1], torch.tensor(t[1:]))
                                 for t in texts])
    torch.testing.assert_close(text_nll(model, texts, batch_size=3), reference, rtol=1e-5, atol=1e-5)


def test_every_prompt_is_the_shared_prefix_then_its_question():
    tokenizer = chat_tokenizer()
    raw = synthetic_prompt_task("yesno", ("yes", "no"), 2)
    prompts = encode_task(tokenizer, raw).splits["val"]
    for index, question in enumerate(raw.val[0]):
        text = tokenizer.apply_chat_template([{"role": "user", "content": f"say the answer\n{question}"}],
                                             tokenize=False, add_generation_prompt=True)
        assert prompts.prompt(index) == tokenizer.encode(text, add_special_tokens=False)


def test_a_multi_token_choice_is_refused_naming_the_task_and_the_choice():
    tokenizer = chat_tokenizer()
    with pytest.raises(ValueError, match="task colour: choice 'red blue'"):
        encode_task(tokenizer, synthetic_prompt_task("colour", ("red blue", "green"), 1))


def test_the_cached_prefix_training_loss_and_gradient_equal_whole_sequences():
    tokenizer = chat_tokenizer()
    task = encode_task(tokenizer, synthetic_prompt_task("colour", ("red", "blue", "green"), 3))
    model = tiny_causal_lm(1)
    rows = [0, 1, 2, 3]
    suffixes, positions, targets = answer_targets(task, rows)
    hidden, _ = prefixed_hidden(model, task.splits["train"].prefix, suffixes)
    fast = F.cross_entropy(model.lm_head(hidden[positions[:, 0], positions[:, 1]]), targets)
    fast_grads = torch.autograd.grad(fast, list(model.parameters()))
    prefix = len(task.splits["train"].prefix)
    losses = []
    for b, suffix in enumerate(suffixes):  # each whole sequence alone, no cache, no padding
        logits = model(input_ids=torch.tensor([list(task.splits["train"].prefix) + suffix])).logits[0]
        picked = positions[positions[:, 0] == b, 1] + prefix
        losses.append(F.cross_entropy(logits[picked], targets[positions[:, 0] == b], reduction="sum"))
    reference = torch.stack(losses).sum() / len(targets)
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)
    for got, want in zip(fast_grads, reference_grads):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
@pytest.mark.benchmark
def test_one_seed_of_the_causal_lm_regime_end_to_end(tmp_path):
    from benchmarks.quality.causal_lm.pipeline import LMSeedSettings, SeedInputs, added_search_rows, run_seed
    from benchmarks.quality.causal_lm.report import write_outputs
    from benchmarks.quality.merging import MethodRun

    base = tmp_path / "base"
    tiny_causal_lm().save_pretrained(base, safe_serialization=True)
    tokenizer = chat_tokenizer(base)
    raw = [synthetic_prompt_task("colour", ("red", "blue", "green"), 1),
           synthetic_prompt_task("yesno", ("yes", "no"), 2)]
    general = [tokenizer.encode(f"the colour q{i} q{i + 1}", add_special_tokens=False) for i in range(6)]

    def make_model():
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)

    inputs = SeedInputs(str(base.resolve()), make_model, tokenizer, raw, [encode_task(tokenizer, t) for t in raw],
                        general, tmp_path / "finetunes")
    runs = [MethodRun("task_arithmetic", None), MethodRun("ties", 0.5), MethodRun("magnitude_linear", 0.5),
            MethodRun("nm_linear", 0.5, 8), MethodRun("cabs", 0.5, 8), MethodRun("cabs", 0.5, 8, (("rescale", "l1"),))]
    settings = LMSeedSettings(fine_tune=FineTuneSettings(steps=4, batch_size=4, lr=1e-2, warmup_steps=1),
                              densities=(0.5,), block_size=8, search=(("cabs@0.5", "search"),), search_evaluations=12,
                              calibration_texts=4, weight_one=("cabs@0.5", "cabs[rescale=l1]@0.5"),
                              initial_exponents=(0,), verify=("cabs@0.5",), proxy=("cabs@0.5",))
    record = run_seed(inputs, settings, 0, tmp_path / "seed0", runs, log=lambda _: None)
    methods = record["methods"]
    assert set(methods) == {r.label for r in runs} | {"cabs@0.5 [weight 1]", "cabs[rescale=l1]@0.5 [weight 1]",
                                                      "cabs@0.5 [search]"}
    assert methods["cabs@0.5"]["rescale_max_abs_diff"] < 1e-5  # mergekit-yaml at the chosen weight
    search = methods["cabs@0.5 [search]"]
    assert 10 <= search["search"]["evaluations"] <= 12 and len(search["weights"]) == 2
    assert [t[0] for t in search["search"]["trace"]][:2] == ["start", "shared"]
    assert all(1 / 16 <= w <= 16 for w in search["weights"].values())
    proxy = methods["cabs@0.5"]["grid_extras"]  # the search's loss at every grid point
    assert set(proxy) == set(methods["cabs@0.5"]["val_curve"]) and len(proxy["1"]["calibration_losses"]) == 2
    assert set(record["descendants"]) == {"colour", "yesno"} and record["base_with_heads"]["general_ppl"] > 1
    assert "nm_linear@0.5" in record["inspect"] and "cabs@0.5" in record["inspect"]
    # A second run finds the fine-tunes in the cache and trains nothing.
    marks = sorted(p.stat().st_mtime_ns for p in (tmp_path / "finetunes").glob("*/fine_tune.json"))
    meta = {"preset": "smoke", "command": "test", "threads": 1, "wall_seconds": 1.0, "complete": True,
            "settings": {"preset": {"sizes": {"train": 24, "val": 8, "test": 8}}}}
    out = tmp_path / "results"
    out.mkdir()
    added, provenance = added_search_rows(inputs, settings, record, tmp_path / "seed0-paper", runs,
                                          "search, cabs-plus", log=lambda _: None)
    assert set(added) == {"cabs@0.5 [search, cabs-plus]"} and provenance == {"max_norm_drift": 0.0}
    paper = added["cabs@0.5 [search, cabs-plus]"]
    assert paper["search"]["settings"]["fitness"] == "cabs-plus" and paper["search"]["settings"]["loss"] == "nll"
    assert all(0.1 <= w <= 2.0 for w in paper["weights"].values())
    lines = (tmp_path / "seed0-paper" / "calibration" / "colour.jsonl").read_text().splitlines()
    assert all(set(json.loads(line)) == {"prompt", "completion"} for line in lines)
    record["methods"].update(added)
    write_outputs(out, {"meta": meta, "seeds": [record]})
    text = (out / "results.md").read_text()
    assert "cabs@0.5 [search]" in text and "| cabs@0.5 | task_arithmetic |" in text
    assert "| cabs@0.5 [search, cabs-plus] | cabs@0.5 [search] |" in text
    assert "| cabs[rescale=l1]@0.5 [weight 1] | cabs@0.5 [weight 1] |" in text
    assert "## Does the calibration loss rank the weights" in text and (out / "search_traces.png").is_file()
    with pytest.raises(RuntimeError, match="task-vector norms"):
        altered = {**record, "task_vector_norms": {k: v + 1 for k, v in record["task_vector_norms"].items()}}
        added_search_rows(inputs, settings, altered, tmp_path / "seed0-paper", runs, "search, cabs-plus")
    nudged = {**record, "task_vector_norms": {k: v * (1 + 1e-5) for k, v in record["task_vector_norms"].items()}}
    _, provenance = added_search_rows(inputs, replace(settings, search=()), nudged, tmp_path / "seed0-paper", runs,
                                      "search, cabs-plus", log=lambda _: None, tolerance=1e-4)
    again = provenance["reproduced"]["cabs@0.5 [weight 1]"]  # the same fine-tunes: the same verdicts
    assert provenance["max_norm_drift"] > 0 and again["changed_prompts"] == 0
    assert again["mean"] == again["recorded_mean"] and again["prompts"] > 0
    assert json.loads((out / "results.json").read_text())["summary"]["focus"]
    untuned = replace(settings, search=(), weight_one=(), verify=(), inspect=False, proxy=())
    run_seed(inputs, untuned, 0, tmp_path / "seed0", runs[:1], log=lambda _: None)
    assert sorted(p.stat().st_mtime_ns for p in (tmp_path / "finetunes").glob("*/fine_tune.json")) == marks


def test_resume_keeps_a_seed_whose_stored_settings_match_the_preset():
    from benchmarks.quality.causal_lm.run import PRESETS, kept_seeds, settings_record
    from benchmarks.quality.merging import method_runs

    preset = PRESETS["full"]
    runs = method_runs(preset.densities, 256)
    stored = json.loads(json.dumps({"meta": {"settings": settings_record(preset, runs)}, "seeds": [{"seed": 0}]}))
    assert kept_seeds(stored, settings_record(preset, runs)) == [{"seed": 0}]
    assert kept_seeds(stored, settings_record(PRESETS["quick"], runs)) == []
