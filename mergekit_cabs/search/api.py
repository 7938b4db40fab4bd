"""``search_weights``: the Python API, and ``search_causal_lm``: what the CLI runs.

Outputs (``write_outputs``): ``DIR/merge.yml`` (the input config with the best weights,
which plain ``mergekit-yaml`` merges as it is; comments of the input are not kept),
``DIR/search.json`` (bounds, start, best, every evaluation, settings, versions, wall time)
and, with matplotlib, ``DIR/search.png``. Files of an earlier search there are replaced;
no other file is touched, and the search refuses a DIR whose merge.yml or search.json it
did not write.
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

from mergekit_cabs.provenance import search_comment
from mergekit_cabs.search import host
from mergekit_cabs.search.engine import (
    Evaluation,
    Loss,
    SearchSettings,
    best_evaluation,
    check_settings,
    run_search,
    settings_record,
    weights_at_bounds,
)
from mergekit_cabs.search.model import CandidateModel, ModelFactory

OUTPUT_KIND = "mergekit-cabs search"
OUTPUT_FILES = ("merge.yml", "search.json", "search.png")
DEFAULT_SETTINGS = SearchSettings()
DEFAULT_LOSS = "error"  # calibration.LOSS_KINDS


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
    search: Optional[host.SearchConfig] = None
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
        return {"version": package_versions()["mergekit-cabs"], "evaluated": len(self.evaluations),
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
            "versions": package_versions(), "wall_seconds": round(self.wall_seconds, 3),
        }


def search_weights(config: Union[str, Path], losses: Sequence[Loss], settings: SearchSettings = DEFAULT_SETTINGS,
                   *, first_stage_losses: Optional[Sequence[Loss]] = None,
                   model_factory: Optional[ModelFactory] = None, task_names: Optional[Sequence[str]] = None,
                   progress: bool = True) -> SearchResult:
    """CABS+ adaptive weight allocation: minimise ``fitness`` of ``losses`` (one callable
    per task, ``model -> float``, evaluated on the resident merged model) over the
    per-model weights of ``config``. ``model_factory(merged_config)`` builds the model
    (default ``AutoModelForCausalLM.from_config``; with a custom one, parameters the merge
    does not write, e.g. a classification head, keep the factory's values)."""
    started = time.perf_counter()
    check_settings(settings)
    if not losses:
        raise host.SearchInputError("no task: pass at least one loss (one --data file per task).")
    if settings.first_stage_evaluations and (first_stage_losses is None or len(first_stage_losses) != len(losses)):
        raise host.SearchInputError("a first stage needs first_stage_losses, one per task.")
    search = host.read_search_config(config)
    candidate = CandidateModel.prepare(search, device=settings.device, compute_dtype=settings.dtype,
                                       random_seed=settings.random_seed, model_factory=model_factory,
                                       progress=progress)
    bar, best_so_far = progress_bar(settings, progress), {}
    try:
        evaluator, scales, stopped = run_search(candidate, losses, settings, first_stage_losses,
                                                lambda r: update_bar(bar, best_so_far, r))
    finally:
        bar.close()
    history = evaluator.history
    best = best_evaluation(history)
    candidate.assemble(candidate.tensor_weights(scales, best.weights))
    return SearchResult(
        config=str(config), merge_method=search.info.name, models=search.models, scales=scales,
        start=history[0], best=best, evaluations=history, stopped=stopped, settings=settings_record(settings),
        wall_seconds=time.perf_counter() - started,
        task_names=tuple(task_names or (f"task {i + 1}" for i in range(len(losses)))),
        compact_bytes=candidate.compact_bytes(), kept_shares=candidate.kept_shares(), candidate=candidate,
        search=search)


def progress_bar(settings: SearchSettings, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=settings.evaluations + settings.first_stage_evaluations, desc="Searching weights",
                unit="eval", disable=not enabled)


def update_bar(bar, best: dict, record: Evaluation) -> None:
    if record.stage != "first" and record.fitness < best.get("fitness", math.inf):
        best["fitness"] = record.fitness
    bar.update(1)
    bar.set_postfix(best=f"{best.get('fitness', math.nan):.4g}")


def checked_merge_config(search: host.SearchConfig, candidate: CandidateModel, result: SearchResult) -> str:
    """merge.yml's text, checked by letting MergeKit plan it: every tensor must get the
    weights the best evaluation used."""
    by_model = result.weights_record(result.best.weights)
    text = host.merge_config_text(search, [by_model[m] for m in search.models])
    expected = candidate.tensor_weights(result.scales, result.best.weights)
    for name, weights in host.planned_weights(text).items():
        if list(weights) != expected(name):
            raise RuntimeError(f"merge.yml gives {name} the weights {list(weights)}, not the searched "
                               f"{expected(name)}; MergeKit resolves parameter filters differently "
                               "than mergekit_cabs.search.host.GROUP_FILTERS assumes.")
    return text


def package_versions() -> dict:
    import platform
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for package in ("mergekit-cabs", "mergekit", "torch", "transformers", "cmaes", "numpy"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def check_output_dir(out_dir: Union[str, Path]) -> Path:
    """``out_dir``, refusing one that holds a merge.yml or search.json of something else."""
    out = Path(out_dir)
    marker = out / "search.json"
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text()).get("kind") == OUTPUT_KIND
        except (ValueError, AttributeError):
            ours = False
    foreign = [name for name in OUTPUT_FILES if (out / name).exists() and not ours]
    if foreign:
        raise host.SearchInputError(f"--out {out} already holds {', '.join(foreign)} that no search wrote; "
                                    "choose another folder (the search replaces only its own files).")
    return out


def write_outputs(result: SearchResult, out_dir: Union[str, Path]) -> list[Path]:
    """merge.yml, search.json and (with matplotlib) search.png in ``out_dir``."""
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge.yml").write_text(result.merge_config)
    (out / "search.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    written = [out / "merge.yml", out / "search.json"]
    figure = write_figure(result, out / "search.png")
    return written + ([figure] if figure else [])


def write_figure(result: SearchResult, path: Path) -> Optional[Path]:
    """Fitness and per-task loss over the evaluations; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    main = [r for r in result.evaluations if r.stage != "first"]
    figure = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    indices = [r.index for r in main]
    top.plot(indices, [r.fitness for r in main], ".", label="fitness F")
    running = [min(r.fitness for r in main[:j + 1]) for j in range(len(main))]
    top.plot(indices, running, "-", label="best so far")
    top.set_ylabel("F (lower is better)")
    top.legend(fontsize=8)
    for task, name in enumerate(result.task_names):
        bottom.plot(indices, [r.losses[task] for r in main], ".-", label=Path(name).name)
    bottom.set_xlabel("evaluation")
    bottom.set_ylabel("loss")
    bottom.legend(fontsize=8)
    figure.suptitle(f"{result.merge_method}: weight search", fontsize=10)
    figure.savefig(path, dpi=110)
    return path


def search_causal_lm(config: Union[str, Path], data: Sequence[str], out_dir: Union[str, Path],
                     settings: SearchSettings = DEFAULT_SETTINGS, *, max_length: int = 512,
                     batch_size: int = 8, first_stage_fraction: float = 0.25, loss: str = DEFAULT_LOSS,
                     progress: bool = True) -> SearchResult:
    """The CLI: every input checked first, then ``search_weights`` with the causal-LM loss
    (``calibration.CausalLMLoss`` of kind ``loss``) of each data file, then ``write_outputs``."""
    from mergekit_cabs.search.calibration import LOSS_KINDS, CausalLMLoss, load_base_tokenizer, read_task

    check_settings(settings)
    check_output_dir(out_dir)
    if not data:
        raise host.SearchInputError("no --data file: pass one JSON-lines file per task.")
    if max_length < 2 or batch_size < 1 or not 0 < first_stage_fraction <= 1:
        raise host.SearchInputError("need --max-length >= 2, --batch-size >= 1 and 0 < --first-stage-fraction <= 1.")
    if loss not in LOSS_KINDS:
        raise host.SearchInputError(f"--loss {loss}: use one of {', '.join(LOSS_KINDS)}.")
    search = host.read_search_config(config)
    tokenizer = load_base_tokenizer(search.base_path)
    tasks = [read_task(path, tokenizer, max_length) for path in data]
    losses = [CausalLMLoss(task, batch_size, settings.device, loss) for task in tasks]
    first = None
    if settings.first_stage_evaluations:
        first = [CausalLMLoss(task.subset(first_stage_fraction), batch_size, settings.device, loss) for task in tasks]
    result = search_weights(config, losses, settings, first_stage_losses=first, task_names=data, progress=progress)
    result.settings.update(max_length=max_length, batch_size=batch_size, loss=loss,
                           first_stage_fraction=first_stage_fraction if first else None,
                           fast_forward=[bool(item.nll.fast) for item in losses])
    result.calibration = tuple({"texts": len(loss.task.token_ids), "predicted_tokens": loss.predicted}
                               for loss in losses)
    write_outputs(result, out_dir)
    return result
