"""The result of a search: every evaluation, the best, and ``merge.yml``'s text.

``merge_config`` is the input config with the best weights, checked by letting MergeKit plan
it (every tensor must get the weights the best evaluation used), below a comment that
records how the weights were found (``provenance``) for the merged model's card.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

from mergekit_cabs.hosts.planning import planned_weights
from mergekit_cabs.provenance import search_comment
from mergekit_cabs.versions import installed_version, versions
from mergekit_cabs.search.config import SearchConfig, merge_config_text
from mergekit_cabs.search.engine import Evaluation, weights_at_bounds
from mergekit_cabs.search.model import CandidateModel

OUTPUT_KIND = "mergekit-cabs search"
RECORDED_DISTRIBUTIONS = ("mergekit-cabs", "mergekit", "torch", "transformers", "cmaes", "numpy")


@dataclass
class SearchResult:
    config: str
    merge_method: str
    models: tuple[str, ...]
    scales: list  # (model, layer group or None), the order of every weights vector
    start: Evaluation
    best: Evaluation
    evaluations: list
    stopped: str
    settings: dict
    wall_seconds: float
    task_names: tuple[str, ...]
    compact_bytes: int
    kept_shares: dict  # per model: kept shares of its task vector's L1 norm and energy
    candidate: Optional[CandidateModel] = None  # the resident model, left at the best weights
    search: Optional[SearchConfig] = None
    calibration: tuple = ()  # per task: {"texts": n, "predicted_tokens": n} (search_causal_lm)

    @functools.cached_property
    def merge_config(self) -> str:
        """DIR/merge.yml's text: the record of how the weights were found (a comment), then
        the config with the best weights, checked by letting MergeKit plan it."""
        return search_comment(self.provenance()) + checked_merge_config(self.search, self.candidate, self)

    def provenance(self) -> dict:
        """What ``merge.yml``'s comment records for the model card (``provenance``)."""
        tasks = [{"data": Path(name).name, "start_loss": start, "best_loss": best}
                 for name, start, best in zip(self.task_names, self.start.losses, self.best.losses)]
        for task, sizes in zip(tasks, self.calibration):
            task.update(sizes)
        keys = ("fitness", "alpha", "beta", "evaluations", "shared_stage", "log_scale", "bounds", "layer_groups",
                "loss")
        return {"version": installed_version("mergekit-cabs"), "evaluated": len(self.evaluations),
                "start_weights": self.weights_record(self.start.weights), "tasks": tasks,
                **{k: self.settings.get(k) for k in keys}}

    def weights_record(self, vector: Sequence[float]) -> dict:
        """``{model: w}``, or ``{model: {group: w}}`` with layer groups."""
        record: dict = {}
        for (model, group), weight in zip(self.scales, vector):
            if group is None:
                record[model] = weight
            else:
                record.setdefault(model, {})[group] = weight
        return record

    def best_at_bounds(self) -> list[dict]:
        """The best weights that lie at an edge of the bounds (``engine.weights_at_bounds``)."""
        return weights_at_bounds(self.scales, self.best.weights, self.settings["bounds"],
                                 log_scale=self.settings["log_scale"])

    def to_json(self) -> dict:
        def point(r: Evaluation) -> dict:
            return {"evaluation": r.index, "weights": self.weights_record(r.weights),
                    "losses": list(r.losses), "fitness": r.fitness}

        return {
            "kind": OUTPUT_KIND, "config": self.config, "merge_method": self.merge_method,
            "models": list(self.models), "data": list(self.task_names),
            "bounds": self.settings["bounds"], "start": point(self.start), "best": point(self.best),
            "best_at_bounds": self.best_at_bounds(), "stopped": self.stopped,
            "evaluations": [{**asdict(r), "fitness": r.fitness if math.isfinite(r.fitness) else None,
                             "weights": list(r.weights), "losses": list(r.losses)} for r in self.evaluations],
            "scales": [{"model": m, "group": g} for m, g in self.scales],
            "kept_shares": self.kept_shares, "calibration": list(self.calibration),
            "settings": self.settings, "compact_task_vector_bytes": self.compact_bytes,
            "versions": versions(RECORDED_DISTRIBUTIONS), "wall_seconds": round(self.wall_seconds, 3),
        }


def checked_merge_config(search: SearchConfig, candidate: CandidateModel, result: SearchResult) -> str:
    """merge.yml's text, checked by letting MergeKit plan it: every tensor must get the
    weights the best evaluation used."""
    by_model = result.weights_record(result.best.weights)
    text = merge_config_text(search, [by_model[m] for m in search.models])
    expected = candidate.tensor_weights(result.scales, result.best.weights)
    for name, weights in planned_weights(text).items():
        if list(weights) != expected(name):
            raise RuntimeError(f"merge.yml gives {name} the weights {list(weights)}, not the searched "
                               f"{expected(name)}; MergeKit resolves parameter filters differently "
                               "than mergekit_cabs.search.groups.GROUP_FILTERS assumes.")
    return text
