"""Where a merge's time goes: ``mergekit-yaml`` in-process under cProfile, one method at a time.

    python -m benchmarks.speed.profile_merge     # results/profile.md: task_arithmetic, cabs@64, ca_magnitude_linear

Uses the checkpoints ``benchmarks.speed.run`` builds (same ``--params`` / ``--layers``, same cache). For each
method it runs MergeKit's own ``mergekit-yaml`` entry point in this process (so start-up
imports are left out) and writes the functions with the most own time to ``profile.md``;
time inside the compiled (numba) kernels is booked to ``nm_merge`` / ``tensor_merge``.
Each merge writes into a temporary folder this tool creates under ``--work`` and removes
whole afterwards (``scratch_folder``); nothing else there is touched.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import shlex
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .inputs import SEVEN_B, SMALL, build_checkpoints, layers_for
from .timing import HERE
from .variants import expand_methods, method_config

TOP = 12
METHODS = ("task_arithmetic", "cabs@64", "ca_magnitude_linear")  # MergeKit's reference and both kernels


def scratch_folder(work: Path) -> tempfile.TemporaryDirectory:
    """A new folder under ``work`` for one merge, made here and removed whole on exit."""
    return tempfile.TemporaryDirectory(dir=work, prefix="profile-")


def profile_merge(variant: str, checkpoints, scratch: Path) -> tuple[float, pstats.Stats]:
    """Wall seconds and cProfile statistics of one in-process ``mergekit-yaml`` run into
    ``scratch`` (a ``scratch_folder``, which removes the merged model with it)."""
    from mergekit.scripts.run_yaml import main as mergekit_yaml

    config = scratch / "config.yml"
    config.write_text(yaml.safe_dump(method_config(variant, checkpoints), sort_keys=False))
    out = scratch / "merged"
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    mergekit_yaml.main([str(config), str(out), "--no-copy-tokenizer", "--quiet", "--random-seed", "0"],
                       standalone_mode=False)
    profiler.disable()
    wall = time.perf_counter() - started
    return wall, pstats.Stats(profiler)


def top_rows(stats: pstats.Stats, wall: float) -> list[str]:
    """Markdown rows of the ``TOP`` functions by own time."""
    entries = sorted(stats.stats.items(), key=lambda item: item[1][2], reverse=True)[:TOP]
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in entries:
        where = f"{Path(filename).parent.name}/{Path(filename).name}:{line}" if line else filename
        rows.append(f"| `{name}` | {where} | {calls} | {own:.2f} | {100 * own / wall:.0f} | {cumulative:.2f} |")
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.profile_merge", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--params", type=float, default=0.7e9)
    parser.add_argument("--layers", type=int)
    parser.add_argument("--work", type=Path, default=HERE / "work")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--small", action="store_true", help="tiny shapes instead of 7B's (smoke test)")
    args = parser.parse_args(argv)
    dims = SMALL if args.small else SEVEN_B
    checkpoints = build_checkpoints(args.work, args.layers or layers_for(args.params, dims), dims)
    command = shlex.join(["python", "-m", "benchmarks.speed.profile_merge", *(sys.argv[1:] if argv is None else argv)])
    lines = [f"Regenerate: `{command}`.", "",
             f"cProfile of in-process `mergekit-yaml` (start-up imports excluded), {checkpoints.params_per_model / 1e9:.3f} B "
             f"bf16 params per model, base + {len(checkpoints.finetuned)} fine-tunes.", ""]
    for variant in expand_methods(args.methods):
        with scratch_folder(args.work) as scratch:
            wall, stats = profile_merge(variant, checkpoints, Path(scratch))
        print(f"{variant}: {wall:.1f} s", flush=True)
        lines += [f"## `{variant}`: {wall:.1f} s wall (profiled)", "",
                  "| function | where | calls | own s | own % of wall | cumulative s |",
                  "|---|---|---|---|---|---|", *top_rows(stats, wall), ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "profile.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
