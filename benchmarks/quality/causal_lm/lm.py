"""Prompts through the chat template, scoring by choice log-likelihood, perplexity, fine-tuning.

Scoring. A task's prompts share their start (the template's system turn and the user turn up
to the question: ``EncodedPrompts.prefix``); it is run once per batch and its key/value
cache repeated over the batch, so only the questions cost a forward pass. A prompt is
correct when the right answer's token has the highest next-token logit among the task's
choice tokens (log-likelihood among choices: a 135 M model and its merges often drift in
format, which exact match would score as wrong knowledge). ``full_forward_logits`` is the
obvious reference the tests compare the cached path with.

Fine-tuning trains every weight on the answer token and the end-of-turn token after it.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import asdict, dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from .tasks import PromptTask

SENTINEL = "\u2063QUESTION\u2063"
# transformers 5 renamed the decoder's ``past_key_values`` argument ``cache``.
CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(
    __import__("transformers").LlamaModel.forward).parameters else "past_key_values"


@dataclass(frozen=True)
class EncodedPrompts:
    """One split of a task as token ids: ``prefix + suffixes[i]`` is prompt i."""

    prefix: tuple[int, ...]
    suffixes: list[list[int]]
    answers: list[int]  # index into choice_ids
    choice_ids: tuple[int, ...]

    def prompt(self, index: int) -> list[int]:
        return list(self.prefix) + self.suffixes[index]


@dataclass(frozen=True)
class EncodedTask:
    name: str
    splits: dict[str, EncodedPrompts]
    end_of_turn: int  # the token the chat template closes a turn with


def chat_text(tokenizer, instruction: str, question: str) -> str:
    return tokenizer.apply_chat_template([{"role": "user", "content": f"{instruction}\n{question}"}],
                                         tokenize=False, add_generation_prompt=True)


def one_token(tokenizer, word: str, task: str) -> int:
    ids = tokenizer.encode(word, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"task {task}: choice {word!r} is {len(ids)} tokens in this tokenizer; "
                         "choices must be one token each")
    return ids[0]


def encode_split(tokenizer, task: PromptTask, split: str) -> EncodedPrompts:
    """Token ids of one split; refuses a prompt whose tokens do not start with the shared prefix."""
    template = chat_text(tokenizer, task.instruction, SENTINEL)
    prefix = tuple(tokenizer.encode(template[:template.index(SENTINEL)], add_special_tokens=False))
    questions, answers = task.split(split)
    suffixes = []
    for question in questions:
        ids = tokenizer.encode(chat_text(tokenizer, task.instruction, question), add_special_tokens=False)
        if tuple(ids[:len(prefix)]) != prefix:
            raise ValueError(f"task {task.name}: prompt {question!r} does not tokenize to the shared prefix")
        suffixes.append(ids[len(prefix):])
    choice_ids = tuple(one_token(tokenizer, c, task.name) for c in task.choices)
    return EncodedPrompts(prefix, suffixes, list(answers), choice_ids)


def encode_task(tokenizer, task: PromptTask) -> EncodedTask:
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if end is None or end == tokenizer.unk_token_id:
        end = tokenizer.eos_token_id
    return EncodedTask(task.name, {s: encode_split(tokenizer, task, s) for s in ("train", "val", "test")}, end)


def right_padded(sequences: Sequence[Sequence[int]], pad: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, longest]`` ids and their 0/1 attention mask, padding at the end."""
    longest = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), longest), pad, dtype=torch.long)
    mask = torch.zeros((len(sequences), longest), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        ids[row, :len(sequence)] = torch.tensor(list(sequence), dtype=torch.long)
        mask[row, :len(sequence)] = 1
    return ids, mask


def prefixed_hidden(model, prefix: Sequence[int], suffixes: Sequence[Sequence[int]]):
    """Last hidden states of ``prefix + suffix`` per row (right-padded suffixes) and the
    suffixes' mask: the prefix runs once, its key/value cache repeated over the batch."""
    decoder = model.get_decoder()
    out = decoder(input_ids=torch.tensor([list(prefix)], dtype=torch.long), use_cache=True)
    cache = getattr(out, CACHE_ARGUMENT)  # a batch of 1: cheap
    cache.batch_repeat_interleave(len(suffixes))
    ids, mask = right_padded(suffixes)
    full_mask = torch.cat([torch.ones((len(suffixes), len(prefix)), dtype=torch.long), mask], dim=1)
    hidden = decoder(input_ids=ids, attention_mask=full_mask, use_cache=True, **{CACHE_ARGUMENT: cache})
    return hidden.last_hidden_state, mask


def last_position_logits(model, prompts: EncodedPrompts, rows: Sequence[int]) -> torch.Tensor:
    """Next-token logits over the choices after each prompt of ``rows``, the prefix cached."""
    hidden, mask = prefixed_hidden(model, prompts.prefix, [prompts.suffixes[r] for r in rows])
    last = hidden[torch.arange(len(rows)), mask.sum(dim=1) - 1]
    return model.get_output_embeddings()(last)[:, list(prompts.choice_ids)].float()


def full_forward_logits(model, prompts: EncodedPrompts, rows: Sequence[int]) -> torch.Tensor:
    """The reference: each whole prompt alone through the model, its last position's choice logits."""
    out = []
    for r in rows:
        logits = model(input_ids=torch.tensor([prompts.prompt(r)], dtype=torch.long)).logits[0, -1]
        out.append(logits[list(prompts.choice_ids)].float())
    return torch.stack(out)


def length_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Row indices in batches of similar length (shortest first, ties in row order): the
    padding a batch runs is its longest row's, and these forward passes cost in proportion
    to the tokens run (measured: a third less time than batches in row order)."""
    order = sorted(range(len(lengths)), key=lambda r: (lengths[r], r))
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def choice_correct(model, prompts: EncodedPrompts, batch_size: int = 64) -> torch.Tensor:
    """bool per prompt: the right answer has the largest logit among the choices."""
    model.eval()
    verdicts = torch.zeros(len(prompts.suffixes), dtype=torch.bool)
    with torch.inference_mode():
        for rows in length_batches([len(s) for s in prompts.suffixes], batch_size):
            best = last_position_logits(model, prompts, rows).argmax(dim=1)
            verdicts[rows] = best == torch.tensor([prompts.answers[r] for r in rows])
    return verdicts


def text_nll(model, texts: Sequence[Sequence[int]], batch_size: int = 32) -> torch.Tensor:
    """Mean next-token negative log-likelihood (nats per predicted token) of each text.

    The output head runs only on the positions that predict a token (not on padding), as
    one contiguous ``[tokens, vocabulary]`` matrix."""
    model.eval()
    out = torch.zeros(len(texts), dtype=torch.float32)
    with torch.inference_mode():
        for rows in length_batches([len(t) for t in texts], batch_size):
            ids, mask = right_padded([texts[r] for r in rows])
            hidden = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
            predicts = mask[:, 1:] == 1
            logits = model.get_output_embeddings()(hidden[:, :-1][predicts]).float()
            nll = F.cross_entropy(logits, ids[:, 1:][predicts], reduction="none")
            row_of = torch.arange(len(rows)).unsqueeze(1).expand_as(predicts)[predicts]
            sums = torch.zeros(len(rows), dtype=torch.float32).index_add_(0, row_of, nll)
            out[rows] = sums / predicts.sum(dim=1)
    return out


@dataclass(frozen=True)
class FineTuneSettings:
    steps: int = 60
    batch_size: int = 8
    lr: float = 5e-5
    warmup_steps: int = 6
    max_grad_norm: float = 1.0

    def record(self) -> dict:
        return asdict(self)


def learning_rate(settings: FineTuneSettings, step: int) -> float:
    """Linear warm-up, then linear decay to zero."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    rest = max(1, settings.steps - settings.warmup_steps)
    return settings.lr * max(0.0, 1.0 - (step - settings.warmup_steps) / rest)


def answer_targets(task: EncodedTask, rows: Sequence[int]):
    """Suffixes with the answer and end-of-turn tokens appended, and (row, position, target)
    of those two tokens' predictions (positions within the suffixes)."""
    prompts = task.splits["train"]
    suffixes, positions, targets = [], [], []
    for b, r in enumerate(rows):
        suffix = prompts.suffixes[r]
        answer = prompts.choice_ids[prompts.answers[r]]
        suffixes.append(suffix + [answer, task.end_of_turn])
        positions += [(b, len(suffix) - 1), (b, len(suffix))]
        targets += [answer, task.end_of_turn]
    return suffixes, torch.tensor(positions), torch.tensor(targets)


def fine_tune(model, task: EncodedTask, settings: FineTuneSettings, seed: int) -> list[float]:
    """AdamW on every weight (float32), loss on the answer and end-of-turn tokens; returns the losses.

    The prefix is one sequence per batch with its cache repeated: the same loss and gradient
    as running every whole prompt (tests: ``test_causal_lm_regime``), at a third of the tokens."""
    head = model.get_output_embeddings()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=0.0, foreach=True)
    generator = torch.Generator().manual_seed(seed)
    count = len(task.splits["train"].suffixes)
    order, losses = torch.randperm(count, generator=generator).tolist(), []
    for step in range(settings.steps):
        if len(order) < settings.batch_size:
            order += torch.randperm(count, generator=generator).tolist()
        rows, order = order[:settings.batch_size], order[settings.batch_size:]
        suffixes, positions, targets = answer_targets(task, rows)
        # The gradient flows through the repeated prefix cache into the shared prefix.
        hidden, _ = prefixed_hidden(model, task.splits["train"].prefix, suffixes)
        loss = F.cross_entropy(head(hidden[positions[:, 0], positions[:, 1]]).float(), targets)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(settings, step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise RuntimeError(f"fine-tuning {task.name} diverged at step {step} (loss {losses[-1]})")
    model.eval()
    return losses
