"""Kernel microbenchmark on one 4096 x 14336 bf16 tensor (a 7B MLP matrix), in-process.

    python benchmarks/speed/kernel_bench.py [--threads 2] [--rows 4096] [--device cpu|cuda]

Reports ns per element and GB/s of input read for each kernel, next to a memory-bandwidth
reference measured in the same run (an fp32 copy: 8 bytes moved per element).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from mergekit_cabs.kernels import (
    conflict_aware_masks,
    keep_count,
    magnitude_mask,
    merge_tensor,
    nm_mask,
    random_mask,
)
from mergekit_cabs.methods import METHODS_BY_NAME

DENSITY, BLOCK = 0.25, 64


def best_of(fn, repeats, device):
    fn()
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "kernels.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    shape, device = (args.rows, 14336), args.device
    g = torch.Generator().manual_seed(0)
    base = (torch.randn(shape, generator=g) * 0.02).to(torch.bfloat16)
    tuned = [(base.float() + torch.randn(shape, generator=g) * 2e-3).to(torch.bfloat16) for _ in range(3)]
    base, tuned = base.to(device), [t.to(device) for t in tuned]
    taus = [t.float() - base.float() for t in tuned]
    n = keep_count(DENSITY, BLOCK)
    numel = base.numel()
    scratch = torch.empty(shape, device=device)
    cabs = METHODS_BY_NAME["cabs"].recipe
    merge_args = (base, tuned, [1.0] * 3, [DENSITY] * 3, BLOCK)
    cases = {
        # name: (function, bytes of input read per element)
        "fp32 copy (bandwidth reference)": (lambda: scratch.copy_(taus[0]), 8),
        "n:m mask, 1 task (torch)": (lambda: nm_mask(taus[0], n, BLOCK), 4),
        "CA n:m masks, 3 tasks (torch)": (lambda: conflict_aware_masks(taus, [n] * 3, BLOCK), 12),
        "magnitude mask, 1 task (torch)": (lambda: magnitude_mask(taus[0], DENSITY), 4),
        "DARE mask, 1 task (torch)": (lambda: random_mask(taus[0], DENSITY, 1), 4),
        "fused CA merge, 3 tasks (torch)": (
            lambda: merge_tensor(cabs, *merge_args, chunk_blocks=(1 << 22) // BLOCK, compiled=False), 8),
    }
    if device == "cpu":
        cases["fused CA merge, 3 tasks (compiled)"] = (
            lambda: merge_tensor(cabs, *merge_args, chunk_blocks=(1 << 22) // BLOCK, compiled=True), 8)
    rows = {}
    for name, (fn, bytes_per_element) in cases.items():
        seconds = best_of(fn, args.repeats, device)
        rows[name] = {"seconds": seconds, "ns_per_element": seconds / numel * 1e9,
                      "gb_per_s": bytes_per_element * numel / seconds / 1e9}
        print(f"{name:38s} {seconds:8.3f} s {rows[name]['ns_per_element']:8.2f} ns/elem "
              f"{rows[name]['gb_per_s']:7.2f} GB/s", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"shape": list(shape), "threads": args.threads, "device": device,
                                    "density": DENSITY, "block_size": BLOCK, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
