"""CABS+ adaptive weight allocation: a CMA-ES search over the per-model weights of a merge.

``search_weights(config, losses, settings)`` is the API (one loss callable per task);
``search_causal_lm`` (``mergekit-cabs search``) is it with the causal-LM loss of JSON-lines
calibration files. Each checkpoint is read and each tensor pruned once (``pruned``); each
candidate is then assembled in place into one resident model (``model``), exactly the
model ``mergekit-yaml`` writes for those weights, and scored by ``fitness``.
"""

from mergekit_cabs.search.api import SearchResult, search_causal_lm, search_weights, write_outputs
from mergekit_cabs.search.engine import PAPER_SEARCH, Evaluation, SearchSettings
from mergekit_cabs.search.fitness import DEFAULT_FITNESS, FITNESSES, fitness, absolute_changes, relative_changes
from mergekit_cabs.search.host import LAYER_GROUPS, SearchInputError, group_of

__all__ = ["DEFAULT_FITNESS", "PAPER_SEARCH", "Evaluation", "FITNESSES", "LAYER_GROUPS", "SearchInputError", "SearchResult",
           "SearchSettings", "fitness", "absolute_changes",
           "group_of", "relative_changes", "search_causal_lm", "search_weights", "write_outputs"]
