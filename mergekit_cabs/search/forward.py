"""The forward passes of a calibration loss: each text's summed next-token NLL.

Batches. Texts run longest first in batches of ``batch_size``, right-padded, the padding
masked out of attention. A text's NLL is the float32 cross-entropy of its float32 logits at
its predicted positions, one text at a time (the float32 copy and log-softmax are one
text's positions by the vocabulary, not the batch's: 16 x 128 x 152k logits are 1.2 GB).

Shared prefix. Chat-formatted calibration lines of one task start with the same tokens
(the template's system turn, the task's instruction). Where every text shares at least
``MIN_PREFIX`` tokens before its first predicted position, the prefix runs once per batch
with the model's key/value cache, the cache is repeated over the batch's rows, and only
the rest of each text runs in the batch: a fraction of the tokens for the same
distributions, up to float rounding.

Logits where predicted. Where the model's ``forward`` takes ``logits_to_keep``
(transformers' causal LMs), the output head runs only at positions that predict a token of
some row of the batch.

Both are checked, not assumed: the first call computes its first batch both ways and
keeps the fast way only where every text's mean NLL is within ``FAST_TOLERANCE`` of the
plain forward pass (an exception counts as a mismatch); ``fast`` then says which way ran.
The same model, texts, batch size and thread count give the same bits.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

LOG = logging.getLogger(__name__)

MIN_PREFIX = 8
FAST_TOLERANCE = 0.02  # relative, plus the same in nats absolute: rounding, not a wrong cache


@dataclass(frozen=True)
class Batch:
    """Texts ``rows`` after a shared prefix: right-padded ids, their mask, each row's
    ``(first predicted, length)`` in these coordinates, and the positions whose logits
    predict some row's token."""

    rows: tuple[int, ...]
    input_ids: torch.Tensor
    attention: torch.Tensor
    spans: tuple[tuple[int, int], ...]
    keep: torch.Tensor


def shared_prefix(token_ids: Sequence[Sequence[int]], starts: Sequence[int]) -> int:
    """The tokens every text starts with, up to each text's first predicting position
    (``start - 1``); 0 below ``MIN_PREFIX`` or for a single text."""
    if len(token_ids) < 2:
        return 0
    limit = min(min(len(ids) for ids in token_ids), min(starts) - 1)
    first = token_ids[0]
    length = 0
    while length < limit and all(ids[length] == first[length] for ids in token_ids):
        length += 1
    return length if length >= MIN_PREFIX else 0


def make_batches(token_ids: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int, prefix: int,
                 device: torch.device) -> list[Batch]:
    """``Batch`` es of the texts after ``prefix`` tokens, longest first."""
    order = sorted(range(len(token_ids)), key=lambda i: -len(token_ids[i]))
    batches = []
    for lo in range(0, len(order), batch_size):
        rows = tuple(order[lo:lo + batch_size])
        rests = [token_ids[i][prefix:] for i in rows]
        width = max(len(rest) for rest in rests)
        input_ids = torch.zeros((len(rows), width), dtype=torch.int64)
        attention = torch.zeros((len(rows), width), dtype=torch.int64)
        for row, rest in enumerate(rests):
            input_ids[row, :len(rest)] = torch.tensor(rest, dtype=torch.int64)
            attention[row, :len(rest)] = 1
        spans = tuple((starts[i] - prefix, len(token_ids[i]) - prefix) for i in rows)
        keep = sorted({p for start, length in spans for p in range(start - 1, length - 1)})
        batches.append(Batch(rows, input_ids.to(device), attention.to(device), spans,
                             torch.tensor(keep, dtype=torch.int64, device=device)))
    return batches


def cache_argument(model: torch.nn.Module) -> Optional[str]:
    """The name ``forward`` takes a key/value cache by (transformers 5: ``cache``)."""
    parameters = inspect.signature(model.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def batch_logits(model: torch.nn.Module, batch: Batch, prefix_ids: Optional[torch.Tensor],
                 keep_logits: bool) -> torch.Tensor:
    """``[rows, positions, vocabulary]`` logits of a batch: at ``batch.keep`` with
    ``keep_logits``, else at every position; after ``prefix_ids`` (run once, its cache
    repeated over the rows) where given."""
    extra = {"logits_to_keep": batch.keep} if keep_logits else {}
    if prefix_ids is None:
        return model(input_ids=batch.input_ids, attention_mask=batch.attention, use_cache=False, **extra).logits
    argument = cache_argument(model)
    out = model(input_ids=prefix_ids, use_cache=True, **({"logits_to_keep": 1} if keep_logits else {}))
    cache = getattr(out, argument)
    cache.batch_repeat_interleave(len(batch.rows))
    ones = torch.ones((len(batch.rows), prefix_ids.shape[1]), dtype=batch.attention.dtype, device=batch.attention.device)
    attention = torch.cat([ones, batch.attention], dim=1)
    return model(input_ids=batch.input_ids, attention_mask=attention, use_cache=True,
                 **{argument: cache}, **extra).logits


def batch_nll(model: torch.nn.Module, batch: Batch, prefix_ids: Optional[torch.Tensor],
              keep_logits: bool) -> list[float]:
    """Each row's summed next-token NLL (float32 cross-entropy of float32 logits)."""
    logits = batch_logits(model, batch, prefix_ids, keep_logits)
    index = {int(p): k for k, p in enumerate(batch.keep.tolist())} if keep_logits else None
    sums = []
    for row, (start, length) in enumerate(batch.spans):
        at = range(start - 1, length - 1)
        rows = logits[row, [index[p] for p in at]] if index is not None else logits[row, start - 1:length - 1]
        sums.append(float(torch.nn.functional.cross_entropy(
            rows.float(), batch.input_ids[row, start:length], reduction="sum")))
    return sums


class TextNLL:
    """``model -> [summed NLL of each text]``, in the texts' order, the fast way (shared
    prefix, logits where predicted) where the first call's check allows it."""

    def __init__(self, token_ids: Sequence[Sequence[int]], starts: Sequence[int], batch_size: int,
                 device: torch.device):
        self.texts = len(token_ids)
        self.prefix = shared_prefix(token_ids, starts)
        self.plain = make_batches(token_ids, starts, batch_size, 0, device)
        self.prefixed = make_batches(token_ids, starts, batch_size, self.prefix, device) if self.prefix else self.plain
        self.prefix_ids = (torch.tensor([list(token_ids[0][:self.prefix])], dtype=torch.int64, device=device)
                           if self.prefix else None)
        self.keep_logits = False
        self.fast: Optional[bool] = None  # decided by the first call

    def __call__(self, model: torch.nn.Module) -> list[float]:
        with torch.inference_mode():
            if self.fast is None:
                self.fast = self.fast_way_agrees(model)
            batches = self.prefixed if self.fast else self.plain
            sums = [0.0] * self.texts
            for batch in batches:
                values = batch_nll(model, batch, self.prefix_ids if self.fast else None,
                                   self.keep_logits and self.fast)
                for row, value in zip(batch.rows, values):
                    sums[row] = value
        return sums

    def fast_way_agrees(self, model: torch.nn.Module) -> bool:
        """Whether the first batch's NLLs the fast way match the plain forward pass's."""
        self.keep_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        if self.prefix_ids is None and not self.keep_logits:
            return False
        if self.prefix_ids is not None and cache_argument(model) is None:
            return False
        plain, fast = self.plain[0], self.prefixed[0]
        want = batch_nll(model, plain, None, False)
        try:
            got = batch_nll(model, fast, self.prefix_ids, self.keep_logits)
        except Exception as error:  # noqa: BLE001 - any model whose cache or head slicing differs
            LOG.info("calibration loss: the shared-prefix/kept-logits forward pass failed (%s: %s); "
                     "running whole texts", type(error).__name__, error)
            return False
        counts = [length - start for start, length in plain.spans]
        close = all(abs(g - w) / n <= FAST_TOLERANCE * (1 + abs(w) / n) for g, w, n in zip(got, want, counts))
        if not close:
            LOG.info("calibration loss: the shared-prefix forward pass disagrees with the plain one on "
                     "this model; running whole texts")
        return close
