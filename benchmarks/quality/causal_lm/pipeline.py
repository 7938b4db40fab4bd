"""One seed of the causal-LM regime: fine-tune each task, merge every method, choose its
weight on validation, search weights with ``mergekit-cabs search``, score on test.

The merging, the weight choice on validation and the inspect statistics are the encoder
regimes' own (``benchmarks.quality.pipeline``); only the model, its scoring and the rows
that need a causal LM (search, weight 1, general text) are here. Independent of where the
base comes from, so the smoke test runs it on a tiny Llama.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from mergekit_cabs.output_dir import owned_output_dir
from mergekit_cabs.search import PAPER_SEARCH, SearchSettings, search_causal_lm
from mergekit_cabs.search import DEFAULT_LOSS

from ..merging import MethodRun, load_body_state, run_mergekit_yaml
from ..pipeline import SeedContext, SeedSettings, inspect_runs, mean, run_methods, score_row, search_row
from .lm import EncodedTask, FineTuneSettings, chat_text, choice_correct, fine_tune, text_nll
from .tasks import PromptTask

TOOL = "benchmarks.quality.causal_lm.run"


@dataclass(frozen=True)
class LMSeedSettings:
    """What one seed runs; the presets live in ``benchmarks.quality.causal_lm.run``."""

    fine_tune: FineTuneSettings
    densities: tuple[float, ...]
    block_size: int
    # (run label, variant of SEARCH_VARIANTS): runs whose weights `mergekit-cabs search` finds
    search: tuple[tuple[str, str], ...] = ()
    search_evaluations: Optional[int] = None  # None: the search's own default
    calibration_texts: int = 32  # per task, drawn from the train split
    weight_one: tuple[str, ...] = ()  # labels also scored at weight 1 (what a user gets untuned)
    initial_exponents: tuple[int, ...] = (-1, 0, 1)
    verify: tuple[str, ...] = ()  # labels re-merged at their chosen weight by plain mergekit-yaml
    inspect: bool = True
    proxy: tuple[str, ...] = ()  # labels whose validation-grid points also record the calibration loss


@dataclass
class LMContext(SeedContext):
    """A seed's merges and scores on one resident causal LM (``body`` is the whole model)."""

    general: Sequence[Sequence[int]] = field(default_factory=list)
    proxy_labels: tuple[str, ...] = ()
    calibration_losses: Sequence[Callable] = ()  # the search's loss of each task's calibration file

    def grid_point_extras(self, run: MethodRun, scale: float, state: dict) -> dict:
        """At the grid points of ``proxy_labels``: each task's calibration answer loss, the
        loss the search minimises (the model holds ``state``: ``validation_mean`` loaded it)."""
        if run.label not in self.proxy_labels or not self.calibration_losses:
            return {}
        start = time.perf_counter()
        losses = [float(loss(self.body)) for loss in self.calibration_losses]
        self.timer.add("calibration_loss", start)
        return {scale: {"calibration_losses": losses}}

    def load(self, state: dict) -> None:
        missing, unexpected = self.body.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        tied = {"lm_head.weight"} if getattr(self.body.config, "tie_word_embeddings", False) else set()
        if unexpected or set(missing) - tied:
            raise RuntimeError(f"state mismatch: missing {missing}, unexpected {unexpected}")

    def evaluate_state(self, state: dict, split: str,
                       tasks: Optional[Sequence[EncodedTask]] = None) -> dict[str, torch.Tensor]:
        start = time.perf_counter()
        self.load(state)
        correct = {t.name: choice_correct(self.body, t.splits[split]) for t in (tasks or self.tasks)}
        self.timer.add(f"evaluate_{split}", start)
        return correct

    def extra_test_scores(self, state: dict) -> dict:
        """Perplexity on the general text (``state`` is loaded: ``evaluate_state`` ran last)."""
        start = time.perf_counter()
        self.load(state)
        nll = text_nll(self.body, self.general)
        self.timer.add("general_text", start)
        return {"general_ppl": math.exp(float(nll.mean())), "general_nll": [round(float(v), 5) for v in nll]}


def cache_key(task: PromptTask, settings: FineTuneSettings, seed: int, base: str) -> str:
    record = {"task": task.name, "train": task.train, "settings": asdict(settings), "seed": seed,
              "base": hashlib.sha256(Path(base, "config.json").read_bytes()).hexdigest()}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:12]


def cached_fine_tune(make_model: Callable[[], torch.nn.Module], task: PromptTask, encoded: EncodedTask,
                     settings: FineTuneSettings, seed: int, base: str, cache: Path,
                     log: Callable[[str], None]) -> tuple[str, dict]:
    """The fine-tune of ``task`` (bf16 safetensors) under ``cache``, trained once per key.

    Written to a temporary folder and renamed when complete, so a stopped run leaves no
    half-written model that a later run would take for finished.
    """
    path = cache / f"{task.name}-seed{seed}-{cache_key(task, settings, seed, base)}"
    if not (path / "fine_tune.json").is_file():
        start = time.perf_counter()
        model = make_model()
        losses = fine_tune(model, encoded, settings, seed)
        partial = path.with_name(path.name + ".partial")
        if partial.exists():
            shutil.rmtree(partial)  # our own unfinished write (the name is ours alone)
        model.to(torch.bfloat16).save_pretrained(partial, safe_serialization=True)
        record = {**settings.record(), "seconds": round(time.perf_counter() - start, 1),
                  "first_loss": losses[0], "last_losses": losses[-5:]}
        (partial / "fine_tune.json").write_text(json.dumps(record, indent=1))
        partial.rename(path)
        log(f"seed {seed}: fine-tuned {task.name} in {record['seconds']:.0f}s, loss {losses[0]:.2f} -> {losses[-1]:.2f}")
    return str(path.resolve()), json.loads((path / "fine_tune.json").read_text())


def task_vector_geometry(base: dict, tuned: Sequence[dict], names: Sequence[str]) -> dict:
    """``||tau_i||`` and the cosine of every pair, over every floating tensor."""
    n = len(tuned)
    gram = torch.zeros((n, n), dtype=torch.float64)
    for key, value in base.items():
        if value.is_floating_point():
            taus = torch.stack([(t[key].float() - value.float()).flatten() for t in tuned]).double()
            gram += taus @ taus.T
    norms = gram.diagonal().sqrt()
    cosines = {f"{names[i]} / {names[j]}": float(gram[i, j] / (norms[i] * norms[j]))
               for i in range(n) for j in range(i + 1, n)}
    return {"norms": dict(zip(names, norms.tolist())), "cosines": cosines}


def descendant_scores(ctx: LMContext, tuned: Sequence[dict]) -> dict:
    """Each fine-tune on every task's test prompts and on the general text."""
    out = {}
    for task, state in zip(ctx.tasks, tuned):
        correct = ctx.evaluate_state(state, "test")
        out[task.name] = {**score_row(correct), **ctx.extra_test_scores(state)}
    return out


# The search variants a row can use (SearchSettings overrides), every one on the same
# prompt-completion calibration lines (the loss on the answer and end-of-turn tokens, what
# the fine-tunes were trained on): the search's defaults, the CABS+ paper's search (its
# fitness, box and CMA-ES on the weights, no shared stage), and each change alone.
SEARCH_VARIANTS = {
    "search": {},
    "search, cabs-plus": {**PAPER_SEARCH, "loss": "nll"},
    "search, cabs-plus fitness": {"fitness": "cabs-plus"},
    "search, nll loss": {"loss": "nll"},
    "search, no shared stage": {"shared_stage": False},
}
CALIBRATION_MAX_LENGTH, CALIBRATION_BATCH = 128, 16


def calibration_files(ctx: LMContext, raw_tasks: Sequence[PromptTask], tokenizer, count: int, folder: Path,
                      answer_only: bool = True) -> list[str]:
    """Per task, ``count`` training prompts with their answers, as the search's JSON lines:
    the chat-formatted turn and the answer, as the fine-tune saw them (seeded draw); as
    ``prompt`` and ``completion`` (``answer_only``), else as one ``text``."""
    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(ctx.seed)
    files = []
    for task in raw_tasks:
        questions, answers = task.train
        picks = torch.randperm(len(questions), generator=generator)[:count].tolist()
        pairs = [(chat_text(tokenizer, task.instruction, questions[i]), task.choices[answers[i]] + "<|im_end|>")
                 for i in picks]
        lines = [json.dumps({"prompt": prompt, "completion": answer} if answer_only else {"text": prompt + answer})
                 for prompt, answer in pairs]
        path = folder / f"{task.name}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        files.append(str(path))
    return files


def calibration_search(ctx: LMContext, data: Sequence[str], settings: LMSeedSettings, variant: str):
    """``mergekit-cabs search``'s own code on the calibration files (the causal-LM loss),
    with ``SEARCH_VARIANTS[variant]``'s settings."""
    budget = {} if settings.search_evaluations is None else {"evaluations": settings.search_evaluations}
    options = dict(SEARCH_VARIANTS[variant])
    loss = options.pop("loss", DEFAULT_LOSS)
    search_settings = SearchSettings(**{**budget, **options}, seed=ctx.seed, random_seed=ctx.seed)

    def search(config: Path, out: Path):
        return search_causal_lm(config, data, out, search_settings, max_length=CALIBRATION_MAX_LENGTH,
                                batch_size=CALIBRATION_BATCH, loss=loss, progress=False)

    return search


def calibration_losses(tokenizer, data: Sequence[str]) -> list:
    """The default search's own loss (``CausalLMLoss``) of each calibration file, as it reads it."""
    from mergekit_cabs.search.calibration import CausalLMLoss, read_task

    return [CausalLMLoss(read_task(path, tokenizer, CALIBRATION_MAX_LENGTH), CALIBRATION_BATCH, "cpu", DEFAULT_LOSS)
            for path in data]


def weight_one_rows(ctx: LMContext, runs: Sequence[MethodRun], individual: dict) -> dict:
    """The runs at weight 1 on every model, merged by plain ``mergekit-yaml`` and scored."""
    rows = {}
    for run in runs:
        state = ctx.take(run_mergekit_yaml(ctx.config(run, 1.0), ctx.workdir / "weight1" / run.label, ctx.seed))
        row = {"method": run.method, "density": run.density, "block_size": run.block_size,
               "options": dict(run.options), "scale": 1.0}
        row.update(score_row(ctx.evaluate_state(state, "test"), individual))
        rows[f"{run.label} [weight 1]"] = {**row, **ctx.extra_test_scores(state)}
    return rows


def inspected(ctx: LMContext, runs: Sequence[MethodRun]) -> tuple[dict, dict]:
    """Inspect statistics of the CA pairs' masks (one inspect per distinct mask) and the
    overlaps they give, named as ``aggregate`` expects."""
    pairs = [r for r in runs if r.method in ("cabs", "nm_linear", "magnitude_linear", "ca_magnitude_linear")]
    stats = inspect_runs(ctx, pairs)
    overlap = {f"{label} (inspect)": s["overlap"]["method"] for label, s in stats.items()}
    return stats, overlap


@dataclass(frozen=True)
class SeedInputs:
    """What every seed shares: the base, its tokenizer, the tasks and the general text."""

    base_path: str
    make_model: Callable[[], torch.nn.Module]  # the base, float32, freshly loaded
    tokenizer: object
    raw_tasks: Sequence[PromptTask]
    tasks: Sequence[EncodedTask]
    general: Sequence[Sequence[int]]
    cache: Path  # fine-tunes, kept across runs


def run_seed(inputs: SeedInputs, settings: LMSeedSettings, seed: int, workdir: Path, runs: Sequence[MethodRun],
             log: Callable[[str], None] = print) -> dict:
    """One seed's record. ``workdir`` must be new, empty or this benchmark's earlier output
    (``owned_output_dir``); the fine-tunes live in ``inputs.cache``, outside it."""
    with owned_output_dir(workdir, TOOL) as owned:
        return seed_record(inputs, settings, seed, owned, runs, log)


def seed_record(inputs: SeedInputs, settings: LMSeedSettings, seed: int, workdir: Path,
                runs: Sequence[MethodRun], log: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    by_label = {r.label: r for r in runs}
    wanted = [label for label, _ in settings.search] + list(settings.weight_one) + list(settings.proxy)
    missing = [label for label in wanted if label not in by_label]
    if missing:
        raise ValueError(f"search, weight-1 or proxy rows {missing} are not among the runs {list(by_label)}")
    ctx, tuned = seed_context(inputs, settings, seed, workdir, log)
    data = calibration_files(ctx, inputs.raw_tasks, inputs.tokenizer, settings.calibration_texts,
                             ctx.workdir / "calibration")
    ctx.proxy_labels, ctx.calibration_losses = settings.proxy, calibration_losses(inputs.tokenizer, data)
    base_state = ctx.base_state
    tuned_states = [load_body_state(Path(p)) for p, _ in tuned]
    names = [t.name for t in inputs.tasks]
    descendants = descendant_scores(ctx, tuned_states)
    individual = {t: descendants[t]["test"][t] for t in names}
    own = {t: descendants[t]["test_correct"][t] for t in names}
    geometry = task_vector_geometry(base_state, tuned_states, names)
    record = {
        "seed": seed,
        "individual": {"test": individual, "mean": mean(individual.values()), "test_correct": own},
        "descendants": descendants,
        "base_with_heads": {**score_row(ctx.evaluate_state(base_state, "test"), individual),
                            **ctx.extra_test_scores(base_state)},
        "task_vector_norms": geometry["norms"], "task_vector_cosines": geometry["cosines"],
        "train": {**settings.fine_tune.record(), "per_task": {t: info for t, (_, info) in zip(names, tuned)}},
    }
    del tuned_states
    log(f"seed {seed}: base test mean {record['base_with_heads']['mean']:.4f}, own tasks {record['individual']['mean']:.4f}")
    shared = SeedSettings(train=None, densities=settings.densities, block_size=settings.block_size,
                          initial_exponents=settings.initial_exponents, verify=lambda r: r.label in settings.verify,
                          weight_one=settings.weight_one)
    record["methods"] = run_methods(ctx, runs, shared, individual, log)
    record["methods"].update(search_rows(ctx, data, settings, settings.search, by_label, individual, log))
    record["inspect"], record["overlap"] = inspected(ctx, runs) if settings.inspect else ({}, {})
    record["seconds"] = {**{k: round(v, 1) for k, v in ctx.timer.totals.items()},
                         "seed": round(time.perf_counter() - started, 1)}
    log(f"seed {seed}: done in {record['seconds']['seed']:.0f}s")
    return record


def seed_context(inputs: SeedInputs, settings: LMSeedSettings, seed: int, workdir: Path,
                 log: Callable[[str], None]) -> tuple[LMContext, list[tuple[str, dict]]]:
    """A seed's context (its fine-tunes from the cache, trained there if missing) and the
    fine-tunes' (path, training record)."""
    torch.manual_seed(seed)
    tuned = [cached_fine_tune(inputs.make_model, raw, task, settings.fine_tune, seed, inputs.base_path,
                              inputs.cache, log) for raw, task in zip(inputs.raw_tasks, inputs.tasks)]
    ctx = LMContext(seed, workdir, inputs.tasks, inputs.base_path, [p for p, _ in tuned],
                    load_body_state(Path(inputs.base_path)), inputs.make_model(), {}, general=inputs.general)
    return ctx, tuned


def search_rows(ctx: LMContext, data: Sequence[str], settings: LMSeedSettings,
                searches: Sequence[tuple[str, str]], by_label: dict, individual: dict,
                log: Callable[[str], None]) -> dict:
    """Each (run label, variant) of ``searches`` at weights from ``mergekit-cabs search``
    (``SEARCH_VARIANTS[variant]``) on the calibration files ``data``."""
    rows = {}
    for label, variant in searches:
        row = search_row(ctx, by_label[label], calibration_search(ctx, data, settings, variant), individual,
                         {"calibration_texts_per_task": settings.calibration_texts, "variant": variant,
                          "settings": {k: list(v) if isinstance(v, tuple) else v
                                       for k, v in SEARCH_VARIANTS[variant].items()}}, variant)
        rows[f"{label} [{variant}]"] = row
        log(f"seed {ctx.seed}: {label} [{variant}] weights {row['weights']} test mean {row['mean']:.4f} "
            f"({row['search']['evaluations']} evaluations, {row['search']['wall_seconds']:.0f}s)")
    return rows


def norm_drift(norms: dict, stored: dict) -> float:
    """The largest relative difference between recomputed and recorded task-vector norms."""
    return max(abs(norms[t] - stored[t]) / stored[t] for t in stored)


def added_search_rows(inputs: SeedInputs, settings: LMSeedSettings, record: dict, workdir: Path,
                      runs: Sequence[MethodRun], variant: str, log: Callable[[str], None] = print,
                      tolerance: float = 1e-6) -> tuple[dict, dict]:
    """Search rows of ``variant`` for a finished seed ``record``, and their provenance.

    The fine-tunes come from the cache, retrained where missing. A fine-tune retrained on
    another machine matches only up to float rounding, so their task-vector norms must
    equal the record's within ``tolerance`` (relative), else nothing is added. Where they
    differ at all, the seed's weight-1 rows are merged and scored again from these
    fine-tunes: the provenance then says how far a recorded row moves with them."""
    by_label = {r.label: r for r in runs}
    with owned_output_dir(workdir, TOOL) as owned:
        ctx, tuned = seed_context(inputs, settings, record["seed"], owned, log)
        norms = task_vector_geometry(ctx.base_state, [load_body_state(Path(p)) for p, _ in tuned],
                                     [t.name for t in inputs.tasks])["norms"]
        drift = norm_drift(norms, record["task_vector_norms"])
        if drift > tolerance:
            raise RuntimeError(f"seed {record['seed']}: the cached fine-tunes' task-vector norms {norms} differ "
                               f"from the record's {record['task_vector_norms']} by up to {drift:.1e} (relative), "
                               f"over the tolerance {tolerance:g}; rows added now would not belong to this seed")
        individual = record["individual"]["test"]
        provenance: dict = {"max_norm_drift": drift}
        if drift > 0:
            provenance["reproduced"] = reproduced_rows(ctx, [by_label[k] for k in settings.weight_one], record,
                                                       individual)
            log(f"seed {record['seed']}: fine-tunes retrained (norms within {drift:.1e}); weight-1 rows again: "
                f"{provenance['reproduced']}")
        data = calibration_files(ctx, inputs.raw_tasks, inputs.tokenizer, settings.calibration_texts,
                                 ctx.workdir / "calibration")
        searches = [(label, variant) for label in dict.fromkeys(label for label, _ in settings.search)]
        return search_rows(ctx, data, settings, searches, by_label, individual, log), provenance


def reproduced_rows(ctx: LMContext, runs: Sequence[MethodRun], record: dict, individual: dict) -> dict:
    """``runs``' weight-1 rows merged and scored again: the recorded and the new test mean
    (points) and how many test prompts changed their verdict."""
    out = {}
    for label, row in weight_one_rows(ctx, runs, individual).items():
        then = record["methods"][label]
        changed = sum(a != b for t, now in row["test_correct"].items() for a, b in zip(now, then["test_correct"][t]))
        out[label] = {"recorded_mean": round(100 * then["mean"], 2), "mean": round(100 * row["mean"], 2),
                      "changed_prompts": changed, "prompts": sum(len(v) for v in row["test_correct"].values())}
    return out
