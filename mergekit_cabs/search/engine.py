"""The CMA-ES search over the per-model scales (``cmaes``, CyberAgent's library).

The vector searched is one weight per fine-tuned model (or one per layer group and model),
started at the config's weights, kept inside ``bounds`` by the library (it resamples an
infeasible draw, then clips), sampled from its own generator seeded by ``seed``: the same
inputs, seed and thread count give the same evaluations. Evaluation 0 is the start; an
evaluation rewrites the resident model (``model.CandidateModel.assemble``) and calls every
task's loss on it; its fitness is ``fitness.fitness`` against the start's losses.

Options beyond the paper: ``layer_groups`` (one scale per group of ``host.GROUP_FILTERS``
per model); ``patience`` (stop once the best fitness has improved by less than
``min_improvement`` over that many generations); a first stage of ``first_stage_evaluations``
on cheaper losses (e.g. a subset of the texts), after which the main stage restarts from
its best point with half the step size (its fitness is against the start's losses on
those losses; only main-stage evaluations can be ``best``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mergekit_cabs.search.fitness import fitness
from mergekit_cabs.search.host import SearchInputError
from mergekit_cabs.search.model import CandidateModel

Loss = Callable[[torch.nn.Module], float]


@dataclass(frozen=True)
class SearchSettings:
    evaluations: int = 100  # main-stage evaluations, the start included
    bounds: tuple[float, float] = (0.1, 2.0)
    alpha: float = 100.0
    beta: float = 1.0
    seed: int = 0
    sigma: Optional[float] = None  # CMA-ES step size; default (HI - LO) / 4
    population: Optional[int] = None  # default the library's 4 + floor(3 ln d)
    layer_groups: bool = False
    patience: Optional[int] = None  # generations
    min_improvement: float = 1e-4
    first_stage_evaluations: int = 0
    device: str = "cpu"
    dtype: Optional[str] = None  # the forward pass's; default the merge's written dtype
    random_seed: Optional[int] = None  # the merge's --random-seed (DARE variants)

    def step_size(self) -> float:
        return self.sigma if self.sigma is not None else (self.bounds[1] - self.bounds[0]) / 4


def check_settings(settings: SearchSettings) -> None:
    """Refuse, naming the option and the fix, settings the search cannot run with."""
    lo, hi = settings.bounds
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or lo >= hi:
        raise SearchInputError(f"--bounds {lo} {hi}: need 0 <= LO < HI (weights scale task vectors; "
                               "the paper's box is 0.1 2).")
    if settings.evaluations < 2:
        raise SearchInputError(f"--evaluations {settings.evaluations}: need at least 2 (the start and a candidate).")
    if settings.first_stage_evaluations < 0:
        raise SearchInputError("--first-stage-evaluations must be >= 0.")
    if settings.sigma is not None and not settings.sigma > 0:
        raise SearchInputError(f"--sigma {settings.sigma}: the step size must be > 0.")
    if settings.population is not None and settings.population < 2:
        raise SearchInputError(f"--population {settings.population}: need at least 2.")
    if settings.patience is not None and settings.patience < 1:
        raise SearchInputError(f"--patience {settings.patience}: need at least 1 generation.")
    for name in ("alpha", "beta"):
        if not getattr(settings, name) > 0 or not math.isfinite(getattr(settings, name)):
            raise SearchInputError(f"--{name} {getattr(settings, name)}: must be a finite number > 0.")
    check_device(settings.device)
    if settings.dtype is not None and settings.dtype not in ("float16", "bfloat16", "float32", "float64"):
        raise SearchInputError(f"--dtype {settings.dtype}: use float16, bfloat16, float32 or float64.")


def check_device(device: str) -> None:
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise SearchInputError(f"--device {device}: not a torch device; use cpu or cuda.") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise SearchInputError(f"--device {device}: CUDA is not available on this machine (torch "
                               f"{torch.__version__}); use --device cpu.")
    if kind not in ("cpu", "cuda"):
        raise SearchInputError(f"--device {device}: use cpu or cuda.")


@dataclass(frozen=True)
class Evaluation:
    index: int
    stage: str  # "start", "first" or "main"
    weights: tuple[float, ...]  # in the order of SearchResult.scales
    losses: tuple[float, ...]  # one per task
    fitness: float


@dataclass
class StageRun:
    """The evaluations of one stage and why it ended."""

    evaluations: list = field(default_factory=list)
    stopped: str = "budget"


class Evaluator:
    """Assembles a candidate and scores it; keeps every evaluation in order."""

    def __init__(self, candidate: CandidateModel, scales, settings: SearchSettings, on_evaluation):
        self.candidate, self.scales, self.settings = candidate, scales, settings
        self.on_evaluation = on_evaluation
        self.history: list[Evaluation] = []

    def losses(self, vector: Sequence[float], losses: Sequence[Loss]) -> tuple[float, ...]:
        self.candidate.assemble(self.candidate.tensor_weights(self.scales, vector))
        return tuple(float(loss(self.candidate.model)) for loss in losses)

    def evaluate(self, vector: Sequence[float], losses: Sequence[Loss], start_losses, stage: str) -> Evaluation:
        values = self.losses(vector, losses)
        score = 0.0 if start_losses is None else fitness(values, start_losses, self.settings.alpha,
                                                         self.settings.beta)
        record = Evaluation(len(self.history), stage, tuple(float(v) for v in vector), values, score)
        self.history.append(record)
        self.on_evaluation(record)
        return record


def cma_stage(evaluator: Evaluator, x0: Sequence[float], sigma: float, budget: int, losses: Sequence[Loss],
              start_losses: Sequence[float], stage: str) -> StageRun:
    """CMA-ES from ``x0`` for at most ``budget`` evaluations (whole generations only)."""
    from cmaes import CMA

    settings = evaluator.settings
    optimizer = CMA(mean=np.asarray(x0, dtype=np.float64), sigma=sigma,
                    bounds=np.array([settings.bounds] * len(x0), dtype=np.float64),
                    seed=settings.seed, population_size=settings.population)
    run, best_per_generation = StageRun(), []
    while len(run.evaluations) + optimizer.population_size <= budget:
        told = []
        for _ in range(optimizer.population_size):
            x = optimizer.ask()
            record = evaluator.evaluate(x, losses, start_losses, stage)
            run.evaluations.append(record)
            told.append((x, record.fitness if math.isfinite(record.fitness) else 1e300))
        optimizer.tell(told)
        best_per_generation.append(min(r.fitness for r in run.evaluations))
        if stalled(best_per_generation, settings.patience, settings.min_improvement):
            run.stopped = f"no improvement of {settings.min_improvement} in {settings.patience} generations"
            break
        if optimizer.should_stop():
            run.stopped = "CMA-ES converged"
            break
    return run


def stalled(best: Sequence[float], patience: Optional[int], min_improvement: float) -> bool:
    """The best fitness has fallen by less than ``min_improvement`` over ``patience`` generations."""
    if patience is None or len(best) <= patience:
        return False
    return best[-1 - patience] - best[-1] < min_improvement


def run_search(candidate: CandidateModel, losses: Sequence[Loss], settings: SearchSettings,
               first_stage_losses: Optional[Sequence[Loss]], on_evaluation) -> tuple[Evaluator, list, str]:
    """The whole search; returns the evaluator (its history), the scales and the stop reason."""
    scales = candidate.scales(settings.layer_groups)
    starts = {model: w for model, w in zip(candidate.models, candidate.start_weights)}
    x0 = [starts[model] for model, _ in scales]
    lo, hi = settings.bounds
    for (model, _), weight in zip(scales, x0):
        if not lo <= weight <= hi:
            raise SearchInputError(f"the start weight {weight} of {model} lies outside --bounds {lo} {hi}; "
                                   "widen the bounds or change its weight in the config.")
    evaluator = Evaluator(candidate, scales, settings, on_evaluation)
    start = evaluator.evaluate(x0, losses, None, "start")
    if not all(math.isfinite(v) for v in start.losses):
        raise SearchInputError(f"the start weights give non-finite losses {list(start.losses)}; "
                               "fix the config's weights or the data.")
    main_x0, sigma = x0, settings.step_size()
    if settings.first_stage_evaluations:
        first_start = evaluator.evaluate(x0, first_stage_losses, None, "first")
        first = cma_stage(evaluator, x0, sigma, settings.first_stage_evaluations - 1, first_stage_losses,
                          first_start.losses, "first")
        best_first = min(first.evaluations, key=lambda r: r.fitness, default=first_start)
        main_x0, sigma = best_first.weights, sigma / 2
        if best_first is not first_start:
            evaluator.evaluate(main_x0, losses, start.losses, "main")
    spent = sum(1 for r in evaluator.history if r.stage != "first")
    main = cma_stage(evaluator, main_x0, sigma, settings.evaluations - spent, losses, start.losses, "main")
    return evaluator, scales, main.stopped


def best_evaluation(history: Sequence[Evaluation]) -> Evaluation:
    """The lowest fitness of the start and main stage; the earliest among equals."""
    return min((r for r in history if r.stage != "first"), key=lambda r: (r.fitness, r.index))


def weights_at_bounds(scales: Sequence[tuple[str, Optional[str]]], weights: Sequence[float],
                      bounds: Sequence[float], tolerance: float = 0.01) -> list[dict]:
    """The scales whose weight lies within ``tolerance`` of the box's width from an edge.

    CMA-ES cannot leave the box, so a best weight pressed against it says the optimum may lie
    beyond: at density 0.1 the causal-LM quality benchmark's validation grid chose weight 4
    for ``cabs``, outside the paper's box 0.1 2."""
    lo, hi = bounds
    margin = tolerance * (hi - lo)
    hits = []
    for (model, group), weight in zip(scales, weights):
        edge = "upper" if weight >= hi - margin else "lower" if weight <= lo + margin else None
        if edge:
            hits.append({"model": model, "group": group, "weight": float(weight), "bound": edge})
    return hits


def settings_record(settings: SearchSettings) -> dict:
    record = asdict(settings)
    record["bounds"] = list(settings.bounds)
    record["sigma"] = settings.step_size()
    record["threads"] = torch.get_num_threads()
    return record
