"""Wall time and peak memory of plain `mergekit-yaml` with our methods vs MergeKit's built-ins.

    python -m benchmarks.speed.run --preset full      # results.json / .md / -<family>.png, ~12 min
    python -m benchmarks.speed.run --preset ab        # results-ab.*: task_arithmetic and ours, 2 repeats
    python -m benchmarks.speed.run --quick --out /tmp/speed-quick      # same rows, 1/8 width, ~3 min
    python -m benchmarks.speed.run --large-vocab 64000,128256          # both large vocabularies

run from the repository root. Builds (once, cached under --work) two families of a base and 3
bf16 fine-tunes that look like real small-learning-rate fine-tunes (``inputs``): a 7B-shaped
family (Mistral-7B layers, 32000-row vocabulary, --params per model) and a Llama-3-shaped
large-vocabulary family (one decoder layer, 128256 x 4096 embeddings and head). Every row
(``variants``) runs as a `mergekit-yaml` subprocess, round-robin over the repeats (``timing``),
next to reference rows measured in the same rotation: the I/O floor (read every input tensor,
write one output, no arithmetic) and MergeKit's start-up (`mergekit-yaml --help`). A `:torch`
row runs our method with MERGEKIT_CABS_TORCH_KERNELS=1, the torch path an install without
numba (or a GPU) takes. Writes <stem>.json, <stem>.md and one <stem>-<family>.png per family
to --out (``report``; the stem is the preset's, else ``results``).

Scratch space (configs, logs, each merge's output) is ``--work``/scratch, a folder this tool
owns (``owned_output_dir``): a re-run clears only what the last run wrote there, and each
merge output, which must not exist before the merge, is removed after it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

from mergekit_cabs.kernels import TORCH_KERNELS_ENV
from mergekit_cabs.output_dir import owned_output_dir

from .inputs import LLAMA3_VOCAB, QUICK, SEVEN_B, SMALL, SMALL_LARGE_VOCAB, layers_for
from .presets import PRESETS
from .report import write_report
from .timing import FOCUS, HERE, Family, machine_description, run_family, warm_jit_cache
from .variants import BLOCK_SIZE, BUILT_INS, IO_FLOOR, OURS, REFERENCES, TORCH_ROWS, expand_methods

TOOL = "benchmarks.speed.run"


def families(args) -> list[Family]:
    """The 7B-shaped family (all of MergeKit's rows, focus repeats) and one large-vocabulary
    family per ``--large-vocab`` entry (TA, ours and the torch rows: the memory targets)."""
    dims = SMALL if args.small else QUICK if args.quick else SEVEN_B
    references = [IO_FLOOR] if args.skip_startup else list(REFERENCES)
    main_methods = args.methods or ",".join(BUILT_INS + OURS)
    vocab_methods = args.methods or ",".join(("task_arithmetic",) + OURS + TORCH_ROWS)
    layers = args.layers or layers_for(args.params, SEVEN_B)  # --quick keeps the 7B layer count
    found = [Family(f"7B-shaped, {dims['vocab']}-token vocabulary", "7b", dims, layers,
                    references + expand_methods(main_methods), args.focus_repeats)]
    for vocab in filter(None, (v.strip() for v in args.large_vocab.split(","))):
        vocab = SMALL_LARGE_VOCAB if args.small else int(vocab)
        found.append(Family(f"Llama-3-shaped, {vocab}-token vocabulary", f"vocab{vocab}", {**dims, "vocab": vocab}, 1,
                            references + expand_methods(vocab_methods), 1))
    return found


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="a committed run: its arguments (flags given here override them) and file stem")
    parser.add_argument("--params", type=float, default=0.7e9, help="parameters per model of the 7B-shaped family")
    parser.add_argument("--layers", type=int, help="decoder layers of the 7B-shaped family (overrides --params)")
    parser.add_argument("--large-vocab", default=str(LLAMA3_VOCAB),
                        help="comma list of vocabulary sizes, one large-vocabulary family each ('' for none)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--focus-repeats", type=int, default=3,
                        help=f"runs of {', '.join(FOCUS)} in the 7B-shaped family")
    parser.add_argument("--methods",
                        help="comma list for every family (default: MergeKit's and ours on the 7B-shaped family; "
                             "task_arithmetic, ours and the :torch rows on a large-vocabulary one); "
                             f"n:m methods run at @{BLOCK_SIZE} unless given @m; name:torch forces our torch path")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="cache of the checkpoints and scratch space")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cuda", action="store_true", help="pass --cuda to mergekit-yaml")
    parser.add_argument("--num-threads", type=int, help="pass -j N to mergekit-yaml (default: torch's default)")
    parser.add_argument("--note", default="", help="free text saved with the results (e.g. 'contended')")
    parser.add_argument("--quick", action="store_true", help="every family at 1/8 of the width (a few minutes)")
    parser.add_argument("--small", action="store_true", help="tiny shapes (the smoke test)")
    parser.add_argument("--skip-startup", action="store_true", help="leave out the start-up reference row")
    return parser


def parse_args(argv):
    parser = argument_parser()
    args = parser.parse_args(argv)
    if args.preset:
        args = parser.parse_args([*PRESETS[args.preset].args, *argv])
    args.stem = PRESETS[args.preset].stem if args.preset else "results"
    args.work = args.work.resolve()  # the children run from PACKAGE_ROOT
    return args


def mergekit_flags(args) -> list[str]:
    """The flags every merge row passes to ``mergekit-yaml``."""
    flags = ["--no-copy-tokenizer", "--quiet", "--random-seed", "0"]
    flags += ["--cuda"] if args.cuda else []
    return flags + (["-j", str(args.num_threads)] if args.num_threads else [])


def main(argv=None) -> dict:
    """Run every family's rotation, write <stem>.json / .md and a chart per family."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = time.perf_counter()
    flags = mergekit_flags(args)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(TORCH_KERNELS_ENV, None)  # only the :torch rows set it
    planned = families(args)
    jit_warmup_s = warm_jit_cache(env)
    with owned_output_dir(args.work / "scratch", TOOL) as scratch:
        measured = [run_family(family, args.work, args.repeats, scratch, flags, env) for family in planned]
    result = {
        "command": shlex.join(["python", "-m", TOOL, *argv]),
        "preset": args.preset,
        "note": args.note,
        "machine": machine_description(args.num_threads, args.cuda),
        "mergekit_flags": flags,
        "total_wall_s": time.perf_counter() - started,
        "jit_warmup_s": jit_warmup_s,
        "families": measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(result, indent=2))
    print(write_report(result, args.out, args.stem))
    print(f"total {result['total_wall_s'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
