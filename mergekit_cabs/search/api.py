"""``search_weights``: the Python API, and ``search_causal_lm``: what the CLI runs (every
input checked, the search, then its files, ``outputs.write_outputs``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Optional, Sequence, Union

from mergekit_cabs.search.config import SearchConfig, read_search_config
from mergekit_cabs.search.engine import (
    Evaluation,
    Loss,
    SearchSettings,
    best_evaluation,
    check_settings,
    run_search,
    settings_record,
)
from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.model import CandidateModel, ModelFactory
from mergekit_cabs.search.outputs import check_output_dir, write_outputs
from mergekit_cabs.search.result import SearchResult

DEFAULT_SETTINGS = SearchSettings()
DEFAULT_LOSS = "error"  # calibration.LOSS_KINDS


def search_weights(config: Union[str, Path, SearchConfig], losses: Sequence[Loss],
                   settings: SearchSettings = DEFAULT_SETTINGS,
                   *, first_stage_losses: Optional[Sequence[Loss]] = None,
                   model_factory: Optional[ModelFactory] = None, task_names: Optional[Sequence[str]] = None,
                   progress: bool = True) -> SearchResult:
    """CABS+ adaptive weight allocation: minimise ``fitness`` of ``losses`` (one callable
    per task, ``model -> float``, evaluated on the resident merged model) over the
    per-model weights of ``config``. ``model_factory(merged_config)`` builds the model
    (default ``AutoModelForCausalLM.from_config``; with a custom one, parameters the merge
    does not write, e.g. a classification head, keep the factory's values). ``config`` is a
    mergekit-yaml file, or one ``read_search_config`` has read."""
    started = time.perf_counter()
    check_settings(settings)
    if not losses:
        raise SearchInputError("no task: pass at least one loss (one --data file per task).")
    if settings.first_stage_evaluations and (first_stage_losses is None or len(first_stage_losses) != len(losses)):
        raise SearchInputError("a first stage needs first_stage_losses, one per task.")
    search = config if isinstance(config, SearchConfig) else read_search_config(config)
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
        config=str(search.path), merge_method=search.info.name, models=search.models, scales=scales,
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
        raise SearchInputError("no --data file: pass one JSON-lines file per task.")
    if max_length < 2 or batch_size < 1 or not 0 < first_stage_fraction <= 1:
        raise SearchInputError("need --max-length >= 2, --batch-size >= 1 and 0 < --first-stage-fraction <= 1.")
    if loss not in LOSS_KINDS:
        raise SearchInputError(f"--loss {loss}: use one of {', '.join(LOSS_KINDS)}.")
    search = read_search_config(config)
    tokenizer = load_base_tokenizer(search.base_path)
    tasks = [read_task(path, tokenizer, max_length) for path in data]
    losses = [CausalLMLoss(task, batch_size, settings.device, loss) for task in tasks]
    first = None
    if settings.first_stage_evaluations:
        first = [CausalLMLoss(task.subset(first_stage_fraction), batch_size, settings.device, loss) for task in tasks]
    result = search_weights(search, losses, settings, first_stage_losses=first, task_names=data, progress=progress)
    result.settings.update(max_length=max_length, batch_size=batch_size, loss=loss,
                           first_stage_fraction=first_stage_fraction if first else None,
                           fast_forward=[bool(item.nll.fast) for item in losses])
    result.calibration = tuple({"texts": len(loss.task.token_ids), "predicted_tokens": loss.predicted}
                               for loss in losses)
    write_outputs(result, out_dir)
    return result
