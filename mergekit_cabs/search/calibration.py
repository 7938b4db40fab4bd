"""Calibration texts (one JSON-lines file per task) and the causal-LM loss on them.

A task's file holds one JSON object per line with a ``"text"`` string (blank lines are
skipped). Each text is tokenized by the base model's tokenizer as ``AutoTokenizer`` loads
it, with its default special tokens, truncated to ``max_length`` tokens.

The loss of a task is the mean next-token cross-entropy over every predicted token of all
its texts: ``L = sum_texts sum_{j=1}^{n-1} -log p(x_j | x_<j) / sum_texts (n - 1)`` (not a
mean of per-text means; a long text weighs more). Texts run in batches of ``batch_size``,
longest first (fewer padded positions), right-padded, the padding masked out of attention
and of the loss; each batch's sum is float32 cross-entropy of float32 logits, the batches
are added in double precision. The same model, texts, batch size and thread count give
the same bits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from mergekit_cabs.search.host import SearchInputError


@dataclass(frozen=True)
class CalibrationTask:
    """One task's tokenized texts, in file order."""

    path: str
    token_ids: tuple[tuple[int, ...], ...]

    def subset(self, fraction: float) -> "CalibrationTask":
        """``ceil(fraction * n)`` texts spread evenly over the file (the first stage's)."""
        n = len(self.token_ids)
        count = min(n, max(1, math.ceil(fraction * n)))
        picked = sorted({math.floor(j * n / count) for j in range(count)})
        return CalibrationTask(self.path, tuple(self.token_ids[i] for i in picked))


def load_base_tokenizer(base_path: str) -> Any:
    """``AutoTokenizer.from_pretrained(base)``, or an error naming the base and the fix."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(base_path)
    except (OSError, ValueError, TypeError, KeyError) as error:
        raise SearchInputError(
            f"base model {base_path} has no tokenizer that AutoTokenizer can load ({error}). "
            "The losses are computed on the base's tokens: save its tokenizer next to it "
            "(tokenizer.save_pretrained(base_path))."
        ) from None


def read_texts(path: Path) -> list[tuple[int, str]]:
    """``(line number, text)`` of every non-blank line of a JSON-lines file."""
    if not path.is_file():
        raise SearchInputError(f"data file {path} does not exist; pass a JSON-lines file with "
                               'one {"text": ...} object per line.')
    texts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SearchInputError(f"{path} line {number} is not JSON ({error.msg}); write one "
                                   'object per line, e.g. {"text": "..."}.') from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise SearchInputError(f'{path} line {number} has no "text" string; write one object '
                                   'per line, e.g. {"text": "..."}.')
        texts.append((number, record["text"]))
    if not texts:
        raise SearchInputError(f'{path} has no texts; write one {{"text": ...}} object per line.')
    return texts


def read_task(path: str, tokenizer: Any, max_length: int) -> CalibrationTask:
    """Read and tokenize one task's file; every text must give at least 2 tokens."""
    token_ids = []
    for number, text in read_texts(Path(path)):
        ids = tokenizer(text, truncation=True, max_length=max_length)["input_ids"]
        if len(ids) < 2:
            raise SearchInputError(
                f"{path} line {number}: the text gives {len(ids)} token(s) with the base's "
                "tokenizer; a loss needs at least 2 (one to predict). Lengthen or remove it.")
        token_ids.append(tuple(ids))
    return CalibrationTask(str(path), tuple(token_ids))


class CausalLMLoss:
    """``model -> L``: the mean next-token cross-entropy of a task (see the module docstring)."""

    def __init__(self, task: CalibrationTask, batch_size: int, device: str):
        self.task = task
        self.device = torch.device(device)
        by_length = sorted(range(len(task.token_ids)), key=lambda i: -len(task.token_ids[i]))
        self.batches = [self._batch([task.token_ids[i] for i in by_length[lo:lo + batch_size]])
                        for lo in range(0, len(by_length), batch_size)]
        self.predicted = sum(len(ids) - 1 for ids in task.token_ids)

    def _batch(self, texts: Sequence[tuple[int, ...]]) -> tuple[torch.Tensor, ...]:
        width = max(len(ids) for ids in texts)
        input_ids = torch.zeros((len(texts), width), dtype=torch.int64)
        attention = torch.zeros((len(texts), width), dtype=torch.int64)
        for row, ids in enumerate(texts):
            input_ids[row, :len(ids)] = torch.tensor(ids, dtype=torch.int64)
            attention[row, :len(ids)] = 1
        labels = input_ids.masked_fill(attention == 0, -100)
        return input_ids.to(self.device), attention.to(self.device), labels.to(self.device)

    def __call__(self, model: torch.nn.Module) -> float:
        total = 0.0
        with torch.inference_mode():
            for input_ids, attention, labels in self.batches:
                logits = model(input_ids=input_ids, attention_mask=attention, use_cache=False).logits
                total += float(torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                    labels[:, 1:].reshape(-1), ignore_index=-100, reduction="sum"))
        return total / self.predicted
