"""The whole-merge benchmark's measurements: each row a subprocess, timed and weighed.

Every row runs as a subprocess under ``measure_child``, a light launcher that reads
``wait4``'s rusage of its one child (spawned straight from here, which has torch loaded, a
child's ``ru_maxrss`` would start at this process's RSS). A family's rows run round-robin over
the repeats, the order shifted by one each repeat, so that drift in the machine's load hits
every row alike; the page cache is warm (dropping it needs root), so a read of every input
precedes a family's runs.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml

from mergekit_cabs.versions import versions

from ..merge_outputs import fresh_output, remove_output
from .inputs import DATA_VERSION, Checkpoints, build_checkpoints
from .targets import target_checks
from .variants import BLOCK_SIZE, DENSITY, IO_FLOOR, STARTUP, method_config, variant_env

HERE = Path(__file__).resolve().parent
# The children run as modules of this package, from the folder that holds ``benchmarks``.
PACKAGE_ROOT = HERE.parents[1]
IO_FLOOR_MODULE = "benchmarks.speed.io_floor"
MEASURE_CHILD_MODULE = "benchmarks.speed.measure_child"
MERGEKIT_YAML = str(Path(sys.executable).with_name("mergekit-yaml"))
# Rows of the first family that run --focus-repeats times: the cabs-vs-task_arithmetic target
# is the tightest, so it gets more samples than the rest.
FOCUS = (IO_FLOOR, "task_arithmetic", f"cabs@{BLOCK_SIZE}")


@dataclass
class Run:
    """One measured subprocess."""

    variant: str
    repeat: int
    position: int
    wall_s: float
    peak_rss_mib: float
    output_bytes: int
    load_1min: float


def measure(command: list[str], log: Path, env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process, through ``measure_child``.

    Run from ``PACKAGE_ROOT`` (``python -m`` finds the launcher there); every path in
    ``command`` is absolute.
    """
    with log.open("w") as log_file:
        result = subprocess.run([sys.executable, "-m", MEASURE_CHILD_MODULE, *command], cwd=PACKAGE_ROOT,
                                stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
        log_file.write(result.stdout)
    lines = result.stdout.strip().splitlines()
    if result.returncode or not lines:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{log.read_text()[-3000:]}")
    report = json.loads(lines[-1])
    return report["wall_s"], report["peak_rss_kib"] / 1024  # Linux reports KiB


def output_bytes(path: Path) -> int:
    """Bytes of safetensors written at ``path`` (a file, or a folder of shards)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    return sum(f.stat().st_size for f in files if f.exists())


def variant_command(variant: str, checkpoints: Checkpoints, scratch: Path, mergekit_flags: list[str]):
    """(command, output path) of one variant; reference rows run no merge. The output path
    must not exist yet (``fresh_output``): it is removed after the run."""
    if variant == IO_FLOOR:
        out = fresh_output(scratch / "io_floor.safetensors")
        return [sys.executable, "-m", IO_FLOOR_MODULE, str(out), checkpoints.base, *checkpoints.finetuned], out
    if variant == STARTUP:
        return [MERGEKIT_YAML, "--help"], None
    config = scratch / f"{variant.replace('@', '_').replace(':', '_')}.yml"
    config.write_text(yaml.safe_dump(method_config(variant, checkpoints), sort_keys=False))
    out = fresh_output(scratch / "merged")
    return [MERGEKIT_YAML, str(config), str(out), *mergekit_flags], out


def run_variant(variant: str, repeat: int, position: int, checkpoints: Checkpoints, scratch: Path,
                mergekit_flags: list[str], env: dict) -> Run:
    """Measure one variant once; check it wrote an output of the model's size, then delete it."""
    command, out = variant_command(variant, checkpoints, scratch, mergekit_flags)
    load = os.getloadavg()[0]
    log = scratch / "logs" / f"{variant.replace('@', '_').replace(':', '_')}_{repeat}.log"
    try:
        wall, rss = measure(command, log, variant_env(variant, env))
        written = output_bytes(out) if out else 0
    finally:
        if out is not None:
            remove_output(out)
    if out is not None and written < checkpoints.bytes_per_model:
        raise RuntimeError(f"{variant} wrote {written} bytes, expected >= {checkpoints.bytes_per_model}")
    return Run(variant, repeat, position, wall, rss, written, load)


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    return next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
                platform.processor() or platform.machine())


def machine_description(num_threads, cuda: bool) -> dict:
    """CPU, cores, memory, versions and the thread count MergeKit's torch runs with."""
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu_name(),
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(ram_gib, 1),
        "os": platform.platform(),
        **versions(("torch", "mergekit", "mergekit-cabs", "numba", "transformers", "safetensors")),
        # MergeKit sets torch's threads only when given -j; otherwise torch's default (this
        # process's, under the same environment) applies in the child.
        "mergekit_threads": num_threads if num_threads else torch.get_num_threads(),
        "mergekit_threads_source": "-j" if num_threads else "torch default",
        "thread_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
        "gpu": torch.cuda.get_device_name() if cuda and torch.cuda.is_available() else None,
    }


def summarize(runs: list[Run]) -> dict:
    """Per variant: median and min wall, peak RSS, and ratios to the reference rows."""
    rows = {}
    for variant in dict.fromkeys(r.variant for r in runs):
        mine = [r for r in runs if r.variant == variant]
        walls = [r.wall_s for r in mine]
        rows[variant] = {"median_wall_s": statistics.median(walls), "min_wall_s": min(walls),
                         "max_wall_s": max(walls), "peak_rss_mib": max(r.peak_rss_mib for r in mine),
                         "runs": len(mine)}

    def ratio(variant, key, reference):
        base = rows.get(reference, {}).get(key)
        return rows[variant][key] / base if base else None

    for variant, row in rows.items():
        row["vs_io_floor"] = ratio(variant, "median_wall_s", IO_FLOOR)
        row["vs_task_arithmetic"] = ratio(variant, "median_wall_s", "task_arithmetic")
        row["vs_ties"] = ratio(variant, "median_wall_s", "ties")
        row["rss_vs_task_arithmetic"] = ratio(variant, "peak_rss_mib", "task_arithmetic")
    return rows


@dataclass(frozen=True)
class Family:
    """One synthetic model family and the rows measured on it."""

    name: str
    slug: str
    dims: dict
    layers: int
    variants: list[str]
    focus_repeats: int  # runs of the FOCUS rows; every other row runs --repeats times

    def runs_of(self, variant: str, repeats: int) -> int:
        return max(repeats, self.focus_repeats) if variant in FOCUS else repeats


def rotation(family: Family, repeats: int, checkpoints: Checkpoints, scratch: Path, mergekit_flags: list[str],
             env: dict) -> list[Run]:
    """Every run of the family's rows: round-robin over the repeats, the order shifted by one
    each repeat; ``FOCUS`` rows run ``family.focus_repeats`` times."""
    runs = []
    rounds = max(family.runs_of(v, repeats) for v in family.variants)
    for repeat in range(rounds):
        variants = [v for v in family.variants if family.runs_of(v, repeats) > repeat]
        shift = repeat % len(variants)
        for position, variant in enumerate(variants[shift:] + variants[:shift]):
            run = run_variant(variant, repeat, position, checkpoints, scratch, mergekit_flags, env)
            runs.append(run)
            print(f"{family.slug} repeat {repeat + 1}/{rounds} {variant:28s} {run.wall_s:7.1f} s "
                  f"{run.peak_rss_mib:8.0f} MiB  (load {run.load_1min:.1f})", flush=True)
    return runs


def run_family(family: Family, work: Path, repeats: int, scratch: Path, mergekit_flags: list[str],
               env: dict) -> dict:
    """Build or reuse the family's checkpoints under ``work``, run its rotation in ``scratch``,
    summarize it and check its targets."""
    started = time.perf_counter()
    checkpoints = build_checkpoints(work, family.layers, family.dims)
    print(f"{family.name}: checkpoints ready in {time.perf_counter() - started:.0f} s: "
          f"{Path(checkpoints.base).parent}", flush=True)
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    run_variant(IO_FLOOR, -1, -1, checkpoints, scratch, mergekit_flags, env)  # warm the page cache for all
    runs = rotation(family, repeats, checkpoints, scratch, mergekit_flags, env)
    rows = summarize(runs)
    repeats_text = f"{repeats} round-robin run(s) per row"
    if family.focus_repeats > repeats:
        repeats_text += f", {family.focus_repeats} of {', '.join(f'`{v}`' for v in FOCUS)}"
    return {
        "name": family.name, "slug": family.slug, "repeats": repeats_text,
        "inputs": {"n_finetuned": len(checkpoints.finetuned), "layers": checkpoints.layers,
                   "params_per_model": checkpoints.params_per_model, "dims": family.dims, "density": DENSITY,
                   "zero_share": checkpoints.zero_share, "data_version": DATA_VERSION, "page_cache": "warm"},
        "rows": rows,
        "targets": target_checks(rows, family.slug),
        "runs": [asdict(r) for r in runs],
    }


def warm_jit_cache(env: dict) -> float:
    """Seconds of one child that compiles, or loads from the JIT cache, every kernel a merge
    uses (``benchmarks.speed.compile_time``), so that no timed merge pays a compile: a user
    pays it once, and ``compile_time`` measures that cost on its own."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.speed.compile_time"], cwd=PACKAGE_ROOT, env=env, check=True)
    return time.perf_counter() - started
