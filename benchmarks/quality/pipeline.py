"""One seed of the benchmark: fine-tune, merge every method, choose its scale, score it.

Independent of where the base model and the tasks come from, so the smoke test runs the
same code on a tiny BertModel and synthetic tasks.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
import yaml

from mergekit_cabs.output_dir import owned_output_dir
from mergekit_cabs.search import PAPER_SEARCH, SearchResult, SearchSettings, search_weights, write_outputs
from mergekit_cabs.search import DEFAULT_LOSS

from ..merge_outputs import remove_output
from .merging import (
    OWN_PROCESS_METHODS,
    MethodRun,
    load_body_state,
    inspect_masks,
    mask_twin,
    max_abs_difference,
    merge_config,
    merged_delta,
    overlap_rates,
    run_mergekit_multi,
    run_mergekit_yaml,
    scaled_state,
    task_vector_norms,
)
from .training import (
    EncodedTask,
    TrainSettings,
    evaluate_body,
    fine_tune,
    head_loss,
    load_head,
    split_prefix,
    save_head,
    steps_of,
)

TOOL = "benchmarks.quality.run"
# Scale grid: powers of two, widened automatically until the best is interior.
SCALE_EXPONENT_LIMITS = (-6, 6)


@dataclass(frozen=True)
class AncestrySettings:
    """The shared-ancestry regime: the base fine-tuned on the task mixture (with the seed's
    ``train`` settings) is the ancestor, and each task's model is a copy of the ancestor
    fine-tuned further on that task."""

    # name -> descendant fine-tune; the names say how far the descendants move.
    descendants: tuple[tuple[str, TrainSettings], ...]


@dataclass(frozen=True)
class SeedSettings:
    """What one seed runs; the presets live in benchmarks.quality.run."""

    train: TrainSettings  # from the base; with ``ancestry``, the mixture that makes the ancestor
    densities: tuple[float, ...]
    block_size: int
    initial_exponents: tuple[int, ...] = (-1, 0, 1, 2)
    refine: bool = False  # also try 2**(k +- 1/2) around the best power of two
    verify: Callable[[MethodRun], bool] = lambda run: True  # re-merge at the chosen scale?
    orders: bool = True  # CABS under several pruning orders (the arm with the largest overlap)
    order_density: float = 0.1
    max_orders: int = 24  # all orders up to this many, else a seeded sample plus the rule's
    inspect: bool = True  # kept shares and overlaps of our methods with `mergekit-cabs inspect`
    # Methods also run at the density that keeps as many entries as magnitude masks do at
    # order_density (measured by inspect): the equal-kept-count comparison.
    equal_kept: tuple[str, ...] = ()
    ancestry: Optional[AncestrySettings] = None
    # (run label, variant of SEARCH_VARIANTS): runs whose per-model weights ``search_weights``
    # also finds (from weight 1, on the heads' validation loss), merged by mergekit-yaml, scored.
    search: tuple[tuple[str, str], ...] = ()
    search_evaluations: int = 41
    weight_one: tuple[str, ...] = ()  # labels whose merge at weight 1 is also scored on test


class Timer:
    """Seconds spent in named stages."""

    def __init__(self):
        self.totals: dict[str, float] = {}

    def add(self, stage: str, start: float) -> None:
        self.totals[stage] = self.totals.get(stage, 0.0) + time.perf_counter() - start


@dataclass
class SeedContext:
    """Everything a seed's merges share: paths, the base state, one reusable body, the heads."""

    seed: int
    workdir: Path
    tasks: Sequence[EncodedTask]
    base_path: str
    model_paths: list[str]
    base_state: dict
    body: torch.nn.Module
    heads: dict
    timer: Timer = field(default_factory=Timer)
    weight_one: dict = field(default_factory=dict)  # label -> its weight-1 row (run_method)

    def evaluate_state(self, state: dict, split: str,
                       tasks: Optional[Sequence[EncodedTask]] = None) -> dict[str, torch.Tensor]:
        """Per-sentence correctness of the body ``state`` on each task's ``split`` (or ``tasks``')."""
        start = time.perf_counter()
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        # Only non-persistent buffers (position_ids) may be absent from a checkpoint.
        if unexpected or any(not k.endswith("position_ids") for k in missing):
            raise RuntimeError(f"state mismatch: missing {missing}, unexpected {unexpected}")
        correct = evaluate_body(self.body, self.tasks if tasks is None else tasks, self.heads, split)
        self.timer.add(f"evaluate_{split}", start)
        return correct

    def validation_mean(self, state: dict) -> float:
        return mean(accuracies(self.evaluate_state(state, "val")).values())

    def config(self, run: MethodRun, scale: float, models: Optional[Sequence[str]] = None) -> dict:
        return merge_config(run, self.base_path, models or self.model_paths, scale)

    def merge(self, configs: dict[str, dict], batch: bool = True) -> dict[str, Path]:
        """Output folder of each named config.

        Configs that may share a process go through one ``mergekit-multi`` call; the others
        (MergeKit's DARE methods; every config when ``batch`` is false) each through a
        plain ``mergekit-yaml`` call.
        """
        start = time.perf_counter()
        root = self.workdir / "merge"
        alone = {n: c for n, c in configs.items() if not batch or c["merge_method"] in OWN_PROCESS_METHODS}
        outputs = {n: run_mergekit_yaml(c, root / n, self.seed) for n, c in alone.items()}
        together = {n: c for n, c in configs.items() if n not in alone}
        if together:
            outputs.update(run_mergekit_multi(together, root, self.seed))
        self.timer.add("merge", start)
        return {n: outputs[n] for n in configs}

    def inspect(self, run: MethodRun, name: str) -> dict:
        """``mergekit-cabs inspect`` of the run's config at scale 1 (masks ignore the scale)."""
        start = time.perf_counter()
        result = inspect_masks(self.config(run, 1.0), self.workdir / "inspect" / name, self.seed)
        self.timer.add("inspect", start)
        return result

    def extra_test_scores(self, state: dict) -> dict:
        """Scores besides task accuracy that every test row records (none for the encoder)."""
        return {}

    def grid_point_extras(self, run: MethodRun, scale: float, state: dict) -> dict:
        """``{scale: what else to record}`` of one validation-grid point (none for the encoder)."""
        return {}

    def take(self, output: Path) -> dict:
        """The merged state in ``output`` (a folder ``merge`` returned, which its merge created
        fresh); the folder is deleted."""
        state = load_body_state(output)
        remove_output(output)
        return state


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def accuracies(correct: dict[str, torch.Tensor]) -> dict[str, float]:
    return {t: float(c.float().mean()) for t, c in correct.items()}


def score_row(correct: dict[str, torch.Tensor], individual: Optional[dict] = None) -> dict:
    """Accuracy per task, its mean, the per-sentence bits (for the paired statistics) and,
    given each task's own accuracy, the normalized mean."""
    test = accuracies(correct)
    row = {"test": test, "mean": mean(test.values()),
           "test_correct": {t: "".join("1" if v else "0" for v in c.tolist()) for t, c in correct.items()}}
    if individual is not None:
        row["normalized"] = normalized_mean(test, individual)
    return row


def fine_tune_all(start_body, tasks, settings: TrainSettings, seed: int, workdir: Path,
                  start_heads: Optional[dict] = None):
    """Fine-tune a copy of ``start_body`` per task; save bodies (safetensors) and heads.

    ``start_heads``: each task continues from its head there (descendants of an ancestor).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    paths, heads = [], {}
    for index, task in enumerate(tasks):
        body = copy.deepcopy(start_body)
        (head,) = fine_tune(body, [task], settings, seed=seed * 1000 + index, heads=start_heads).values()
        path = workdir / f"finetuned_{task.name}"
        body.save_pretrained(path, safe_serialization=True)
        save_head(head, workdir / f"head_{task.name}.pt")
        heads[task.name] = load_head(workdir / f"head_{task.name}.pt")
        paths.append(str(path.resolve()))
    return paths, heads


def training_record(settings: TrainSettings, tasks) -> dict:
    """Learning rates, epochs and optimizer steps of one fine-tune per task."""
    return {**asdict(settings), "steps": {t.name: steps_of(settings, len(t.train.input_ids)) for t in tasks}}


def choose_scale(score: Callable[[float], float], settings: SeedSettings) -> tuple[float, dict]:
    """Best validation scale over powers of two, widened until the best is interior.

    Ties go to the smaller scale. Returns the chosen scale and every evaluated point.
    """
    curve: dict[float, float] = {}

    def visit(exponent: float) -> None:
        scale = 2.0 ** exponent
        if scale not in curve:
            curve[scale] = score(scale)

    def best_exponent() -> float:
        best = max(sorted(curve), key=lambda s: curve[s])  # max keeps the first (smallest) tie
        return float(torch.log2(torch.tensor(best)))

    for k in settings.initial_exponents:
        visit(k)
    low, high = SCALE_EXPONENT_LIMITS
    while True:
        grid = sorted(round(float(torch.log2(torch.tensor(s)))) for s in curve)
        k = best_exponent()
        if k <= grid[0] and grid[0] > low:
            visit(grid[0] - 1)
        elif k >= grid[-1] and grid[-1] < high:
            visit(grid[-1] + 1)
        else:
            break
    if settings.refine:
        k = best_exponent()
        visit(k - 0.5)
        visit(k + 0.5)
    best = max(sorted(curve), key=lambda s: curve[s])
    return best, curve


def normalized_mean(scores: dict, reference: dict) -> float:
    """Mean over tasks of accuracy / the task's own fine-tuned accuracy."""
    return mean(scores[t] / reference[t] for t in scores)


def weight_one_row(ctx: SeedContext, run: MethodRun, unit: dict, individual: dict) -> dict:
    """The merge at weight 1 (what ``mergekit-yaml`` writes for the config a user writes
    untuned), scored on test."""
    row = {"method": run.method, "density": run.density, "block_size": run.block_size,
           "options": dict(run.options), "scale": 1.0}
    row.update(score_row(ctx.evaluate_state(unit, "test"), individual))
    return {**row, **ctx.extra_test_scores(unit)}


def run_method(ctx: SeedContext, run: MethodRun, unit_merge: Path, settings: SeedSettings,
               individual: dict) -> dict:
    """Search the scale on validation from the merge at scale 1, score the chosen scale on test."""
    unit = ctx.take(unit_merge)
    delta = merged_delta(unit, ctx.base_state)
    if run.label in settings.weight_one:
        ctx.weight_one[run.label] = weight_one_row(ctx, run, unit, individual)
    del unit
    extras: dict = {}

    def score(s: float) -> float:
        state = scaled_state(ctx.base_state, delta, s)
        value = ctx.validation_mean(state)
        extras.update(ctx.grid_point_extras(run, s, state))
        return value

    scale, curve = choose_scale(score, settings)
    rescaled = scaled_state(ctx.base_state, delta, scale)
    record = {"method": run.method, "density": run.density, "block_size": run.block_size,
              "options": dict(run.options), "scale_key": run.scale_key, "scale": scale,
              "val_curve": {f"{s:.6g}": v for s, v in sorted(curve.items())}}
    if extras:
        record["grid_extras"] = {f"{s:.6g}": v for s, v in sorted(extras.items())}
    if settings.verify(run):
        (output,) = ctx.merge({run.label: ctx.config(run, scale)}, batch=False).values()
        merged = ctx.take(output)
        record["rescale_max_abs_diff"] = max_abs_difference(merged, rescaled)
        rescaled = merged  # score exactly what mergekit-yaml wrote at the chosen scale
    record.update(score_row(ctx.evaluate_state(rescaled, "test"), individual))
    record.update(ctx.extra_test_scores(rescaled))
    return record


Search = Callable[[Path, Path], SearchResult]  # (config at weight 1, output folder) -> result


def search_row(ctx: SeedContext, run: MethodRun, search: Search, individual: dict, info: Optional[dict] = None,
               variant: str = "search") -> dict:
    """A run's weights found by ``search`` from weight 1 (it writes ``merge.yml`` in its output
    folder); that merge.yml merged by plain ``mergekit-yaml`` and scored on validation (where
    the grid chose), test and whatever else test rows record."""
    folder = ctx.workdir / "search" / f"{run.label}-{variant.replace(', ', '-').replace(' ', '_')}"
    folder.mkdir(parents=True, exist_ok=True)
    config_path = folder / "config.yml"
    config_path.write_text(yaml.safe_dump(ctx.config(run, 1.0), sort_keys=False))
    start = time.perf_counter()
    result = search(config_path, folder / "out")
    seconds = time.perf_counter() - start
    ctx.timer.add("search", start)
    state = ctx.take(run_mergekit_yaml(yaml.safe_load((folder / "out" / "merge.yml").read_text()),
                                       folder / "merge", ctx.seed))
    record = {"method": run.method, "density": run.density, "block_size": run.block_size,
              "options": dict(run.options), "weights": result.weights_record(result.best.weights),
              "search": {"evaluations": len(result.evaluations), "wall_seconds": round(seconds, 1),
                         "start_fitness": result.start.fitness, "best_fitness": result.best.fitness,
                         "start_losses": list(result.start.losses), "best_losses": list(result.best.losses),
                         "best_index": result.best.index, "kept_shares": list(result.kept_shares.values()),
                         "trace": search_trace(result), **(info or {})},
              "val_mean": ctx.validation_mean(state)}
    record.update(score_row(ctx.evaluate_state(state, "test"), individual))
    record.update(ctx.extra_test_scores(state))
    return record


def search_trace(result: SearchResult) -> list[list]:
    """Every evaluation as ``[stage, weights, losses, fitness]`` (6 significant digits)."""
    return [[r.stage, [float(f"{w:.6g}") for w in r.weights], [float(f"{v:.6g}") for v in r.losses],
             float(f"{r.fitness:.6g}") if math.isfinite(r.fitness) else None] for r in result.evaluations]


# The search as the paper runs it, and the options beyond it (issue: kept only if they help).
# The first stage runs on a quarter of each validation split, at a quarter of the cost.
SEARCH_VARIANTS = {
    "search": {},
    "search, cabs-plus": {**PAPER_SEARCH, "loss": "nll"},
    "search, layer groups": {"layer_groups": True},
    "search, patience 2": {"patience": 2},
    "search, first stage": {"first_stage_evaluations": 17},
}


def head_search(ctx: SeedContext, settings: SeedSettings, variant: str) -> Search:
    """``search_weights`` on the encoder: each task's loss is its head's cross-entropy on the
    validation split, the resident model a ``BertModel`` (the heads are not merged)."""
    from transformers import AutoModel

    options = dict(SEARCH_VARIANTS[variant])
    kind = options.pop("loss", DEFAULT_LOSS)

    def losses(fraction: float) -> list:
        splits = {t.name: split_prefix(t.val, fraction) for t in ctx.tasks}
        return [lambda body, name=t.name: head_loss(body, ctx.heads[name], splits[name], kind) for t in ctx.tasks]

    search_settings = SearchSettings(evaluations=settings.search_evaluations, seed=ctx.seed, random_seed=ctx.seed,
                                     **options)

    def search(config: Path, out: Path) -> SearchResult:
        result = search_weights(config, losses(1.0), search_settings,
                                first_stage_losses=losses(0.25) if "first_stage_evaluations" in options else None,
                                model_factory=AutoModel.from_config, task_names=[t.name for t in ctx.tasks],
                                progress=False)
        write_outputs(result, out)
        return result

    return search


def run_methods(ctx: SeedContext, runs: Sequence[MethodRun], settings: SeedSettings, individual: dict,
                log: Callable[[str], None]) -> dict:
    """Every run merged at scale 1 (one batch), then its scale search and test scores."""
    unit_merges = ctx.merge({run.label: ctx.config(run, 1.0) for run in runs})
    rows = {}
    for run in runs:
        rows[run.label] = row = run_method(ctx, run, unit_merges[run.label], settings, individual)
        log(f"seed {ctx.seed}: {run.label:34s} scale {row['scale']:.3g}  test mean {row['mean']:.4f}")
    rows.update({f"{label} [weight 1]": row for label, row in ctx.weight_one.items()})
    return rows


def inspect_runs(ctx: SeedContext, runs: Sequence[MethodRun]) -> dict:
    """Mask statistics of every run of ours, one inspect per distinct mask.

    A TIES combine keeps the masks of its sum twin (``cabs_ties`` those of ``cabs``), so a
    run is inspected only when no run with the same masks was; ``magnitude_linear``'s masks
    are the per-tensor magnitude masks every inspect reports next to the method's.
    """
    out, seen = {}, {}
    for run in runs:
        twin = mask_twin(run.method)
        if twin is None or twin == "magnitude_linear":
            continue  # MergeKit's own methods: inspect takes configs of ours
        key = (twin, run.density, run.block_size)
        if key not in seen:
            seen[key] = ctx.inspect(MethodRun(twin, run.density, run.block_size), f"{twin}@{run.density:g}")
        out[run.label] = seen[key]
    for run in runs:
        if mask_twin(run.method) == "magnitude_linear":
            other = next((stats for (_, density, _), stats in seen.items() if density == run.density), None)
            if other is not None:
                out[run.label] = magnitude_statistics(other)
    return out


def magnitude_statistics(inspected: dict) -> dict:
    """The statistics of per-tensor magnitude masks, from any inspect at the same density."""
    out = {key: {"method": inspected[key]["magnitude"], "magnitude": inspected[key]["magnitude"]}
           for key in ("overlap", "kept_share", "kept_energy")}
    return {**out, "lost_to_ca": None}


def equal_kept_runs(methods: Sequence[str], inspected: dict, density: float, block_size: int) -> list[MethodRun]:
    """Each method at the n:m density whose kept count matches magnitude masks' at ``density``.

    Exact zeros are never kept, so an n:m mask keeps less than its nominal density where
    task vectors have all-zero blocks; scaling n by the measured ratio of kept shares
    compares the methods at equal kept counts.
    """
    runs = []
    for method in methods:
        stats = inspected.get(MethodRun(method, density, block_size).label)
        if stats is None:
            continue
        ratio = mean(stats["kept_share"]["magnitude"]) / mean(stats["kept_share"]["method"])
        n = min(block_size, max(1, round(density * block_size * ratio)))
        if n != round(density * block_size):
            runs.append(MethodRun(method, n / block_size, block_size))
    return runs


def candidate_orders(n_tasks: int, norms: Sequence[float], settings: SeedSettings, seed: int) -> dict:
    """Pruning orders to try, named by how they were chosen.

    Every order when there are at most ``max_orders``; else a seeded sample. The YAML order
    and the rule "largest task-vector norm first" (and its reverse) are always included.
    """
    by_norm = tuple(sorted(range(n_tasks), key=lambda i: -norms[i]))
    named = {"yaml order": tuple(range(n_tasks)), "largest norm first": by_norm,
             "smallest norm first": tuple(reversed(by_norm))}
    all_orders = itertools.permutations(range(n_tasks))
    if math.factorial(n_tasks) <= settings.max_orders:
        others = list(all_orders)
    else:
        generator = torch.Generator().manual_seed(seed)
        others = [tuple(torch.randperm(n_tasks, generator=generator).tolist()) for _ in range(settings.max_orders)]
    orders = {order: [] for order in others}
    for name, order in named.items():
        orders.setdefault(order, []).append(name)
    return orders


def run_orders(ctx: SeedContext, scale: float, norms: Sequence[float], settings: SeedSettings) -> list[dict]:
    """CABS with the models listed (hence pruned) in several orders, at the chosen scale."""
    run = MethodRun("cabs", settings.order_density, settings.block_size)
    names = [t.name for t in ctx.tasks]
    orders = candidate_orders(len(names), norms, settings, ctx.seed)
    outputs = ctx.merge({
        "order-" + "-".join(map(str, order)): ctx.config(run, scale, [ctx.model_paths[i] for i in order])
        for order in orders
    })
    rows = []
    for (order, rules), output in zip(orders.items(), outputs.values()):
        row = score_row(ctx.evaluate_state(ctx.take(output), "test"))
        rows.append({"order": [names[i] for i in order], "rules": rules, **row})
    return rows


def run_arm(ctx: SeedContext, runs: Sequence[MethodRun], settings: SeedSettings, tuned_states: Sequence[dict],
            finetuned: dict, log: Callable[[str], None]) -> dict:
    """One set of fine-tuned models merged against one base: every method, masks, norms."""
    individual_correct = {t.name: finetuned[t.name][t.name] for t in ctx.tasks}
    individual = accuracies(individual_correct)
    record = {
        "seed": ctx.seed,
        "individual": score_row(individual_correct),
        "base_with_heads": score_row(ctx.evaluate_state(ctx.base_state, "test"), individual),
        "task_vector_norms": dict(zip([t.name for t in ctx.tasks], task_vector_norms(ctx.base_state, tuned_states))),
    }
    record["methods"] = run_methods(ctx, runs, settings, individual, log)
    by_label = {run.label: run for run in runs}
    for label, variant in settings.search:
        if label in by_label:
            row = search_row(ctx, by_label[label], head_search(ctx, settings, variant), individual,
                             {"variant": variant, **SEARCH_VARIANTS[variant]}, variant)
            record["methods"][f"{label} [{variant}]"] = row
            log(f"seed {ctx.seed}: {label} [{variant}] weights {row['weights']} test mean {row['mean']:.4f}")
    start = time.perf_counter()
    record["overlap"] = overlap_rates(ctx.base_state, tuned_states, settings.densities, settings.block_size)
    ctx.timer.add("overlap", start)
    if settings.inspect:
        record["inspect"] = inspect_runs(ctx, runs)
        extra = equal_kept_runs(settings.equal_kept, record["inspect"], settings.order_density, settings.block_size)
        if extra:
            record["methods"].update(run_methods(ctx, extra, settings, individual, log))
            record["inspect"].update(inspect_runs(ctx, extra))
            record["equal_kept"] = {run.label: f"magnitude masks @{settings.order_density:g}" for run in extra}
    return record


def finetuned_scores(ctx: SeedContext, tuned_states: Sequence[dict]) -> dict:
    """Each fine-tuned model on its own task, per sentence (scoring it on the other tasks, with
    heads trained on other bodies, costs a tenth of a full run and answers no question here)."""
    return {t.name: ctx.evaluate_state(s, "test", [t]) for t, s in zip(ctx.tasks, tuned_states)}


def run_seed(base_body, tasks: Sequence[EncodedTask], settings: SeedSettings, seed: int,
             workdir: Path, runs: Sequence[MethodRun], name: str = "light",
             log: Callable[[str], None] = print) -> dict[str, dict]:
    """Everything for one seed; returns its JSON-able record per arm (name -> record).

    An arm is one set of fine-tuned models merged against one base: one arm ``name``, or
    in the shared-ancestry regime one per descendant setting and merge base (the original
    base, as LLM merges do, and the ancestor). ``workdir`` must be new, empty or this
    benchmark's previous output, which is cleared from its manifest first (``owned_output_dir``);
    anything else is refused before any work.
    """
    with owned_output_dir(workdir, TOOL) as owned:
        return seed_arms(base_body, tasks, settings, seed, owned, runs, name, log)


def seed_arms(base_body, tasks: Sequence[EncodedTask], settings: SeedSettings, seed: int,
              workdir: Path, runs: Sequence[MethodRun], name: str, log: Callable[[str], None]) -> dict[str, dict]:
    """``run_seed`` in the folder it owns."""
    seed_start = start = time.perf_counter()
    base_path = workdir / "base"
    base_body.save_pretrained(base_path, safe_serialization=True)
    base = (str(base_path.resolve()), load_body_state(base_path))
    arms, contexts = {}, {}

    def add_arms(start_body, start_heads, train: TrainSettings, sub: Path, merge_bases: dict, arm: str, extra: dict):
        """Fine-tune every task from ``start_body``; one arm per merge base."""
        tune_start = time.perf_counter()
        paths, heads = fine_tune_all(start_body, tasks, train, seed, workdir / sub, start_heads)
        tuned_states = [load_body_state(p) for p in paths]
        tune_seconds = time.perf_counter() - tune_start
        log(f"seed {seed}: fine-tuned {len(tasks)} tasks ({arm}) in {tune_seconds:.0f}s")
        finetuned = None
        for base_name, (path, state) in merge_bases.items():
            label = arm if len(merge_bases) == 1 else f"{arm}, vs {base_name}"
            ctx = SeedContext(seed, workdir / sub / f"vs_{base_name}", tasks, path, paths, state,
                              copy.deepcopy(base_body), heads, Timer())
            if finetuned is None:  # the models and their scores are shared by the merge bases
                ctx.timer.totals["fine_tune"] = tune_seconds
                finetuned = finetuned_scores(ctx, tuned_states)
            arms[label] = {**run_arm(ctx, runs, settings, tuned_states, finetuned, log),
                           "train": training_record(train, tasks), **extra}
            contexts[label] = ctx

    if settings.ancestry is None:
        add_arms(base_body, None, settings.train, Path("."), {"base": base}, name, {})
    else:
        ancestor = copy.deepcopy(base_body)
        ancestor_heads = fine_tune(ancestor, tasks, settings.train, seed=seed * 1000 + 999)
        ancestor.save_pretrained(workdir / "ancestor", safe_serialization=True)
        ancestor_state = load_body_state(workdir / "ancestor")
        probe = SeedContext(seed, workdir, tasks, base[0], [], base[1], copy.deepcopy(base_body), ancestor_heads)
        alone = {"ancestor_alone": score_row(probe.evaluate_state(ancestor_state, "test")),
                 "ancestor_train": {**training_record(settings.train, tasks),
                                    "seconds": round(time.perf_counter() - start, 1)}}
        log(f"seed {seed}: ancestor (mixture of {len(tasks)} tasks) in {alone['ancestor_train']['seconds']:.0f}s, "
            f"test mean {alone['ancestor_alone']['mean']:.4f}")
        bases = {"base": base, "ancestor": (str((workdir / "ancestor").resolve()), ancestor_state)}
        for descendant, train in settings.ancestry.descendants:
            add_arms(ancestor, ancestor_heads, train, Path(descendant), bases, f"{name} {descendant}", alone)
    if settings.orders:
        # The order study belongs where CA has the most to resolve: the largest overlap.
        key = f"magnitude_linear@{settings.densities[0]:g}"
        label = max(arms, key=lambda a: arms[a]["overlap"][key])
        cabs = arms[label]["methods"].get(MethodRun("cabs", settings.order_density).label)
        if cabs is not None:
            norms = list(arms[label]["task_vector_norms"].values())
            arms[label]["orders"] = run_orders(contexts[label], cabs["scale"], norms, settings)
    for label, ctx in contexts.items():
        arms[label]["seconds"] = {k: round(v, 1) for k, v in ctx.timer.totals.items()}
    log(f"seed {seed}: done in {time.perf_counter() - seed_start:.0f}s")
    return arms
