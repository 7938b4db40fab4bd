"""Weight search: the per-model weights of a merge, found on calibration data.

``search_weights(config, losses, settings)`` is the API (one loss callable per task);
``search_causal_lm`` (``mergekit-cabs search``) is it with the causal-LM loss of JSON-lines
calibration files. Each checkpoint is read and each tensor pruned once (``pruned``); each
candidate is then assembled in place into one resident model (``model``), exactly the
model ``mergekit-yaml`` writes for those weights, and scored by ``fitness``. Modules, in
the direction data flows: ``errors``, ``groups``, ``pruned``, ``config`` (the config read
once, planned by MergeKit through ``hosts.planning``), ``model``, ``fitness``, ``engine``
(the stages), ``forward`` and ``calibration`` (the causal-LM loss), ``result``,
``outputs`` (the files), ``api``.
"""

from mergekit_cabs.search.api import DEFAULT_LOSS, search_causal_lm, search_weights
from mergekit_cabs.search.engine import PAPER_SEARCH, Evaluation, SearchSettings
from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.fitness import DEFAULT_FITNESS, FITNESSES, absolute_changes, fitness, relative_changes
from mergekit_cabs.search.groups import LAYER_GROUPS, group_of
from mergekit_cabs.search.outputs import write_outputs
from mergekit_cabs.search.result import SearchResult

__all__ = ["DEFAULT_FITNESS", "DEFAULT_LOSS", "FITNESSES", "LAYER_GROUPS", "PAPER_SEARCH", "Evaluation",
           "SearchInputError", "SearchResult", "SearchSettings", "absolute_changes", "fitness", "group_of",
           "relative_changes", "search_causal_lm", "search_weights", "write_outputs"]
