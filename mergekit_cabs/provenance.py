"""How a config's weights were found, carried inside the config as YAML comments.

``mergekit-cabs search`` writes ``merge.yml`` with a comment block above the config: a
sentence for the reader and one line ``# mergekit-cabs-search: {...}`` holding a JSON
record (fitness, evaluations, calibration sizes, start and best losses). MergeKit ignores
comments and hands the config's text to its card writer, where ``read_search_record`` finds
the record again, so the merged model's card can say how its weights were found
(``search_paragraph``). Pure Python: no host, no torch.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Mapping, Optional

LOG = logging.getLogger(__name__)

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


SEARCH_LOSS_WORDS = {
    "nll": "mean next-token cross-entropy (nats per predicted token)",
    "error": "calibration error (the mean over texts of 1 − the mean probability of its predicted tokens)",
}


def search_paragraph(record: Optional[Mapping[str, Any]]) -> str:
    """How ``mergekit-cabs search`` found the weights, from the record its ``merge.yml``
    carries (``provenance``); empty for a config the search did not write."""
    if not record:
        return ""
    try:
        tasks = "; ".join(
            f"`{t['data']}`" + (f" ({t['texts']} texts, {t['predicted_tokens']} predicted tokens)" if "texts" in t else "")
            + f": {t['start_loss']:.4g} → {t['best_loss']:.4g}" for t in record["tasks"])
        stages = ("a shared factor 2^k for every weight, then CMA-ES" if record.get("shared_stage")
                  else "CMA-ES") + (" on log2 of the weights" if record.get("log_scale") else "")
        return (f"The weights were found by `mergekit-cabs search` (mergekit-cabs {record['version']}): "
                f"{record['evaluated']} evaluations of {stages} within [{record['bounds'][0]:g}, "
                f"{record['bounds'][1]:g}], from the start weights {record['start_weights']}, minimising the "
                f"`{record['fitness']}` fitness (α = {record['alpha']:g}, β = {record['beta']:g}) of each task's "
                f"{SEARCH_LOSS_WORDS.get(record.get('loss'), 'loss')} on its calibration data (start → found): "
                f"{tasks}.")
    except (KeyError, TypeError, ValueError):
        LOG.warning("mergekit_cabs: the config's mergekit-cabs-search record is incomplete; the model "
                    "card does not say how the weights were found.")
        return ""
