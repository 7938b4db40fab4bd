"""Kernel microbenchmark on one 4096 x 14336 bf16 tensor (a 7B MLP matrix), in-process.

    python -m benchmarks.speed.kernels [--threads 2] [--rows 4096] [--repeats 5] [--device cpu|cuda]
                                       [--inputs gaussian|finetune] [--out PATH]

Times the torch masks (n:m, 3-task conflict-aware n:m, magnitude, DARE) on float32 task
vectors and whole fused merges of base + bf16 fine-tunes (``merge_tensor``, chunked as
``mergekit-yaml`` runs it): 1-task n:m, and 3-task conflict-aware n:m (``cabs``), magnitude and
DARE, on the default path (the compiled kernels unless ``MERGEKIT_CABS_TORCH_KERNELS=1``) and
the torch path. Each row reports the best and median time, ns per element and per element and
task, GB/s of bytes moved (inputs read + outputs written, one pass), and the time relative to an
fp32 copy measured in the same run: the memory-bandwidth reference.
``--inputs finetune`` draws the tensor as ``benchmarks.speed.run`` draws its model families
(Laplace deltas rounded into bf16: ~40% exact zeros, ``|tau|`` on a few ulp multiples, exact
ties at most n:m thresholds) instead of the default Gaussian deltas.
Writes JSON and the same table as markdown next to it (``kernels_report``, which also draws
it again from the JSON).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from mergekit_cabs.kernels import (
    MergeArgs,
    compiled_module,
    conflict_aware_masks,
    keep_count,
    magnitude_mask,
    merge_tensor,
    nm_mask,
    random_mask,
)
from mergekit_cabs.methods import CHUNK_ELEMENTS, METHODS_BY_NAME

from .inputs import COLUMNS, TASKS, TENSOR_INPUTS
from .kernels_report import write_report
from .timing import cpu_name

DENSITY, BLOCK_SIZE = 0.25, 64
# The targets, on the full tensor at 2 threads: ns per element and task of the fused merges.
NS_TARGETS = {"fused CA merge, 3 tasks (default path)": 1.0,
              "fused CA magnitude merge, 3 tasks (default path)": 1.5,
              "fused CA DARE merge, 3 tasks (default path)": 1.5}
COPY = "fp32 copy (bandwidth reference)"
FUSED = "fused CA merge, 3 tasks"
FUSED_MAGNITUDE = "fused CA magnitude merge, 3 tasks"
FUSED_DARE = "fused CA DARE merge, 3 tasks"
FUSED_NM_ONE = "fused n:m merge, 1 task"


def set_threads(threads: int) -> None:
    """Thread count for torch and, when installed, numba (the compiled kernel's pool)."""
    torch.set_num_threads(threads)
    if compiled_module() is not None:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))


def timings(fn: Callable[[], object], repeats: int, device: str) -> list[float]:
    """Seconds of ``repeats`` calls after one warm-up call (JIT, allocator, caches)."""

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    fn()
    seconds = []
    for _ in range(repeats):
        sync()
        started = time.perf_counter()
        fn()
        sync()
        seconds.append(time.perf_counter() - started)
    return seconds


def cases(base, tuned, taus, device: str) -> dict[str, tuple[Callable[[], object], int, int]]:
    """Benchmark name -> (call, bytes moved per element: inputs read + outputs written, tasks)."""
    n = keep_count(DENSITY, BLOCK_SIZE)
    copy_target = torch.empty_like(taus[0])

    def fused(compiled=None, method="cabs", tasks=TASKS):
        # The call methods.py makes under mergekit-yaml (compiled=None: its default choice).
        recipe = METHODS_BY_NAME[method].recipe
        return lambda: merge_tensor(recipe, base, tuned[:tasks], MergeArgs([1.0] * tasks, [DENSITY] * tasks,
                                    BLOCK_SIZE, seeds=list(range(tasks)), compiled=compiled,
                                    chunk_blocks=max(1, CHUNK_ELEMENTS // BLOCK_SIZE)))

    merge_bytes = (1 + TASKS) * 2 + 2
    table = {
        COPY: (lambda: copy_target.copy_(taus[0]), 4 + 4, 1),
        "fp32 add a + b (bandwidth reference)": (lambda: torch.add(taus[0], taus[1], out=copy_target), 3 * 4, 1),
        "n:m mask, 1 task": (lambda: nm_mask(taus[0], n, BLOCK_SIZE), 4 + 1, 1),
        f"CA n:m masks, {TASKS} tasks": (lambda: conflict_aware_masks(taus, [n] * TASKS, BLOCK_SIZE), TASKS * (4 + 1), TASKS),
        "magnitude mask, 1 task": (lambda: magnitude_mask(taus[0], DENSITY), 4 + 1, 1),
        "DARE (random) mask, 1 task": (lambda: random_mask(taus[0], DENSITY, seed=1), 4 + 1, 1),
        f"{FUSED_NM_ONE} (default path)": (fused(method="nm_linear", tasks=1), 2 * 2 + 2, 1),
        f"{FUSED_NM_ONE} (torch path)": (fused(False, "nm_linear", tasks=1), 2 * 2 + 2, 1),
        f"{FUSED} (default path)": (fused(), merge_bytes, TASKS),
        f"{FUSED} (torch path)": (fused(compiled=False), merge_bytes, TASKS),
        f"{FUSED_MAGNITUDE} (default path)": (fused(method="ca_magnitude_linear"), merge_bytes, TASKS),
        f"{FUSED_MAGNITUDE} (torch path)": (fused(False, "ca_magnitude_linear"), merge_bytes, TASKS),
        f"{FUSED_DARE} (default path)": (fused(method="ca_dare_linear"), merge_bytes, TASKS),
        f"{FUSED_DARE} (torch path)": (fused(False, "ca_dare_linear"), merge_bytes, TASKS),
    }
    if device == "cpu" and compiled_module() is not None:
        table[f"{FUSED} (compiled path)"] = (fused(compiled=True), merge_bytes, TASKS)
    return table


def measure_all(table: dict, numel: int, repeats: int, device: str) -> dict[str, dict]:
    """Times every case, printing each row as it completes."""
    rows = {}
    for name, (fn, bytes_per_element, tasks) in table.items():
        seconds = timings(fn, repeats, device)
        best = min(seconds)
        rows[name] = {"best_s": best, "median_s": statistics.median(seconds),
                      "ns_per_element": best / numel * 1e9,
                      "ns_per_element_task": best / numel / tasks * 1e9,
                      "gb_per_s": bytes_per_element * numel / best / 1e9,
                      "bytes_per_element": bytes_per_element}
        rows[name]["x_copy"] = best / rows[COPY]["best_s"]
        print(f"{name:44s} {best:8.3f} s {rows[name]['ns_per_element']:7.2f} ns/elem "
              f"{rows[name]['ns_per_element_task']:7.2f} ns/elem/task "
              f"{rows[name]['gb_per_s']:6.2f} GB/s {rows[name]['x_copy']:7.1f}x copy", flush=True)
    return rows


def kernel_targets(rows: dict, shape: tuple[int, int], threads: int, device: str):
    """The per-kernel targets, when this run is the one they are stated for."""
    if shape != (4096, COLUMNS) or threads != 2 or device != "cpu":
        return None
    return [{"target": f"{name}, 4096x14336, 2 threads <= {limit} ns/element/task",
             "ns_per_element_task": rows[name]["ns_per_element_task"],
             "met": rows[name]["ns_per_element_task"] <= limit}
            for name, limit in NS_TARGETS.items()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.kernels", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4096, help="rows of the 14336-column tensor")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--inputs", choices=sorted(TENSOR_INPUTS), default="gaussian")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "kernels.json")
    args = parser.parse_args(argv)

    set_threads(args.threads)
    base, tuned, taus = TENSOR_INPUTS[args.inputs](args.rows, args.device)
    shape = (args.rows, COLUMNS)
    rows = measure_all(cases(base, tuned, taus, args.device), base.numel(), args.repeats, args.device)
    result = {"shape": list(shape), "inputs": args.inputs, "threads": args.threads, "device": args.device,
              "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
              "cpu": cpu_name(), "torch": torch.__version__, "density": DENSITY, "block_size": BLOCK_SIZE,
              "repeats": args.repeats, "rows": rows, "targets": kernel_targets(rows, shape, args.threads, args.device)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    for line in write_report(result, args.out).splitlines():
        if line.startswith("Target:"):
            print(line)
    return result


if __name__ == "__main__":
    main()
