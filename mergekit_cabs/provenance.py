"""How a config's weights were found, carried inside the config as YAML comments.

``mergekit-cabs search`` writes ``merge.yml`` with a comment block above the config: a
sentence for the reader and one line ``# mergekit-cabs-search: {...}`` holding a JSON
record (fitness, evaluations, calibration sizes, start and best losses). MergeKit ignores
comments and hands the config's text to its card writer, where ``read_search_record`` finds
the record again, so the merged model's card can say how its weights were found
(``card.search_paragraph``). Pure Python: no host, no torch.
"""

from __future__ import annotations

import json
from typing import Optional

RECORD_PREFIX = "# mergekit-cabs-search: "


def search_comment(record: dict) -> str:
    """The comment block that opens a search's ``merge.yml``."""
    return ("# Weights found by `mergekit-cabs search` (see search.json next to this file);\n"
            "# the line below records how, for the model card.\n"
            f"{RECORD_PREFIX}{json.dumps(record, sort_keys=True)}\n")


def read_search_record(config_yaml: Optional[str]) -> Optional[dict]:
    """The record of ``search_comment`` in a config's text, or None (no record, or a damaged one)."""
    for line in (config_yaml or "").splitlines():
        if line.startswith(RECORD_PREFIX):
            try:
                record = json.loads(line[len(RECORD_PREFIX):])
            except ValueError:
                return None
            return record if isinstance(record, dict) else None
    return None
