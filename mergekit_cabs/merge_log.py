"""What each tensor of a merge was given, kept for the model card of that merge.

``methods.merge_group_tensor`` (every host) records every tensor it merges (its size after
MergeKit aligned the vocabularies, and its resolved per-model parameters) under the key
``(method, base, fine-tuned models)``; the card of a merge with that key takes the records.
MergeKit runs tensor tasks in the process that writes the card (threads at most).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Hashable, Optional

Key = tuple[str, Hashable, tuple[Hashable, ...]]


@dataclass(frozen=True)
class TensorRecord:
    name: str
    numel: int
    densities: tuple[float, ...]
    weights: tuple[float, ...]
    block_size: Optional[int]  # n:m only


_lock = threading.Lock()
_records: dict[Key, dict[str, TensorRecord]] = {}


def record(key: Key, entry: TensorRecord) -> None:
    with _lock:
        _records.setdefault(key, {})[entry.name] = entry


def take(method: str, base: Any, models: tuple[Any, ...]) -> list[TensorRecord]:
    """The records of a merge, removed from the log (models compared as strings)."""
    wanted = (method, str(base), tuple(str(m) for m in models))
    with _lock:
        for key in list(_records):
            if (key[0], str(key[1]), tuple(str(m) for m in key[2])) == wanted:
                return list(_records.pop(key).values())
    return []
