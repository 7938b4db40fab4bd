"""The numba kernels give the same bits as the torch path they replace (n:m, magnitude,
random), on any thread count, and their JIT cache is found again, and kept fresh."""

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mergekit_cabs
from compiled_paths import bits, merge_both_ways
from inputs import ALL_RECIPES, fine_tunes, recipe_id
from mergekit_cabs import kernels
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, merge_tensor, rules

compiled = pytest.importorskip("mergekit_cabs.kernels.compiled")
common, nm, per_tensor = compiled.common, compiled.nm, compiled.per_tensor

CASES = [  # shape, k, block_size, densities, weights
    ((67, 45), 3, 64, [0.25, 0.25, 0.25], [1.2, 0.9, 1.1]),
    ((300,), 1, 16, [0.3], [1.7]),
    ((13, 31), 5, 8, [0.5, 0.4, 0.3, 0.2, 0.1], [1.0, 0.5, 1.5, 1.0, 2.0]),
    ((9, 100), 3, 256, [0.6, 0.7, 0.5], [1.0, -0.5, 0.8]),
    # 15 tiles: the per-tensor kernel's thread groups split the tensor, ties straddle them
    ((300, 200), 3, 64, [0.25, 0.3, 0.2], [1.0, 1.0, 0.7]),
    # more than 8 tasks: the per-tensor masks take a second byte per element
    ((40, 24), 9, 32, [0.1] * 9, [1.0] * 9),
]


# A 144-case sweep (minutes on 2 cores): the full suite only; the unit tier reaches the
# compiled path through tests/test_properties.py.
@pytest.mark.slow
@pytest.mark.parametrize("recipe", ALL_RECIPES, ids=recipe_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("kind", ["smooth", "tie-heavy", "zero-heavy"])
@pytest.mark.parametrize("normalize", [False, True])
def test_compiled_merge_equals_torch_path_bit_for_bit(recipe, dtype, kind, normalize):
    for seed, case in enumerate(CASES):
        fast, simple = merge_both_ways(recipe, case, dtype, kind, normalize, seed)
        assert fast.dtype == dtype
        assert torch.equal(bits(fast), bits(simple)), case


@pytest.mark.slow
@pytest.mark.skipif(compiled.numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 numba threads")
@pytest.mark.parametrize("recipe", [Recipe(Sparsifier.NM, True, Combine.SUM),
                                    Recipe(Sparsifier.MAGNITUDE, True, Combine.TIES),
                                    Recipe(Sparsifier.RANDOM, True, Combine.SUM)],
                         ids=lambda r: r.sparsifier.value)
def test_compiled_merge_does_not_depend_on_the_thread_count(recipe):
    base, tuned = fine_tunes((301, 203), 3, torch.bfloat16, "tie-heavy", seed=3)
    args = MergeArgs([1.0, 0.8, 1.2], [0.25, 0.3, 0.2], 64, 1.0, False, [7, 8, 9], compiled=True)
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2):
            torch.set_num_threads(count)  # the compiled kernels follow torch's thread count
            results.append(merge_tensor(recipe, base, tuned, args))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(bits(results[0]), bits(results[1]))


def test_torch_kernels_switch_turns_the_compiled_path_off(monkeypatch):
    monkeypatch.setenv(kernels.TORCH_KERNELS_ENV, "1")
    kernels.compiled_module.cache_clear()
    try:
        assert kernels.compiled_module() is None
        base, tuned = fine_tunes((8, 8), 1, torch.float32, "smooth", seed=0)
        with pytest.raises(RuntimeError, match=kernels.TORCH_KERNELS_ENV):
            merge_tensor(Recipe(Sparsifier.NM, False, Combine.SUM), base, tuned, MergeArgs([1.0], [0.5], 8,
                         compiled=True))
    finally:
        kernels.compiled_module.cache_clear()


def embedded_sha256() -> str:
    """sha256 of what the kernels of ``nm`` and ``per_tensor`` embed from outside their own
    files: ``common``'s text and the values of ``rules``' constants."""
    constants = sorted((name, value) for name, value in vars(rules).items() if name.isupper())
    text = Path(common.__file__).read_bytes().replace(b"\r\n", b"\n")
    return hashlib.sha256(text + repr(constants).encode()).hexdigest()


@pytest.mark.parametrize("kernel", [nm, per_tensor], ids=lambda module: module.__name__)
def test_each_kernel_file_changes_when_what_its_cached_kernels_embed_changes(kernel):
    # numba keys a kernel's cache on its own file's text: without this, a change to common.py
    # or to a constant of rules.py would leave the stale kernel in the cache
    digest = embedded_sha256()
    assert kernel.EMBEDDED_SHA256 == digest, f"set EMBEDDED_SHA256 = {digest!r} in {kernel.__file__}"


CACHE_PROBE = """
import torch
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, merge_tensor
from mergekit_cabs.kernels.compiled import nm
base = torch.zeros(64)
merge_tensor(Recipe(Sparsifier.NM, False, Combine.SUM), base, [base + 1], MergeArgs([1.0], [0.5], 16, compiled=True))
stats = nm.nm_merge.stats
print(nm.__file__, sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.slow
def test_jit_cache_works_when_the_package_directory_is_read_only(tmp_path):
    """numba writes its cache beside the module when it can, else to the user-wide cache
    directory; a second process loads the kernel from there instead of compiling it."""
    package = tmp_path / "site" / "mergekit_cabs"
    shutil.copytree(Path(mergekit_cabs.__file__).parent, package,
                    ignore=shutil.ignore_patterns("__pycache__"))
    kernels_dir = package / "kernels" / "compiled"  # the kernels' directory, where numba writes first
    (kernels_dir / "__pycache__").write_text("")  # not a directory: unwritable even for root
    kernels_dir.chmod(0o555)
    package.chmod(0o555)
    cache_home = tmp_path / "cache"
    env = {key: value for key, value in os.environ.items() if key != "NUMBA_CACHE_DIR"}
    env.update(PYTHONPATH=str(package.parent), XDG_CACHE_HOME=str(cache_home), HOME=str(tmp_path))
    try:
        runs = [subprocess.run([sys.executable, "-c", CACHE_PROBE], capture_output=True, text=True,
                               env=env, cwd=tmp_path, timeout=600) for _ in range(2)]
    finally:
        package.chmod(0o755)
        kernels_dir.chmod(0o755)
    for run in runs:
        assert run.returncode == 0, run.stderr
    (first_file, first_hits, first_misses), (_, second_hits, second_misses) = (
        run.stdout.split() for run in runs)
    assert Path(first_file).parent == kernels_dir
    assert (first_hits, first_misses) == ("0", "1")
    assert (second_hits, second_misses) == ("1", "0")
    assert any((cache_home / "numba").rglob("*.nbi"))
