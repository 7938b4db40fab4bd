"""The weight search: a shared-scale stage, then CMA-ES over the per-model scales.

The vector searched is one weight per fine-tuned model (or one per layer group and model),
started at the config's weights. Evaluation 0 is the start; an evaluation rewrites the
resident model (``model.CandidateModel.assemble``), calls every task's loss on it and
scores the losses with ``settings.fitness`` (``fitness.FITNESSES``) against the start's.

Stages, in order, within ``evaluations`` (the start included):

1. ``shared_stage`` (default on): the start vector times ``2^k``, one factor for every
   model, for k = -1, 1, 2, widened one power of two at a time while the best factor is
   the smallest or largest tried (and the vector stays inside ``bounds``), then
   ``2^(k* +- 1/2)`` around the best ``k*``: a validation grid of full merges in about 7
   evaluations, on the calibration losses.
2. CMA-ES (``cmaes``, CyberAgent's library) from the best point so far. With
   ``log_scale`` (default) it searches ``log2`` of the weights, so a step multiplies a
   weight (4 -> 8 is as far as 0.5 -> 1), with step size ``sigma`` (default 0.5, in
   powers of two); else the weights themselves, step ``(HI - LO) / 4``. The library keeps
   draws inside ``bounds`` (it resamples an infeasible draw, then clips) and samples from
   its own generator seeded by ``seed``: the same inputs, seed and thread count give the
   same evaluations.

The best is the lowest fitness of every evaluation but a first stage's (the earliest
among equals). Options beyond the paper: ``layer_groups`` (one scale per group of
``groups.GROUP_FILTERS`` per model); ``patience`` (stop once the best fitness has improved by
less than ``min_improvement`` over that many generations); a first stage of
``first_stage_evaluations`` on cheaper losses (e.g. a subset of the texts), after which
CMA-ES restarts from its best point with half the step size (its fitness is against the
start's losses on those losses). The paper's search is ``fitness="cabs-plus",
shared_stage=False, log_scale=False, bounds=(0.1, 2.0)``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from mergekit_cabs.search.fitness import DEFAULT_FITNESS, FITNESSES
from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.model import CandidateModel

Loss = Callable[[torch.nn.Module], float]


DEFAULT_BOUNDS = (1 / 16, 16.0)
# The CABS+ paper's adaptive weight allocation: its fitness, box, and CMA-ES on the weights
# themselves from the start, without a shared stage (``SearchSettings(**PAPER_SEARCH)``).
PAPER_SEARCH = {"fitness": "cabs-plus", "shared_stage": False, "log_scale": False, "bounds": (0.1, 2.0)}


@dataclass(frozen=True)
class SearchSettings:
    evaluations: int = 100  # the start, the shared stage and CMA-ES together
    bounds: tuple[float, float] = DEFAULT_BOUNDS
    fitness: str = DEFAULT_FITNESS  # a name of fitness.FITNESSES
    alpha: Optional[float] = None  # default: the fitness's own
    beta: Optional[float] = None
    shared_stage: bool = True
    log_scale: bool = True
    seed: int = 0
    sigma: Optional[float] = None  # CMA-ES step size; default 0.5 (log2) or (HI - LO) / 4
    population: Optional[int] = None  # default the library's 4 + floor(3 ln d)
    layer_groups: bool = False
    patience: Optional[int] = None  # generations
    min_improvement: float = 1e-4
    first_stage_evaluations: int = 0
    device: str = "cpu"
    dtype: Optional[str] = None  # the forward pass's; default the merge's written dtype
    random_seed: Optional[int] = None  # the merge's --random-seed (DARE variants)

    def step_size(self) -> float:
        if self.sigma is not None:
            return self.sigma
        return 0.5 if self.log_scale else (self.bounds[1] - self.bounds[0]) / 4

    def fitness_factors(self) -> tuple[float, float]:
        """``(alpha, beta)``: the settings', else the fitness's defaults."""
        chosen = FITNESSES[self.fitness]
        return (chosen.alpha if self.alpha is None else self.alpha,
                chosen.beta if self.beta is None else self.beta)

    def score(self, losses: Sequence[float], start_losses: Sequence[float]) -> float:
        return FITNESSES[self.fitness](losses, start_losses, *self.fitness_factors())


def check_settings(settings: SearchSettings) -> None:
    """Refuse, naming the option and the fix, settings the search cannot run with."""
    lo, hi = settings.bounds
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo < 0 or lo >= hi:
        raise SearchInputError(f"--bounds {lo} {hi}: need 0 <= LO < HI (weights scale task vectors; "
                               f"the default box is {DEFAULT_BOUNDS[0]:g} {DEFAULT_BOUNDS[1]:g}).")
    if settings.log_scale and lo <= 0:
        raise SearchInputError(f"--bounds {lo} {hi}: a search on the log scale needs LO > 0; raise LO "
                               "or search the weights themselves (--linear-scale).")
    if settings.fitness not in FITNESSES:
        raise SearchInputError(f"--fitness {settings.fitness}: use one of {', '.join(FITNESSES)}.")
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
    for name, value in zip(("alpha", "beta"), settings.fitness_factors()):
        if not value > 0 or not math.isfinite(value):
            raise SearchInputError(f"--{name} {value}: must be a finite number > 0.")
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
    stage: str  # "start", "shared", "first" or "main"
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
        score = 0.0 if start_losses is None else self.settings.score(values, start_losses)
        record = Evaluation(len(self.history), stage, tuple(float(v) for v in vector), values, score)
        self.history.append(record)
        self.on_evaluation(record)
        return record


@dataclass(frozen=True)
class Space:
    """Where CMA-ES moves: the weights themselves, or (``log``) their ``log2``."""

    log: bool
    bounds: tuple[float, float]

    def point(self, weights: Sequence[float]) -> np.ndarray:
        values = np.asarray(weights, dtype=np.float64)
        return np.log2(values) if self.log else values

    def weights(self, point: np.ndarray) -> tuple[float, ...]:
        """The weights of a point, clipped into ``bounds`` (``2^log2(w)`` can round past an edge)."""
        values = np.exp2(point) if self.log else point
        lo, hi = self.bounds
        return tuple(min(max(float(v), lo), hi) for v in values)

    def box(self, dimensions: int) -> np.ndarray:
        return np.array([self.point(self.bounds)] * dimensions, dtype=np.float64)


def cma_stage(evaluator: Evaluator, x0: Sequence[float], sigma: float, budget: int, losses: Sequence[Loss],
              start_losses: Sequence[float], stage: str) -> StageRun:
    """CMA-ES from the weights ``x0`` for at most ``budget`` evaluations (whole generations only)."""
    from cmaes import CMA

    settings = evaluator.settings
    space = Space(settings.log_scale, settings.bounds)
    optimizer = CMA(mean=space.point(x0), sigma=sigma, bounds=space.box(len(x0)),
                    seed=settings.seed, population_size=settings.population)
    run, best_per_generation = StageRun(), []
    while len(run.evaluations) + optimizer.population_size <= budget:
        told = []
        for _ in range(optimizer.population_size):
            x = optimizer.ask()
            record = evaluator.evaluate(space.weights(x), losses, start_losses, stage)
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


SHARED_STAGE_EXPONENTS = (-1.0, 1.0, 2.0)  # after the start's 0
SHARED_STAGE_MAX = 12


def shared_stage(evaluator: Evaluator, start: Evaluation, losses: Sequence[Loss], budget: int) -> list[Evaluation]:
    """The start's weights times ``2^k`` (one ``k`` for every model): ``SHARED_STAGE_EXPONENTS``,
    widened while the best ``k`` is the lowest or highest tried, then ``k* +- 1/2``; only
    vectors inside ``bounds``, at most ``budget`` evaluations. The best ``k`` is the lowest
    fitness, the one nearer 0 among equals."""
    lo, hi = evaluator.settings.bounds
    tried = {0.0: start}

    def visit(k: float) -> bool:
        vector = [w * 2.0 ** k for w in start.weights]
        if k in tried or len(tried) > budget or not all(lo <= w <= hi for w in vector):
            return False
        tried[k] = evaluator.evaluate(vector, losses, start.losses, "shared")
        return True

    def best() -> float:
        return min(tried, key=lambda k: (tried[k].fitness, abs(k)))

    for k in SHARED_STAGE_EXPONENTS:
        visit(k)
    while (best() == min(tried) and visit(best() - 1)) or (best() == max(tried) and visit(best() + 1)):
        pass
    k_best = best()
    visit(k_best - 0.5)
    visit(k_best + 0.5)
    return [tried[k] for k in sorted(tried) if k != 0.0]


def run_search(candidate: CandidateModel, losses: Sequence[Loss], settings: SearchSettings,
               first_stage_losses: Optional[Sequence[Loss]], on_evaluation) -> tuple[Evaluator, list, str]:
    """The whole search; returns the evaluator (its history), the scales and the stop reason."""
    scales = candidate.scales(settings.layer_groups)
    starts = {model: w for model, w in zip(candidate.models, candidate.start_weights)}
    x0 = [starts[model] for model, _ in scales]
    check_start(scales, x0, settings)
    evaluator = Evaluator(candidate, scales, settings, on_evaluation)
    start = evaluator.evaluate(x0, losses, None, "start")
    if not all(math.isfinite(v) for v in start.losses):
        raise SearchInputError(f"the start weights give non-finite losses {list(start.losses)}; "
                               "fix the config's weights or the data.")
    if settings.shared_stage:
        shared_stage(evaluator, start, losses, min(SHARED_STAGE_MAX, settings.evaluations // 3))
    main_x0, sigma = best_evaluation(evaluator.history).weights, settings.step_size()
    if settings.first_stage_evaluations:
        first_start = evaluator.evaluate(main_x0, first_stage_losses, None, "first")
        first = cma_stage(evaluator, main_x0, sigma, settings.first_stage_evaluations - 1, first_stage_losses,
                          first_start.losses, "first")
        best_first = min(first.evaluations, key=lambda r: r.fitness, default=first_start)
        sigma = sigma / 2
        if best_first is not first_start:
            main_x0 = best_first.weights
            evaluator.evaluate(main_x0, losses, start.losses, "main")
    spent = sum(1 for r in evaluator.history if r.stage != "first")
    main = cma_stage(evaluator, main_x0, sigma, settings.evaluations - spent, losses, start.losses, "main")
    return evaluator, scales, main.stopped


def check_start(scales: Sequence[tuple[str, Optional[str]]], x0: Sequence[float], settings: SearchSettings) -> None:
    lo, hi = settings.bounds
    for (model, _), weight in zip(scales, x0):
        if not lo <= weight <= hi:
            raise SearchInputError(f"the start weight {weight} of {model} lies outside --bounds {lo} {hi}; "
                                   "widen the bounds or change its weight in the config.")


def best_evaluation(history: Sequence[Evaluation]) -> Evaluation:
    """The lowest fitness of every stage but a first stage's; the earliest among equals."""
    return min((r for r in history if r.stage != "first"), key=lambda r: (r.fitness, r.index))


def weights_at_bounds(scales: Sequence[tuple[str, Optional[str]]], weights: Sequence[float],
                      bounds: Sequence[float], tolerance: float = 0.01, log_scale: bool = False) -> list[dict]:
    """The scales whose weight lies within ``tolerance`` of the box's width (of ``log2`` of
    the weights with ``log_scale``) from an edge.

    CMA-ES cannot leave the box, so a best weight pressed against it says the optimum may lie
    beyond: at density 0.1 the causal-LM quality benchmark's validation grid chose weight 4
    for ``cabs``, outside the paper's box 0.1 2."""
    space = Space(log_scale, (bounds[0], bounds[1]))
    lo, hi = space.point(bounds)
    margin = tolerance * (hi - lo)
    hits = []
    for (model, group), weight, x in zip(scales, weights, space.point(weights)):
        edge = "upper" if x >= hi - margin else "lower" if x <= lo + margin else None
        if edge:
            hits.append({"model": model, "group": group, "weight": float(weight), "bound": edge})
    return hits


def settings_record(settings: SearchSettings) -> dict:
    record = asdict(settings)
    record["bounds"] = list(settings.bounds)
    record["alpha"], record["beta"] = settings.fitness_factors()
    record["sigma"] = settings.step_size()
    record["threads"] = torch.get_num_threads()
    return record
