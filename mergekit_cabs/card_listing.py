"""Which models a merge's card lists, and in what order (``card.extend_card`` applies it).

MergeKit builds its lists from a set (``MergeConfiguration.referenced_models``), so their
order changes from run to run, and it leaves local folders out of the front matter's
``base_model``; for our conflict-aware methods the order of ``models:`` changes the result.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

MODELS_HEADING = "### Models Merged"
# MergeKit 0.1.4 and 0.1.5 link its former home, which GitHub redirects here.
_OLD_MERGEKIT_URL = "https://github.com/cg123/mergekit"
MERGEKIT_URL = "https://github.com/arcee-ai/mergekit"


def current_links(text: str) -> str:
    return text.replace(_OLD_MERGEKIT_URL, MERGEKIT_URL)


def merge_order(config: Any) -> list[str]:
    """The paths of the base, then of the models of ``models:`` or of the slices, in the
    order written (paths, as MergeKit's card lists them)."""
    models = [config.base_model] if config.base_model else []
    models += [m.model for m in config.models or ()]
    models += [s.model for out_slice in config.slices or () for s in out_slice.sources]
    return list(dict.fromkeys(m.model.path for m in models))


def front_matter_models(hub_models: Any, config: Any) -> list[str]:
    """MergeKit's ``base_model`` list (the Hub models, in set order) in merge order, with a
    local base named by its folder: the model tree then shows what the merge grew from."""
    listed = [hub_models] if isinstance(hub_models, str) else list(hub_models or ())
    order = merge_order(config)
    listed.sort(key=lambda m: order.index(m) if m in order else len(order))
    base = config.base_model.model.path if config.base_model else None
    if base is not None and base not in listed:  # MergeKit leaves local folders out
        listed.insert(0, os.path.basename(os.path.abspath(base)))
    return listed


def listed_in_merge_order(body: str, order: Sequence[str]) -> str:
    """MergeKit's "Models Merged" bullets (``* path`` or ``* [path](url)``, in set order,
    which changes from run to run) in merge order."""
    start = body.find(MODELS_HEADING)
    end = body.find("\n### ", start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        return body
    lines = body[start:end].split("\n")
    slots = [i for i, line in enumerate(lines) if line.startswith("* ")]

    def rank(line: str) -> int:
        model = line[2:].split(" + ")[0]  # ``model + lora``
        model = model[1:model.index("](")] if model.startswith("[") and "](" in model else model
        return order.index(model) if model in order else len(order)

    for slot, line in zip(slots, sorted((lines[i] for i in slots), key=rank)):
        lines[slot] = line
    return body[:start] + "\n".join(lines) + body[end:]
