"""Fine-tuning an encoder body per task and scoring any body with a task's own head.

The sentence representation is the attention-masked mean of the last hidden states
(mean pooling, the pooling all-MiniLM-L6-v2 was trained with); each task's head is one
linear layer on it. BERT's pooler is unused, so its task vector is exactly zero.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class EncodedSplit:
    """Token ids of one split, sorted by length so padded batches waste little."""

    input_ids: list[list[int]]
    labels: torch.Tensor  # in the original order of the split
    order: list[int]  # positions sorted by length; evaluation un-sorts with it


@dataclass(frozen=True)
class EncodedTask:
    """A task's three splits as token ids, plus its number of classes."""

    name: str
    num_classes: int
    train: EncodedSplit
    val: EncodedSplit
    test: EncodedSplit


@dataclass(frozen=True)
class TrainSettings:
    epochs: int
    batch_size: int = 16
    body_lr: float = 5e-5
    head_lr: float = 2e-3  # a fresh head needs a larger step than the pre-trained body
    max_length: int = 64


def encode_split(input_ids: list[list[int]], labels: Sequence[int]) -> EncodedSplit:
    order = sorted(range(len(input_ids)), key=lambda i: (len(input_ids[i]), i))
    return EncodedSplit(input_ids, torch.tensor(list(labels), dtype=torch.long), order)


def encode_task(task, tokenizer, max_length: int) -> EncodedTask:
    """Tokenize once; every later evaluation reuses the ids."""

    def ids(texts: list[str]) -> list[list[int]]:
        return tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    return EncodedTask(
        task.name,
        len(task.label_names),
        *(encode_split(ids(texts), labels) for texts, labels in (task.train, task.val, task.test)),
    )


def pad_batch(sequences: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (pad id 0, as BERT's vocabulary) and the attention mask."""
    width = max(len(s) for s in sequences)
    ids = torch.zeros(len(sequences), width, dtype=torch.long)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.tensor(seq)
        mask[row, : len(seq)] = 1
    return ids, mask


def mean_pool(body: nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    hidden = body(input_ids=ids, attention_mask=mask).last_hidden_state
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


@torch.inference_mode()
def pooled_features(body: nn.Module, split: EncodedSplit, batch_size: int = 64) -> torch.Tensor:
    """Mean-pooled sentence vectors of a split, in the split's original order."""
    body.eval()
    features = torch.empty(len(split.input_ids), body.config.hidden_size)
    for lo in range(0, len(split.order), batch_size):
        rows = split.order[lo : lo + batch_size]
        ids, mask = pad_batch([split.input_ids[i] for i in rows])
        features[rows] = mean_pool(body, ids, mask)
    return features


@torch.inference_mode()
def head_correct(head: nn.Linear, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per sentence: does the head's prediction equal the label?"""
    return head(features).argmax(dim=1) == labels


def split_prefix(split: EncodedSplit, fraction: float) -> EncodedSplit:
    """The first ``fraction`` of a split's examples (at least one), as a split of its own."""
    count = max(1, round(len(split.input_ids) * fraction))
    return encode_split(split.input_ids[:count], split.labels[:count].tolist())


@torch.inference_mode()
def head_loss(body: nn.Module, head: nn.Linear, split: EncodedSplit, kind: str = "nll") -> float:
    """The loss a weight search minimises for an encoder with task heads, of ``head`` on
    ``body``'s pooled features of ``split``: the mean cross-entropy (``nll``), or the mean of
    one minus the right class's probability (``error``, the causal-LM search's default loss
    for one-token answers)."""
    logits = head(pooled_features(body, split))
    if kind == "nll":
        return float(nn.functional.cross_entropy(logits, split.labels))
    right = logits.float().softmax(dim=1).gather(1, split.labels.unsqueeze(1))
    return float((1 - right).mean())


def evaluate_body(body: nn.Module, tasks: Sequence[EncodedTask], heads: dict, split: str) -> dict[str, torch.Tensor]:
    """Per-sentence correctness of ``body`` on each task's ``split``, with that task's own head.

    The paired statistics need the sentences, not only the accuracy (its mean).
    """
    out = {}
    for task in tasks:
        data = getattr(task, split)
        out[task.name] = head_correct(heads[task.name], pooled_features(body, data), data.labels)
    return out


def steps_of(settings: TrainSettings, examples: int) -> int:
    """Optimizer steps of a fine-tune: epochs x batches."""
    return settings.epochs * math.ceil(examples / settings.batch_size)


def batches(tasks: Sequence[EncodedTask], settings: TrainSettings, generator: torch.Generator):
    """One epoch of ``(task, rows)`` batches: each batch from one task, tasks interleaved at random.

    One task's batches are already in random order; shuffling them again would only change
    the draws from ``generator`` (and the single-task fine-tunes of earlier runs).
    """
    out = [(task, permutation[lo : lo + settings.batch_size])
           for task in tasks
           for permutation in [torch.randperm(len(task.train.input_ids), generator=generator).tolist()]
           for lo in range(0, len(permutation), settings.batch_size)]
    if len(tasks) == 1:
        return out
    return [out[i] for i in torch.randperm(len(out), generator=generator).tolist()]


def fine_tune(body: nn.Module, tasks: Sequence[EncodedTask], settings: TrainSettings, seed: int,
              heads: dict | None = None) -> dict[str, nn.Linear]:
    """Fine-tune ``body`` in place on ``tasks`` (one task, or a mixture); return the heads.

    Each task gets a fresh linear head unless ``heads`` gives one to continue from (a
    descendant of a shared ancestor keeps training the ancestor's head). AdamW without
    weight decay: decay would move every parameter, including embedding rows of words
    the task never shows, and fill the task vector with noise.
    """
    torch.manual_seed(seed)
    heads = {t.name: (copy.deepcopy(heads[t.name]) if heads else nn.Linear(body.config.hidden_size, t.num_classes))
             for t in tasks}
    optimizer = torch.optim.AdamW(
        [{"params": body.parameters(), "lr": settings.body_lr},
         {"params": [p for h in heads.values() for p in h.parameters()], "lr": settings.head_lr}],
        weight_decay=0.0,
    )
    steps = sum(steps_of(settings, len(t.train.input_ids)) for t in tasks)  # batches never mix tasks
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)
    generator = torch.Generator().manual_seed(seed)
    body.train()
    for head in heads.values():
        head.train()
    for _ in range(settings.epochs):
        for task, rows in batches(tasks, settings, generator):
            ids, mask = pad_batch([task.train.input_ids[i] for i in rows])
            logits = heads[task.name](mean_pool(body, ids, mask))
            loss = nn.functional.cross_entropy(logits, task.train.labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    body.eval()
    return {name: head.eval() for name, head in heads.items()}


def save_head(head: nn.Linear, path: Path) -> None:
    torch.save(head.state_dict(), path)


def load_head(path: Path) -> nn.Linear:
    state = torch.load(path, weights_only=True)
    head = nn.Linear(state["weight"].shape[1], state["weight"].shape[0])
    head.load_state_dict(state)
    return head.eval()
