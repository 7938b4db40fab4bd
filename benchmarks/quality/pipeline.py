"""One seed of the benchmark: fine-tune, merge every method, choose its scale, score it.

Independent of where the base model and the tasks come from, so the smoke test runs the
same code on a tiny BertModel and synthetic tasks.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from merging import (
    OWN_PROCESS_METHODS,
    MethodRun,
    load_body_state,
    max_abs_difference,
    merge_config,
    merged_delta,
    overlap_rates,
    run_mergekit_multi,
    run_mergekit_yaml,
    scaled_state,
)
from training import EncodedTask, TrainSettings, evaluate_body, fine_tune, load_head, save_head

# Scale grid: powers of two, widened automatically until the best is interior.
SCALE_EXPONENT_LIMITS = (-6, 6)


@dataclass(frozen=True)
class SeedSettings:
    """What one seed runs; the presets live in run.py."""

    train: TrainSettings
    densities: tuple[float, ...]
    block_size: int
    initial_exponents: tuple[int, ...] = (-1, 0, 1, 2)
    refine: bool = False  # also try 2**(k +- 1/2) around the best power of two
    verify: Callable[[MethodRun], bool] = lambda run: True  # re-merge at the chosen scale?
    orders: bool = True  # CABS under every pruning order
    order_density: float = 0.1


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

    def evaluate_state(self, state: dict, split: str) -> dict[str, float]:
        start = time.perf_counter()
        missing, unexpected = self.body.load_state_dict(state, strict=False)
        # Only non-persistent buffers (position_ids) may be absent from a checkpoint.
        if unexpected or any(not k.endswith("position_ids") for k in missing):
            raise RuntimeError(f"state mismatch: missing {missing}, unexpected {unexpected}")
        scores = evaluate_body(self.body, self.tasks, self.heads, split)
        self.timer.add(f"evaluate_{split}", start)
        return scores

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

    def take(self, output: Path) -> dict:
        """The merged state in ``output``; the folder is deleted."""
        state = load_body_state(output)
        shutil.rmtree(output)
        return state


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def fine_tune_all(base_body, tasks, settings: TrainSettings, seed: int, workdir: Path):
    """Fine-tune a copy of the base per task; save bodies (safetensors) and heads."""
    paths, heads = [], {}
    for index, task in enumerate(tasks):
        body = copy.deepcopy(base_body)
        head = fine_tune(body, task, settings, seed=seed * 1000 + index)
        path = workdir / f"finetuned_{task.name}"
        body.save_pretrained(path, safe_serialization=True)
        save_head(head, workdir / f"head_{task.name}.pt")
        heads[task.name] = load_head(workdir / f"head_{task.name}.pt")
        paths.append(str(path.resolve()))
    return paths, heads


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


def run_method(ctx: SeedContext, run: MethodRun, unit_merge: Path, settings: SeedSettings,
               individual: dict) -> dict:
    """Search the scale on validation from the merge at scale 1, score the chosen scale on test."""
    delta = merged_delta(ctx.take(unit_merge), ctx.base_state)
    scale, curve = choose_scale(
        lambda s: mean(ctx.evaluate_state(scaled_state(ctx.base_state, delta, s), "val").values()),
        settings,
    )
    rescaled = scaled_state(ctx.base_state, delta, scale)
    record = {"method": run.method, "density": run.density, "block_size": run.block_size,
              "scale_key": run.scale_key, "scale": scale,
              "val_curve": {f"{s:.6g}": v for s, v in sorted(curve.items())}}
    if settings.verify(run):
        (output,) = ctx.merge({run.label: ctx.config(run, scale)}, batch=False).values()
        merged = ctx.take(output)
        record["rescale_max_abs_diff"] = max_abs_difference(merged, rescaled)
        rescaled = merged  # score exactly what mergekit-yaml wrote at the chosen scale
    record["test"] = ctx.evaluate_state(rescaled, "test")
    record["mean"] = mean(record["test"].values())
    record["normalized"] = normalized_mean(record["test"], individual)
    return record


def run_orders(ctx: SeedContext, scale: float, settings: SeedSettings) -> list[dict]:
    """CABS with the models listed (hence pruned) in every order, at the chosen scale."""
    run = MethodRun("cabs", settings.order_density, settings.block_size)
    names = [t.name for t in ctx.tasks]
    orders = list(itertools.permutations(range(len(names))))
    outputs = ctx.merge({
        "order-" + "".join(map(str, order)): ctx.config(run, scale, [ctx.model_paths[i] for i in order])
        for order in orders
    })
    rows = []
    for order, output in zip(orders, outputs.values()):
        scores = ctx.evaluate_state(ctx.take(output), "test")
        rows.append({"order": [names[i] for i in order], "test": scores, "mean": mean(scores.values())})
    return rows


def run_seed(base_body, tasks: Sequence[EncodedTask], settings: SeedSettings, seed: int,
             workdir: Path, runs: Sequence[MethodRun], log: Callable[[str], None] = print) -> dict:
    """Everything for one seed; returns its JSON-able record."""
    workdir.mkdir(parents=True, exist_ok=True)
    timer = Timer()
    seed_start = start = time.perf_counter()
    base_path = workdir / "base"
    base_body.save_pretrained(base_path, safe_serialization=True)
    model_paths, heads = fine_tune_all(base_body, tasks, settings.train, seed, workdir)
    timer.add("fine_tune", start)
    log(f"seed {seed}: fine-tuned {len(tasks)} tasks in {timer.totals['fine_tune']:.0f}s")
    ctx = SeedContext(seed, workdir, tasks, str(base_path.resolve()), model_paths,
                      load_body_state(base_path), copy.deepcopy(base_body), heads, timer)

    tuned_states = [load_body_state(p) for p in model_paths]
    finetuned = {t.name: ctx.evaluate_state(s, "test") for t, s in zip(tasks, tuned_states)}
    individual = {t.name: finetuned[t.name][t.name] for t in tasks}
    base_scores = ctx.evaluate_state(ctx.base_state, "test")
    record = {
        "seed": seed,
        "finetuned": finetuned,
        "individual": {"test": individual, "mean": mean(individual.values())},
        "base_with_heads": {"test": base_scores, "mean": mean(base_scores.values()),
                            "normalized": normalized_mean(base_scores, individual)},
        "methods": {},
    }
    unit_merges = ctx.merge({run.label: ctx.config(run, 1.0) for run in runs})
    for run in runs:
        row = run_method(ctx, run, unit_merges[run.label], settings, individual)
        record["methods"][run.label] = row
        log(f"seed {seed}: {run.label:28s} scale {row['scale']:.3g}  test mean {row['mean']:.4f}")
    start = time.perf_counter()
    record["overlap"] = overlap_rates(ctx.base_state, tuned_states, settings.densities, settings.block_size)
    timer.add("overlap", start)
    cabs_label = MethodRun("cabs", settings.order_density).label
    if settings.orders and cabs_label in record["methods"]:
        record["orders"] = run_orders(ctx, record["methods"][cabs_label]["scale"], settings)
    record["seconds"] = {k: round(v, 1) for k, v in timer.totals.items()}
    record["seconds"]["total"] = round(time.perf_counter() - seed_start, 1)
    return record
