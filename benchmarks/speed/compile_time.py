"""First-use cost of the compiled kernels: compile (cold cache) or load (warm cache).

    d=$(mktemp -d); for i in 1 2; do NUMBA_CACHE_DIR=$d python -m benchmarks.speed.compile_time; done

The first run compiles every kernel a merge uses (n:m, per-tensor magnitude, per-tensor
random; one compile serves every dtype and number of models), the second loads them from
the cache directory.
"""

import time

started = time.perf_counter()
import torch  # noqa: E402

from mergekit_cabs.kernels import SPARSIFIERS, Combine, MergeArgs, Recipe, merge_tensor  # noqa: E402

imported = time.perf_counter()
base = torch.randn(256, 512).to(torch.bfloat16)
tuned = [(base.float() + 0.01 * torch.randn(256, 512)).to(torch.bfloat16) for _ in range(3)]
for sparsifier in SPARSIFIERS:
    merge_tensor(Recipe(sparsifier, True, Combine.SUM), base, tuned, MergeArgs([1.0] * 3, [0.25] * 3, 64,
                 seeds=[1, 2, 3], compiled=True))
merged = time.perf_counter()
print(f"import {imported - started:.1f} s, first merges (compile or cache load) {merged - imported:.1f} s")
