"""Wall time and peak memory of plain `mergekit-yaml` with our methods vs MergeKit's built-ins.

    python -m benchmarks.speed.run --out benchmarks/speed/results     # the committed run, ~25-30 min
    python -m benchmarks.speed.run --quick --out /tmp/speed-quick      # same rows, 1/8 width, ~3 min
    python -m benchmarks.speed.run --large-vocab 64000,128256          # both large vocabularies

run from the repository root. Builds (once, cached under --work) two families of a base and 3 bf16 fine-tunes that look
like real small-learning-rate fine-tunes (heavy-tailed deltas, ~40% of task-vector entries
exactly zero after bf16 rounding, measured and reported): a 7B-shaped family (Mistral-7B
layers, 32000-row vocabulary, --params per model) and a Llama-3-shaped large-vocabulary
family (one decoder layer, 128256 x 4096 embeddings and head). Every method runs as a
`mergekit-yaml` subprocess, round-robin over the repeats so that drift in the machine's load
hits every method alike, next to reference rows measured in the same rotation: the I/O floor
(read every input tensor, write one output, no arithmetic) and MergeKit's start-up
(`mergekit-yaml --help`). A `:torch` row runs our method with MERGEKIT_CABS_TORCH_KERNELS=1,
the torch path a install without numba (or a GPU) takes. Writes results.json, results.md
and one results-<family>.png per family to --out.

The page cache is warm: dropping it needs root, so a read of every input precedes each
family's runs and every run sees the inputs cached.

Scratch space (configs, logs, each merge's output) is ``--work``/scratch, a folder this tool
owns (``owned_output_dir``): a re-run clears only what the last run wrote there, and each
merge output, which must not exist before the merge, is removed after it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from mergekit_cabs.kernels import Sparsifier
from mergekit_cabs.methods import METHOD_TABLE, METHODS_BY_NAME
from mergekit_cabs.output_dir import owned_output_dir
from mergekit_cabs.versions import versions

from ..merge_outputs import fresh_output, remove_output

HERE = Path(__file__).resolve().parent
# The children run as modules of this package, from the folder that holds ``benchmarks``.
PACKAGE_ROOT = HERE.parents[1]
IO_FLOOR_MODULE = "benchmarks.speed.io_floor"
MEASURE_CHILD_MODULE = "benchmarks.speed.measure_child"
TOOL = "benchmarks.speed.run"
MERGEKIT_YAML = str(Path(sys.executable).with_name("mergekit-yaml"))

DENSITY = 0.25
BLOCK_SIZE = 64  # an n:m method named without @m runs at this block size
# Mistral-7B shapes: hidden 4096, MLP 14336, 8 KV heads of 128, vocabulary 32000.
SEVEN_B = dict(hidden=4096, intermediate=14336, kv=1024, vocab=32000, head_dim=128)
# Llama-3-8B has the same layer shapes and a 128256-token vocabulary.
LLAMA3_VOCAB = 128256
# --quick: the same layout at 1/8 of the width (the large vocabulary keeps all its rows).
QUICK = dict(hidden=512, intermediate=1792, kv=128, vocab=32000, head_dim=64)
# The smoke test's shapes: the same layout, small enough to merge in a second.
SMALL = dict(hidden=64, intermediate=224, kv=16, vocab=500, head_dim=16)
SMALL_LARGE_VOCAB = 2000
# Bump when the synthetic weights change, so that stale cached checkpoints are not reused.
DATA_VERSION = 3
# Scale of the Laplace deltas: with base weights ~ N(0, 0.02^2) about 40% of them are below
# half a bf16 ulp of their weight and vanish in rounding, as in small-learning-rate fine-tunes.
DELTA_SCALE = 8e-5
ROWS_PER_DRAW = 4096  # deltas are drawn this many rows at a time, to bound the builder's memory

IO_FLOOR, STARTUP = "io_floor", "startup"
REFERENCES = (IO_FLOOR, STARTUP)
BUILT_INS = ("task_arithmetic", "ties", "dare_ties")
OURS = tuple(info.name for info in METHOD_TABLE)
TORCH_ROWS = ("cabs:torch", "ca_magnitude_linear:torch")
TORCH_SUFFIX = ":torch"
TORCH_KERNELS_ENV = "MERGEKIT_CABS_TORCH_KERNELS"
# Rows of the first family that run --focus-repeats times: the cabs-vs-task_arithmetic target
# is the tightest, so it gets more samples than the rest.
FOCUS = (IO_FLOOR, "task_arithmetic", f"cabs@{BLOCK_SIZE}")
# Issue 21's targets (default install): cabs against task_arithmetic per family, every other
# method against task_arithmetic; issue 12's against ties and for memory still hold.
CABS_VS_TASK_ARITHMETIC = {"7b": 0.90}  # any other family: 1.0
OURS_VS_TASK_ARITHMETIC = 1.00
OURS_VS_TIES = 0.25
RSS_VS_TASK_ARITHMETIC = 1.10


def nm_method_names() -> set[str]:
    """Our methods that take ``block_size``, read from the registered table."""
    return {name for name, info in METHODS_BY_NAME.items() if info.recipe.sparsifier is Sparsifier.NM}


def expand_methods(methods: str) -> list[str]:
    """Comma list -> variants ``name[@m][:torch]``; an n:m method without ``@m`` gets ``@BLOCK_SIZE``."""
    nm = nm_method_names()
    variants = []
    for name in filter(None, (m.strip() for m in methods.split(","))):
        name, torch_row, _ = name.partition(TORCH_SUFFIX)
        method, _, block = name.partition("@")
        if method not in BUILT_INS and method not in METHODS_BY_NAME:
            raise SystemExit(f"unknown method {method!r}")
        if block and method not in nm:
            raise SystemExit(f"{method} has no block_size")
        if torch_row and method in BUILT_INS:
            raise SystemExit(f"{method} is MergeKit's: it has no torch path of ours")
        block = block or (str(BLOCK_SIZE) if method in nm else "")
        variants.append(method + (f"@{block}" if block else "") + torch_row)
    return variants


def method_of(variant: str) -> str:
    return variant.partition("@")[0].partition(TORCH_SUFFIX)[0]


def is_torch_row(variant: str) -> bool:
    return variant.endswith(TORCH_SUFFIX)


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


def finetuned_tensor(base: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``bf16(base + delta)``: a small-learning-rate fine-tune of one bf16 tensor.

    ``delta`` is Laplace (heavy-tailed: a few large moves, many tiny ones) with scale
    ``DELTA_SCALE`` times a log-normal factor per output row (real task vectors concentrate
    in some channels). Rounding to bf16 zeroes every move below half an ulp of its weight,
    so a share of the task vector is exactly zero (~40% of a matrix, almost all of a norm)
    and the surviving ``|tau|`` sit on a few ulp multiples: ties at n:m thresholds are common.
    Drawn ``ROWS_PER_DRAW`` rows at a time, so the float32 temporaries stay small.
    """
    tuned = torch.empty_like(base)
    rows = base.reshape(base.shape[0], -1)
    for lo in range(0, rows.shape[0], ROWS_PER_DRAW):
        chunk = rows[lo:lo + ROWS_PER_DRAW]
        row_scale = torch.exp(0.5 * torch.randn(chunk.shape[0], 1, generator=generator)) * DELTA_SCALE
        magnitude = torch.empty(chunk.shape).exponential_(generator=generator)
        sign = torch.rand(chunk.shape, generator=generator) < 0.5
        delta = torch.where(sign, -magnitude, magnitude).mul_(row_scale)
        tuned.reshape(rows.shape)[lo:lo + ROWS_PER_DRAW] = delta.add_(chunk.float()).to(torch.bfloat16)
    return tuned


@dataclass(frozen=True)
class Checkpoints:
    """The synthetic model family on disk."""

    base: str
    finetuned: list[str]
    layers: int
    params_per_model: int
    bytes_per_model: int
    zero_share: list[float]  # per fine-tune: share of task-vector entries exactly 0


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

    Fine-tune ``i`` is ``finetuned_tensor(base)`` for every tensor; the share of its
    task-vector entries that are exactly zero (``tuned == base`` bit for bit) is measured
    while writing and kept in ``zero_share.json``.
    """
    shapes = checkpoint_shapes(layers, dims)
    tag = f"v{DATA_VERSION}_L{layers}_h{dims['hidden']}_i{dims['intermediate']}_v{dims['vocab']}_k{n_finetuned}"
    root = work / tag
    names = ["base"] + [f"ft{i + 1}" for i in range(n_finetuned)]
    params = sum(torch.Size(s).numel() for s in shapes.values())

    def checkpoints(zero_share):
        return Checkpoints(str(root / "base"), [str(root / n) for n in names[1:]], layers, params, 2 * params,
                           zero_share)

    if (root / "done").exists():
        return checkpoints(json.loads((root / "zero_share.json").read_text()))
    generator = torch.Generator().manual_seed(0)
    base = {name: base_tensor(shape, generator) for name, shape in shapes.items()}
    config = llama_config(layers, dims)
    zero_share = []
    for model in names:
        state, zeros = base, 0
        if model != "base":
            state = {}
            for name, tensor in base.items():
                state[name] = finetuned_tensor(tensor, generator)
                zeros += int((state[name].view(torch.int16) == tensor.view(torch.int16)).sum())
            zero_share.append(zeros / params)
        (root / model).mkdir(parents=True, exist_ok=True)
        save_file(state, str(root / model / "model.safetensors"), metadata={"format": "pt"})
        config.to_json_file(str(root / model / "config.json"))
        del state
        print(f"  wrote {model}", flush=True)
    (root / "zero_share.json").write_text(json.dumps(zero_share))
    (root / "done").write_text("")
    return checkpoints(zero_share)


def method_config(variant: str, checkpoints: Checkpoints) -> dict:
    """The merge YAML of one variant (``name[@block_size][:torch]``): density 0.25, weight 1."""
    method, _, block = variant.partition(TORCH_SUFFIX)[0].partition("@")
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


def variant_env(variant: str, env: dict) -> dict:
    """The child's environment: a ``:torch`` row forces our torch kernels."""
    return {**env, TORCH_KERNELS_ENV: "1"} if is_torch_row(variant) else env


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


def target_checks(rows: dict, slug: str) -> list[dict]:
    """The targets that the rows of family ``slug`` can decide, each with its measured ratio:
    wall on the default path (the ``:torch`` rows have no wall target), memory on every row."""
    checks = []
    ours = [v for v in rows if method_of(v) not in BUILT_INS + REFERENCES]
    default_path = [v for v in ours if not is_torch_row(v)]

    def check(target, ratio, limit):
        if ratio is not None:
            checks.append({"target": target, "ratio": ratio, "limit": limit, "met": ratio <= limit})

    for variant in default_path:
        limit = CABS_VS_TASK_ARITHMETIC.get(slug, 1.0) if method_of(variant) == "cabs" else OURS_VS_TASK_ARITHMETIC
        check(f"{variant} <= {limit}x task_arithmetic wall", rows[variant]["vs_task_arithmetic"], limit)
    for variant in default_path:
        check(f"{variant} <= {OURS_VS_TIES}x ties wall", rows[variant]["vs_ties"], OURS_VS_TIES)
    for variant in ours:
        check(f"{variant} peak RSS <= {RSS_VS_TASK_ARITHMETIC}x task_arithmetic",
              rows[variant]["rss_vs_task_arithmetic"], RSS_VS_TASK_ARITHMETIC)
    return checks


def family_markdown(family: dict) -> list[str]:
    """One family's heading, inputs, table of rows and targets."""
    inputs = family["inputs"]
    dims = inputs["dims"]

    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    zero_share = ", ".join(f"{100 * z:.0f}%" for z in inputs["zero_share"])
    lines = [
        f"## {family['name']}",
        "",
        f"Base + {inputs['n_finetuned']} fine-tunes, {inputs['params_per_model'] / 1e9:.3g} B bf16 params each: "
        f"{inputs['layers']} decoder layer(s) of hidden {dims['hidden']}, MLP {dims['intermediate']}, "
        f"KV {dims['kv']}, and {dims['vocab']} x {dims['hidden']} embeddings and head. Task-vector entries "
        f"exactly 0: {zero_share} (per fine-tune). {family['repeats']}.",
        "",
        "| method | median wall s | min wall s | runs | peak RSS MiB | x I/O floor | x task_arithmetic | x ties | RSS x task_arithmetic |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, row in family["rows"].items():
        lines.append(f"| `{variant}` | {row['median_wall_s']:.1f} | {row['min_wall_s']:.1f} | {row['runs']} | "
                     f"{row['peak_rss_mib']:.0f} | {ratio(row['vs_io_floor'])} | {ratio(row['vs_task_arithmetic'])} | "
                     f"{ratio(row['vs_ties'])} | {ratio(row['rss_vs_task_arithmetic'])} |")
    lines += ["", "| target (issues 12, 21) | measured | |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['ratio']:.2f}x | {'met' if c['met'] else '**missed**'} |"
              for c in family["targets"]]
    return lines + [""]


def markdown(result: dict) -> str:
    """The conditions of the run, then each family's table and targets."""
    machine = result["machine"]
    lines = [
        f"Machine: {machine['cpu']}, {machine['usable_cores']} usable cores, {machine['ram_gib']} GiB RAM; "
        f"torch {machine['torch']}, mergekit {machine['mergekit']}, numba {machine['numba']}; "
        f"MergeKit ran with {machine['mergekit_threads']} torch threads ({machine['mergekit_threads_source']}). "
        f"Density {DENSITY}, n:m at block {BLOCK_SIZE}, warm page cache, `mergekit-yaml "
        f"{' '.join(result['mergekit_flags'])}`; `:torch` rows with {TORCH_KERNELS_ENV}=1; "
        f"the JIT cache warmed before the runs ({result.get('jit_warmup_s', float('nan')):.1f} s; a cold "
        "first merge is `benchmarks.speed.compile_time`'s figure).",
        f"Command: `{result['command']}`" + (f". Note: {result['note']}" if result["note"] else ""),
        "",
    ]
    for family in result["families"]:
        lines += family_markdown(family)
    return "\n".join(lines)


def bar_colors(variants: list[str]) -> list[str]:
    """Grey for reference rows, orange for MergeKit's methods, blue for ours (light: torch path)."""
    return ["grey" if v in REFERENCES else "tab:orange" if v in BUILT_INS
            else "lightsteelblue" if is_torch_row(v) else "tab:blue" for v in variants]


def plot(family: dict, machine: dict, path: Path) -> None:
    """Median wall (min as a dot) and peak RSS per variant, with the targets as dashed lines."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'mergekit-cabs[plots]')")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = family["rows"]
    variants = list(rows)[::-1]  # barh draws bottom-up; keep the table's order top-down
    fig, (wall_ax, rss_ax) = plt.subplots(1, 2, figsize=(12, 0.35 * len(variants) + 2), sharey=True)
    wall_ax.barh(variants, [rows[v]["median_wall_s"] for v in variants], color=bar_colors(variants))
    wall_ax.plot([rows[v]["min_wall_s"] for v in variants], variants, "k.", label="min")
    if "task_arithmetic" in rows:
        ta = rows["task_arithmetic"]
        cabs_limit = CABS_VS_TASK_ARITHMETIC.get(family["slug"], 1.0)
        wall_ax.axvline(ta["median_wall_s"] * cabs_limit, ls="--", c="tab:green",
                        label=f"cabs target: {cabs_limit}x task_arithmetic")
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
    inputs = family["inputs"]
    fig.suptitle(f"{family['name']}: mergekit-yaml on base + {inputs['n_finetuned']} x "
                 f"{inputs['params_per_model'] / 1e9:.3g} B bf16, density {DENSITY}; {machine['cpu']}, "
                 f"{machine['mergekit_threads']} threads (grey: reference, orange: MergeKit, blue: mergekit-cabs, "
                 "light blue: its torch path)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


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


def run_family(family: Family, args, scratch: Path, mergekit_flags: list[str], env: dict) -> dict:
    """Build or reuse the family's checkpoints, run its rotation in ``scratch``, summarize it."""
    started = time.perf_counter()
    checkpoints = build_checkpoints(args.work, family.layers, family.dims)
    print(f"{family.name}: checkpoints ready in {time.perf_counter() - started:.0f} s: "
          f"{Path(checkpoints.base).parent}", flush=True)
    (scratch / "logs").mkdir(parents=True, exist_ok=True)
    run_variant(IO_FLOOR, -1, -1, checkpoints, scratch, mergekit_flags, env)  # warm the page cache for all

    runs = []
    rounds = max(family.runs_of(v, args.repeats) for v in family.variants)
    for repeat in range(rounds):
        variants = [v for v in family.variants if family.runs_of(v, args.repeats) > repeat]
        shift = repeat % len(variants)
        for position, variant in enumerate(variants[shift:] + variants[:shift]):
            run = run_variant(variant, repeat, position, checkpoints, scratch, mergekit_flags, env)
            runs.append(run)
            print(f"{family.slug} repeat {repeat + 1}/{rounds} {variant:28s} {run.wall_s:7.1f} s "
                  f"{run.peak_rss_mib:8.0f} MiB  (load {run.load_1min:.1f})", flush=True)
    rows = summarize(runs)
    repeats = f"{args.repeats} round-robin run(s) per row"
    if family.focus_repeats > args.repeats:
        repeats += f", {family.focus_repeats} of {', '.join(f'`{v}`' for v in FOCUS)}"
    return {
        "name": family.name, "slug": family.slug, "repeats": repeats,
        "inputs": {"n_finetuned": len(checkpoints.finetuned), "layers": checkpoints.layers,
                   "params_per_model": checkpoints.params_per_model, "dims": family.dims, "density": DENSITY,
                   "zero_share": checkpoints.zero_share, "data_version": DATA_VERSION, "page_cache": "warm"},
        "rows": rows,
        "targets": target_checks(rows, family.slug),
        "runs": [asdict(r) for r in runs],
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speed.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
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
    args = parser.parse_args(argv)
    args.work = args.work.resolve()  # the children run from PACKAGE_ROOT
    return args


def warm_jit_cache(env: dict) -> float:
    """Seconds of one child that compiles, or loads from the JIT cache, every kernel a merge
    uses (``benchmarks.speed.compile_time``), so that no timed merge pays a compile: a user
    pays it once, and ``compile_time`` measures that cost on its own."""
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "benchmarks.speed.compile_time"], cwd=PACKAGE_ROOT, env=env, check=True)
    return time.perf_counter() - started


def main(argv=None) -> dict:
    """Run every family's rotation, write results.json / .md and a chart per family."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = time.perf_counter()
    mergekit_flags = ["--no-copy-tokenizer", "--quiet", "--random-seed", "0"]
    mergekit_flags += ["--cuda"] if args.cuda else []
    mergekit_flags += ["-j", str(args.num_threads)] if args.num_threads else []
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.pop(TORCH_KERNELS_ENV, None)  # only the :torch rows set it
    planned = families(args)
    jit_warmup_s = warm_jit_cache(env)
    with owned_output_dir(args.work / "scratch", TOOL) as scratch:
        measured = [run_family(family, args, scratch, mergekit_flags, env) for family in planned]
    result = {
        "command": shlex.join(["python", "-m", "benchmarks.speed.run", *argv]),
        "note": args.note,
        "machine": machine_description(args.num_threads, args.cuda),
        "mergekit_flags": mergekit_flags,
        "total_wall_s": time.perf_counter() - started,
        "jit_warmup_s": jit_warmup_s,
        "families": measured,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    for family in measured:
        plot(family, result["machine"], args.out / f"results-{family['slug']}.png")
    print(markdown(result))
    print(f"total {result['total_wall_s'] / 60:.1f} min")
    return result


if __name__ == "__main__":
    main()
