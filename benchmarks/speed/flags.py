"""MergeKit's thread and shard options as users set them: ``task_arithmetic`` against
``cabs@64`` on the 7B-shaped family of ``benchmarks.speed.run`` (``inputs`` builds it).

    python -m benchmarks.speed.flags [--repeats 2] [--out benchmarks/speed/results/flags.json]

Each merge is a ``mergekit-yaml`` subprocess into a folder this tool creates under a new
temporary directory and removes whole afterwards. Rows: the defaults, ``-j 1`` (one torch
thread: our kernels follow torch's thread count) and ``--out-shard-size 500M --async-write``
(shards written by MergeKit's writer thread while the merge goes on).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .inputs import SEVEN_B, build_checkpoints, layers_for
from .timing import HERE, MERGEKIT_YAML
from .variants import method_config

FLAG_SETS = {"defaults": [], "-j 1": ["-j", "1"],
             "--out-shard-size 500M --async-write": ["--out-shard-size", "500M", "--async-write"]}
VARIANTS = ("task_arithmetic", "cabs@64")


def timed_merge(variant: str, flags: list[str], checkpoints, scratch: Path) -> float:
    """Wall seconds of one ``mergekit-yaml`` run of ``variant`` with ``flags`` into ``scratch``."""
    config = scratch / "config.yml"
    config.write_text(yaml.safe_dump(method_config(variant, checkpoints)))
    started = time.perf_counter()
    subprocess.run([MERGEKIT_YAML, str(config), str(scratch / "merged"), "--no-copy-tokenizer", "--quiet",
                    "--random-seed", "0", *flags], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return time.perf_counter() - started


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.flags", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "flags.json")
    args = parser.parse_args(argv)
    checkpoints = build_checkpoints(args.work, layers_for(0.7e9, SEVEN_B), SEVEN_B)
    walls: dict[str, dict[str, list[float]]] = {name: {v: [] for v in VARIANTS} for name in FLAG_SETS}
    for repeat in range(args.repeats):  # round-robin: drift hits every row alike
        for name, flags in FLAG_SETS.items():
            for variant in VARIANTS:
                with tempfile.TemporaryDirectory(prefix="flags-") as scratch:
                    walls[name][variant].append(timed_merge(variant, flags, checkpoints, Path(scratch)))
                print(repeat, name, variant, f"{walls[name][variant][-1]:.1f} s", flush=True)
    result = {"command": "python -m benchmarks.speed.flags " + " ".join(argv or sys.argv[1:]),
              "walls_s": walls,
              "median_ratio_cabs_vs_task_arithmetic": {
                  name: statistics.median(w["cabs@64"]) / statistics.median(w["task_arithmetic"])
                  for name, w in walls.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
