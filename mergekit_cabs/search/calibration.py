"""Calibration texts (one JSON-lines file per task) and the causal-LM loss on them.

A task's file holds one JSON object per line (blank lines are skipped), either

- ``{"text": ...}``: tokenized by the base model's tokenizer as ``AutoTokenizer`` loads it,
  with its default special tokens; every token after the first is predicted; or
- ``{"prompt": ..., "completion": ...}``: the prompt tokenized as a text, the completion
  without special tokens, appended; only the completion's tokens are predicted (what an
  SFT loss on prompt-completion data counts: a chat prompt's system and user turns, the
  same under every candidate, would otherwise outweigh the answer).

Each sequence is truncated to ``max_length`` tokens. A task's loss, from each text's summed
next-token NLL ``nll_t = sum_{j=s}^{n-1} -log p(x_j | x_<j)`` over its ``n_t = n - s``
predicted tokens (``s`` = 1 for a text, the prompt's token count for a prompt-completion
pair; ``search.forward`` runs the passes), summed in double precision:

- ``nll``: the mean cross-entropy over every predicted token of all texts,
  ``sum_t nll_t / sum_t n_t`` (a long text weighs more);
- ``error``: the mean over texts of ``1 - exp(-nll_t / n_t)``, one minus the text's mean
  per-token probability (for a one-token answer, one minus its probability): in [0, 1], so
  a confidently wrong answer costs at most 1. As a merge's weights grow, its answers get
  right more often and more confident; the NLL of the answers it still gets wrong can then
  outgrow the gain, so ``nll`` can rank weights against accuracy, where ``error`` follows it
  (docs/quality.md).

The same model, texts, batch size and thread count give the same bits.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from mergekit_cabs.search.forward import TextNLL
from mergekit_cabs.search.errors import SearchInputError


@dataclass(frozen=True)
class CalibrationTask:
    """One task's tokenized texts, in file order; ``starts[i]``: the first predicted
    position of text ``i`` (1 for a text, the prompt's length for a prompt-completion pair;
    all 1 when omitted)."""

    path: str
    token_ids: tuple[tuple[int, ...], ...]
    starts: tuple[int, ...] = ()

    def __post_init__(self):
        if not self.starts:
            object.__setattr__(self, "starts", (1,) * len(self.token_ids))

    def subset(self, fraction: float) -> "CalibrationTask":
        """``ceil(fraction * n)`` texts spread evenly over the file (the first stage's)."""
        n = len(self.token_ids)
        count = min(n, max(1, math.ceil(fraction * n)))
        picked = sorted({math.floor(j * n / count) for j in range(count)})
        return CalibrationTask(self.path, tuple(self.token_ids[i] for i in picked),
                               tuple(self.starts[i] for i in picked))


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


FORMATS = 'one object per line, {"text": ...} or {"prompt": ..., "completion": ...}'


def calibration_line(record: object) -> Optional[tuple[str, Optional[str]]]:
    """``(text, None)``, ``(prompt, completion)``, or None for a line of neither format."""
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str):
        return record["prompt"], record["completion"]
    return (record["text"], None) if isinstance(record.get("text"), str) else None


def read_texts(path: Path) -> list[tuple[int, tuple[str, Optional[str]]]]:
    """``(line number, calibration_line)`` of every non-blank line of a JSON-lines file."""
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
            raise SearchInputError(f"{path} line {number} is not JSON ({error.msg}); write {FORMATS}.") from None
        line_texts = calibration_line(record)
        if line_texts is None:
            raise SearchInputError(f'{path} line {number} has no "text" string and no "prompt" and '
                                   f'"completion" strings; write {FORMATS}.')
        texts.append((number, line_texts))
    if not texts:
        raise SearchInputError(f"{path} has no texts; write {FORMATS}.")
    return texts


def tokenize_line(tokenizer: Any, text: str, completion: Optional[str], max_length: int) -> tuple[list[int], int]:
    """A line's token ids (at most ``max_length``) and its first predicted position."""
    if completion is None:
        return tokenizer(text, truncation=True, max_length=max_length)["input_ids"], 1
    prompt = tokenizer(text)["input_ids"]
    answer = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return (list(prompt) + list(answer))[:max_length], max(len(prompt), 1)


def read_task(path: str, tokenizer: Any, max_length: int) -> CalibrationTask:
    """Read and tokenize one task's file; every line must leave a token to predict."""
    token_ids, starts = [], []
    for number, (text, completion) in read_texts(Path(path)):
        ids, start = tokenize_line(tokenizer, text, completion, max_length)
        if len(ids) - start < 1:
            what = (f"the text gives {len(ids)} token(s) with the base's tokenizer; a loss needs at "
                    "least 2 (one to predict). Lengthen or remove it." if completion is None else
                    f"no completion token is left within --max-length {max_length} after the prompt's "
                    f"{start} token(s); shorten the prompt, raise --max-length, or give a completion.")
            raise SearchInputError(f"{path} line {number}: {what}")
        token_ids.append(tuple(ids))
        starts.append(start)
    return CalibrationTask(str(path), tuple(token_ids), tuple(starts))


LOSS_KINDS = ("nll", "error")


class CausalLMLoss:
    """``model -> L`` of a task's texts (see the module docstring), ``kind`` ``nll`` (the mean
    next-token cross-entropy over every predicted token) or ``error`` (the mean over texts of
    ``1 - exp(-nll_text / n_text)``)."""

    def __init__(self, task: CalibrationTask, batch_size: int, device: str, kind: str = "nll"):
        if kind not in LOSS_KINDS:
            raise SearchInputError(f"--loss {kind}: use one of {', '.join(LOSS_KINDS)}.")
        self.task, self.kind = task, kind
        self.counts = [len(ids) - start for ids, start in zip(task.token_ids, task.starts)]
        self.predicted = sum(self.counts)
        self.nll = TextNLL(task.token_ids, task.starts, batch_size, torch.device(device))

    def __call__(self, model: torch.nn.Module) -> float:
        sums = self.nll(model)
        if self.kind == "nll":
            return math.fsum(sums) / self.predicted
        return math.fsum(1.0 - math.exp(-total / count) for total, count in zip(sums, self.counts)) / len(sums)
