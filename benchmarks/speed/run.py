"""Wall time and peak memory of plain `mergekit-yaml` with our methods vs MergeKit's built-ins.

    python benchmarks/speed/run.py                                  # ~0.7 B params per model, 3 repeats
    python benchmarks/speed/run.py --params 0.7e9 --repeats 3 --out benchmarks/speed/results
    python benchmarks/speed/run.py --params 2e8 --repeats 1 --methods task_arithmetic,cabs@64

Builds (once, cached under --work) a base and 3 fine-tunes with real 7B layer shapes in bf16,
then runs every method as a `mergekit-yaml` subprocess, round-robin over the repeats so that
drift in the machine's load hits every method alike, next to two reference rows measured in
the same rotation: the I/O floor (read every input tensor, write one output, no arithmetic)
and MergeKit's start-up (`mergekit-yaml --help`: interpreter, imports, our plugin). Writes
results.json, results.md and results.png to --out.

The page cache is warm: dropping it needs root, so a read of every input precedes the runs
and every run sees the inputs cached.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

HERE = Path(__file__).resolve().parent
IO_FLOOR_SCRIPT = HERE / "io_floor.py"
MEASURE_CHILD_SCRIPT = HERE / "measure_child.py"
MERGEKIT_YAML = str(Path(sys.executable).with_name("mergekit-yaml"))

DENSITY = 0.25
BLOCK_SIZES = (64, 256)
# Mistral-7B shapes: hidden 4096, MLP 14336, 8 KV heads of 128, vocabulary 32000.
SEVEN_B = dict(hidden=4096, intermediate=14336, kv=1024, vocab=32000, head_dim=128)
# The smoke test's shapes: the same layout, small enough to merge in a second.
SMALL = dict(hidden=64, intermediate=224, kv=16, vocab=500, head_dim=16)
# Bump when the synthetic weights change, so that stale cached checkpoints are not reused.
DATA_VERSION = 2
ZERO_SHARE = 0.1

IO_FLOOR, STARTUP = "io_floor", "startup"
REFERENCES = (IO_FLOOR, STARTUP)
BUILT_INS = ("task_arithmetic", "ties", "dare_ties")
OURS = ("cabs", "cabs_ties", "nm_linear", "magnitude_linear", "ca_magnitude_linear", "ca_dare_linear")
CABS_VS_TASK_ARITHMETIC = 1.25
OURS_VS_TIES = 0.25
RSS_VS_TASK_ARITHMETIC = 1.10


def nm_method_names() -> set[str]:
    """Our methods that take ``block_size``, read from the registered table."""
    from mergekit_cabs.kernels import Sparsifier
    from mergekit_cabs.methods import METHODS_BY_NAME

    return {name for name, info in METHODS_BY_NAME.items() if info.recipe.sparsifier is Sparsifier.NM}


def expand_methods(methods: str) -> list[str]:
    """Comma list -> variants: an n:m method without ``@m`` becomes one variant per block size."""
    from mergekit_cabs.methods import METHODS_BY_NAME

    nm = nm_method_names()
    variants = []
    for name in filter(None, (m.strip() for m in methods.split(","))):
        method, _, block = name.partition("@")
        if method not in BUILT_INS and method not in METHODS_BY_NAME:
            raise SystemExit(f"unknown method {method!r}")
        if block and method not in nm:
            raise SystemExit(f"{method} has no block_size")
        if method in nm and not block:
            variants += [f"{method}@{m}" for m in BLOCK_SIZES]
        else:
            variants.append(name)
    return variants


def method_of(variant: str) -> str:
    return variant.partition("@")[0]


def layer_shapes(hidden: int, intermediate: int, kv: int) -> dict[str, tuple[int, ...]]:
    """Tensor name (within a decoder layer) -> shape, in Llama's naming."""
    return {
        "self_attn.q_proj.weight": (hidden, hidden),
        "self_attn.k_proj.weight": (kv, hidden),
        "self_attn.v_proj.weight": (kv, hidden),
        "self_attn.o_proj.weight": (hidden, hidden),
        "mlp.gate_proj.weight": (intermediate, hidden),
        "mlp.up_proj.weight": (intermediate, hidden),
        "mlp.down_proj.weight": (hidden, intermediate),
        "input_layernorm.weight": (hidden,),
        "post_attention_layernorm.weight": (hidden,),
    }


def layers_for(params: float, dims: dict) -> int:
    """Decoder layers that bring a model closest to ``params`` parameters (at least 1)."""
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(dims["hidden"], dims["intermediate"], dims["kv"]).values())
    fixed = 2 * dims["vocab"] * dims["hidden"] + dims["hidden"]
    return max(1, round((params - fixed) / per_layer))


def checkpoint_shapes(layers: int, dims: dict) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of a whole model: embeddings, head, final norm and ``layers`` layers."""
    shapes = {"model.embed_tokens.weight": (dims["vocab"], dims["hidden"]),
              "lm_head.weight": (dims["vocab"], dims["hidden"]),
              "model.norm.weight": (dims["hidden"],)}
    for i in range(layers):
        for name, shape in layer_shapes(dims["hidden"], dims["intermediate"], dims["kv"]).items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes


def base_tensor(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """A pre-trained-like bf16 weight: norms near 1, matrices N(0, 0.02^2)."""
    noise = torch.randn(shape, generator=generator) * 0.02
    return (noise + 1.0 if len(shape) == 1 else noise).to(torch.bfloat16)


def synthetic_delta(shape: tuple[int, ...], tie_heavy: bool, generator: torch.Generator) -> torch.Tensor:
    """A fine-tune's float32 change to one tensor, before it is rounded into bf16.

    Gaussian with a log-normal scale per output row (real task vectors concentrate in some
    channels), and ``ZERO_SHARE`` of the positions exactly unchanged. Tie-heavy tensors move
    by about 2.5 bf16 ulps of a typical weight, so after rounding ``|tau|`` takes a handful of
    distinct values and n:m thresholds fall inside runs of ties; the others move by ~16 ulps.
    Rounding also zeroes every change below half an ulp, as in real bf16 fine-tunes.
    """
    row_scale = torch.exp(0.5 * torch.randn(shape[0], *([1] * (len(shape) - 1)), generator=generator))
    delta = torch.randn(shape, generator=generator) * ((3e-4 if tie_heavy else 2e-3) * row_scale)
    delta *= torch.rand(shape, generator=generator) >= ZERO_SHARE
    return delta


@dataclass(frozen=True)
class Checkpoints:
    """The synthetic model family on disk."""

    base: str
    finetuned: list[str]
    layers: int
    params_per_model: int
    bytes_per_model: int


def llama_config(layers: int, dims: dict):
    """A LlamaConfig whose tensor names and shapes are the ones we write (MergeKit reads
    ``architectures`` and ``num_hidden_layers`` to plan the merge)."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                       num_hidden_layers=layers, head_dim=dims["head_dim"],
                       num_attention_heads=dims["hidden"] // dims["head_dim"],
                       num_key_value_heads=dims["kv"] // dims["head_dim"], vocab_size=dims["vocab"],
                       tie_word_embeddings=False, torch_dtype="bfloat16",
                       architectures=["LlamaForCausalLM"])


def build_checkpoints(work: Path, layers: int, dims: dict, n_finetuned: int = 3) -> Checkpoints:
    """A base and ``n_finetuned`` fine-tunes (bf16 safetensors + config.json), built once.

    Fine-tune ``i`` is ``bf16(base + delta)``; whether a tensor's delta is tie-heavy
    alternates with the tensor's index, shifted per fine-tune, so each block position sees
    both kinds across the tasks.
    """
    shapes = checkpoint_shapes(layers, dims)
    tag = f"v{DATA_VERSION}_L{layers}_h{dims['hidden']}_i{dims['intermediate']}_v{dims['vocab']}_k{n_finetuned}"
    root = work / tag
    names = ["base"] + [f"ft{i + 1}" for i in range(n_finetuned)]
    params = sum(torch.Size(s).numel() for s in shapes.values())
    checkpoints = Checkpoints(str(root / "base"), [str(root / n) for n in names[1:]], layers, params, 2 * params)
    if (root / "done").exists():
        return checkpoints
    generator = torch.Generator().manual_seed(0)
    base = {name: base_tensor(shape, generator) for name, shape in shapes.items()}
    config = llama_config(layers, dims)
    for model_index, model in enumerate(names):
        state = base
        if model_index:
            state = {name: (b.float() + synthetic_delta(b.shape, (i + model_index) % 2 == 0, generator)).to(torch.bfloat16)
                     for i, (name, b) in enumerate(base.items())}
        (root / model).mkdir(parents=True, exist_ok=True)
        save_file(state, str(root / model / "model.safetensors"), metadata={"format": "pt"})
        config.to_json_file(str(root / model / "config.json"))
        print(f"  wrote {model}", flush=True)
    (root / "done").write_text("")
    return checkpoints


def method_config(variant: str, checkpoints: Checkpoints) -> dict:
    """The merge YAML of one variant (``name`` or ``name@block_size``): density 0.25, weight 1."""
    method, _, block = variant.partition("@")
    parameters = {"weight": 1.0} if method == "task_arithmetic" else {"weight": 1.0, "density": DENSITY}
    config = {"merge_method": method, "base_model": checkpoints.base,
              "models": [{"model": m, "parameters": dict(parameters)} for m in checkpoints.finetuned],
              "dtype": "bfloat16"}
    if block:
        config["parameters"] = {"block_size": int(block)}
    return config


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
    """Wall seconds and peak RSS (MiB) of one child process, through ``measure_child.py``."""
    with log.open("w") as log_file:
        result = subprocess.run([sys.executable, str(MEASURE_CHILD_SCRIPT), *command],
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
    """(command, output path) of one variant; reference rows run no merge."""
    if variant == IO_FLOOR:
        out = scratch / "io_floor.safetensors"
        return [sys.executable, str(IO_FLOOR_SCRIPT), str(out), checkpoints.base, *checkpoints.finetuned], out
    if variant == STARTUP:
        return [MERGEKIT_YAML, "--help"], None
    config = scratch / f"{variant.replace('@', '_')}.yml"
    config.write_text(yaml.safe_dump(method_config(variant, checkpoints), sort_keys=False))
    out = scratch / "merged"
    return [MERGEKIT_YAML, str(config), str(out), *mergekit_flags], out


def run_variant(variant: str, repeat: int, position: int, checkpoints: Checkpoints, scratch: Path,
                mergekit_flags: list[str], env: dict) -> Run:
    """Measure one variant once; check it wrote an output of the model's size, then delete it."""
    command, out = variant_command(variant, checkpoints, scratch, mergekit_flags)
    load = os.getloadavg()[0]
    try:
        wall, rss = measure(command, scratch / "logs" / f"{variant.replace('@', '_')}_{repeat}.log", env)
        written = output_bytes(out) if out else 0
    finally:
        if out is not None and out.is_dir():
            shutil.rmtree(out)
        elif out is not None and out.exists():
            out.unlink()
    if out is not None and written < checkpoints.bytes_per_model:
        raise RuntimeError(f"{variant} wrote {written} bytes, expected >= {checkpoints.bytes_per_model}")
    return Run(variant, repeat, position, wall, rss, written, load)


def package_version(name: str):
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_description(num_threads, cuda: bool) -> dict:
    """CPU, cores, memory, versions and the thread count MergeKit's torch runs with."""
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")),
               platform.processor() or platform.machine())
    ram_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)),
        "ram_gib": round(ram_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        **{package: package_version(package) for package in ("torch", "mergekit", "mergekit-cabs", "numba", "transformers", "safetensors")},
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


def target_checks(rows: dict) -> list[dict]:
    """Issue 3's targets that these rows can decide, each with its measured ratio."""
    checks = []

    def check(target, ratio, limit):
        if ratio is not None:
            checks.append({"target": target, "ratio": ratio, "limit": limit, "met": ratio <= limit})

    for variant, row in rows.items():
        if method_of(variant) == "cabs":
            check(f"{variant} <= {CABS_VS_TASK_ARITHMETIC}x task_arithmetic wall",
                  row["vs_task_arithmetic"], CABS_VS_TASK_ARITHMETIC)
    for variant, row in rows.items():
        if method_of(variant) not in BUILT_INS + REFERENCES:
            check(f"{variant} <= {OURS_VS_TIES}x ties wall", row["vs_ties"], OURS_VS_TIES)
    for variant, row in rows.items():
        if method_of(variant) not in BUILT_INS + REFERENCES:
            check(f"{variant} peak RSS <= {RSS_VS_TASK_ARITHMETIC}x task_arithmetic",
                  row["rss_vs_task_arithmetic"], RSS_VS_TASK_ARITHMETIC)
    return checks


def markdown(result: dict) -> str:
    """The results table, the targets and the conditions they were measured under."""
    machine, inputs = result["machine"], result["inputs"]

    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['ram_gib']} GiB RAM; "
        f"torch {machine['torch']}, mergekit {machine['mergekit']}, numba {machine['numba']}; "
        f"MergeKit ran with {machine['mergekit_threads']} torch threads ({machine['mergekit_threads_source']}).",
        f"Inputs: base + {inputs['n_finetuned']} fine-tunes, {inputs['params_per_model'] / 1e9:.3g} B bf16 params "
        f"each ({inputs['layers']} layers of 7B shapes + 32000-row embeddings and head), density {DENSITY}, "
        f"warm page cache, {result['repeats']} round-robin repeats, `mergekit-yaml {' '.join(result['mergekit_flags'])}`.",
        f"Command: `{result['command']}`" + (f". Note: {result['note']}" if result["note"] else ""),
        "",
        "| method | median wall s | min wall s | peak RSS MiB | x I/O floor | x task_arithmetic | x ties | RSS x task_arithmetic |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in result["rows"].items():
        lines.append(f"| `{variant}` | {row['median_wall_s']:.1f} | {row['min_wall_s']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} | {ratio(row['vs_io_floor'])} | {ratio(row['vs_task_arithmetic'])} | "
                     f"{ratio(row['vs_ties'])} | {ratio(row['rss_vs_task_arithmetic'])} |")
    lines += ["", "| target (issue 3) | measured | |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['ratio']:.2f}x | {'met' if c['met'] else '**missed**'} |"
              for c in result["targets"]]
    return "\n".join(lines) + "\n"


def bar_colors(variants: list[str]) -> list[str]:
    """Grey for reference rows, orange for MergeKit's methods, blue for ours."""
    return ["grey" if v in REFERENCES else "tab:orange" if v in BUILT_INS else "tab:blue" for v in variants]


def plot(result: dict, path: Path) -> None:
    """Median wall (min as a dot) and peak RSS per variant, with the targets as dashed lines."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no results.png (pip install 'mergekit-cabs[plots]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    variants = list(rows)[::-1]  # barh draws bottom-up; keep the table's order top-down
    fig, (wall_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 0.35 * len(variants) + 2), sharey=True)
    wall_ax.barh(variants, [rows[v]["median_wall_s"] for v in variants], color=bar_colors(variants))
    wall_ax.plot([rows[v]["min_wall_s"] for v in variants], variants, "k.", label="min")
    if "task_arithmetic" in rows:
        ta = rows["task_arithmetic"]
        wall_ax.axvline(ta["median_wall_s"] * CABS_VS_TASK_ARITHMETIC, ls="--", c="tab:green",
                        label=f"cabs target: {CABS_VS_TASK_ARITHMETIC}x task_arithmetic")
        rss_ax.axvline(ta["peak_rss_mib"] * RSS_VS_TASK_ARITHMETIC, ls="--", c="tab:green",
                       label=f"target: {RSS_VS_TASK_ARITHMETIC}x task_arithmetic")
    if "ties" in rows:
        wall_ax.axvline(rows["ties"]["median_wall_s"] * OURS_VS_TIES, ls=":", c="tab:red",
                        label=f"target for ours: {OURS_VS_TIES}x ties")
    rss_ax.barh(variants, [rows[v]["peak_rss_mib"] for v in variants], color=bar_colors(variants))
    wall_ax.set_xlabel("wall time, s (median; dot: min)")
    rss_ax.set_xlabel("peak RSS of the process, MiB")
    for ax in (wall_ax, rss_ax):
        # Below the x label: ~0.6 inch, as a fraction of the axes' height (~figure height - 1 inch).
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.6 / (0.35 * len(variants) + 1)))
    machine, inputs = result["machine"], result["inputs"]
    fig.suptitle(f"mergekit-yaml on base + {inputs['n_finetuned']} x {inputs['params_per_model'] / 1e9:.3g} B bf16, "
                 f"density {DENSITY}; {machine['cpu']}, {machine['mergekit_threads']} threads "
                 "(grey: reference, orange: MergeKit, blue: mergekit-cabs)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=0.7e9, help="parameters per model (picks the layer count)")
    parser.add_argument("--layers", type=int, help="decoder layers per model (overrides --params)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(BUILT_INS + OURS),
                        help="comma list; an n:m method alone runs block sizes 64 and 256, name@m one of them")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="cache of the checkpoints and scratch space")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cuda", action="store_true", help="pass --cuda to mergekit-yaml")
    parser.add_argument("--num-threads", type=int, help="pass -j N to mergekit-yaml (default: torch's default)")
    parser.add_argument("--note", default="", help="free text saved with the results (e.g. 'contended')")
    parser.add_argument("--small", action="store_true", help="tiny shapes instead of 7B's (smoke test)")
    parser.add_argument("--skip-startup", action="store_true", help="leave out the start-up reference row")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    """Build or reuse the checkpoints, run the rotation, write results.{json,md,png}."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    references = [IO_FLOOR] if args.skip_startup else list(REFERENCES)
    variants = references + expand_methods(args.methods)
    dims = SMALL if args.small else SEVEN_B
    layers = args.layers or layers_for(args.params, dims)
    started = time.perf_counter()
    checkpoints = build_checkpoints(args.work, layers, dims)
    print(f"checkpoints ready in {time.perf_counter() - started:.0f} s: {Path(checkpoints.base).parent}", flush=True)

    mergekit_flags = ["--no-copy-tokenizer", "--quiet", "--random-seed", "0"]
    mergekit_flags += ["--cuda"] if args.cuda else []
    mergekit_flags += ["-j", str(args.num_threads)] if args.num_threads else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    scratch = args.work / "scratch"
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    run_variant(IO_FLOOR, -1, -1, checkpoints, scratch, mergekit_flags, env)  # warm the page cache for all

    runs = []
    for repeat in range(args.repeats):
        shift = repeat % len(variants)
        for position, variant in enumerate(variants[shift:] + variants[:shift]):
            run = run_variant(variant, repeat, position, checkpoints, scratch, mergekit_flags, env)
            runs.append(run)
            print(f"repeat {repeat + 1}/{args.repeats} {variant:22s} {run.wall_s:7.1f} s "
                  f"{run.peak_rss_mib:8.0f} MiB  (load {run.load_1min:.1f})", flush=True)

    rows = summarize(runs)
    result = {
        "command": shlex.join(["python", "benchmarks/speed/run.py", *argv]),
        "note": args.note,
        "machine": machine_description(args.num_threads, args.cuda),
        "inputs": {"n_finetuned": len(checkpoints.finetuned), "layers": checkpoints.layers,
                   "params_per_model": checkpoints.params_per_model, "dims": dims, "density": DENSITY,
                   "data_version": DATA_VERSION, "page_cache": "warm"},
        "mergekit_flags": mergekit_flags,
        "repeats": args.repeats,
        "rows": rows,
        "targets": target_checks(rows),
        "runs": [asdict(r) for r in runs],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out / "results.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
