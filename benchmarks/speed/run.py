"""Wall time and peak memory of plain `mergekit-yaml` with our methods vs MergeKit's built-ins.

    python benchmarks/speed/run.py                      # ~0.7 B params per model, 3 repeats
    python benchmarks/speed/run.py --params 2e8 --repeats 1 --methods task_arithmetic,cabs@64

Builds (once, cached in --work) a base and 3 fine-tunes with real 7B layer shapes in bf16,
then runs every method through a `mergekit-yaml` subprocess, round-robin over repeats so
drift in the machine's state hits all methods alike, next to an I/O floor (read every input
tensor, write one output, no arithmetic). Writes results.json, results.md and results.png
to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

HERE = Path(__file__).parent
MEASURE = HERE / "measure_child.py"
DENSITY = 0.25
# Mistral-7B shapes: hidden 4096, MLP 14336, 8 KV heads of 128, vocabulary 32000.
SEVEN_B = dict(hidden=4096, intermediate=14336, kv=1024, vocab=32000)
BUILT_INS = ("task_arithmetic", "ties", "dare_ties")
OURS = ("cabs@64", "cabs@256", "cabs_ties@64", "cabs_ties@256", "nm_linear@64", "nm_linear@256",
        "magnitude_linear", "ca_magnitude_linear", "ca_dare_linear")
TARGETS = {"vs_task_arithmetic": {"cabs@64": 1.25, "cabs@256": 1.25}, "vs_ties": 0.25,
           "rss_vs_task_arithmetic": 1.10}


def layer_shapes(hidden, intermediate, kv):
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


def checkpoint_shapes(params, hidden, intermediate, kv, vocab):
    """Tensor name -> shape: embeddings, head, norm and as many layers as fit in ``params``."""
    per_layer = sum(torch.Size(s).numel() for s in layer_shapes(hidden, intermediate, kv).values())
    fixed = 2 * vocab * hidden + hidden
    layers = max(1, round((params - fixed) / per_layer))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "lm_head.weight": (vocab, hidden),
              "model.norm.weight": (hidden,)}
    for i in range(layers):
        for name, shape in layer_shapes(hidden, intermediate, kv).items():
            shapes[f"model.layers.{i}.{name}"] = shape
    return shapes, layers


def build_checkpoints(work: Path, params: float, dims=SEVEN_B, n_finetuned=3) -> tuple[str, list[str], int]:
    """A base and ``n_finetuned`` fine-tunes (bf16 safetensors + Llama config), cached.

    Deltas are small Gaussians rounded through bf16, with 10% exact zeros: like real bf16
    fine-tunes they have many equal magnitudes, which exercises the tie rule.
    """
    from transformers import LlamaConfig

    shapes, layers = checkpoint_shapes(params, **dims)
    tag = f"p{int(params)}_h{dims['hidden']}_i{dims['intermediate']}_v{dims['vocab']}_k{n_finetuned}"
    root = work / tag
    names = ["base"] + [f"ft{i}" for i in range(n_finetuned)]
    if (root / "done").exists():
        return str(root / "base"), [str(root / n) for n in names[1:]], layers
    config = LlamaConfig(hidden_size=dims["hidden"], intermediate_size=dims["intermediate"],
                         num_hidden_layers=layers, num_attention_heads=dims["hidden"] // 128 or 1,
                         num_key_value_heads=dims["kv"] // 128 or 1, vocab_size=dims["vocab"],
                         tie_word_embeddings=False, torch_dtype="bfloat16",
                         architectures=["LlamaForCausalLM"])
    g = torch.Generator().manual_seed(0)
    base = {n: (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for n, s in shapes.items()}
    for i, name in enumerate(names):
        state = base
        if i:
            state = {}
            for n, b in base.items():
                delta = torch.randn(b.shape, generator=g) * 2e-3
                delta *= torch.rand(b.shape, generator=g) >= 0.1
                state[n] = (b.float() + delta).to(torch.bfloat16)
        (root / name).mkdir(parents=True, exist_ok=True)
        save_file(state, str(root / name / "model.safetensors"), metadata={"format": "pt"})
        config.to_json_file(str(root / name / "config.json"))
    (root / "done").write_text("")
    return str(root / "base"), [str(root / n) for n in names[1:]], layers


def method_config(variant: str, base: str, models: list[str]) -> dict:
    """The YAML of one variant: ``name`` or ``name@block_size``; density 0.25, weight 1."""
    method, _, block = variant.partition("@")
    parameters = {"weight": 1.0, "density": DENSITY}
    if method == "task_arithmetic":
        parameters = {"weight": 1.0}
    config = {"merge_method": method, "base_model": base,
              "models": [{"model": m, "parameters": dict(parameters)} for m in models],
              "dtype": "bfloat16"}
    if block:
        config["parameters"] = {"block_size": int(block)}
    return config


@dataclass
class Runs:
    wall_s: list[float] = field(default_factory=list)
    peak_rss_mib: list[float] = field(default_factory=list)


def measured(command: list[str], env: dict) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of ``command``, from a wrapper that runs only it."""
    result = subprocess.run([sys.executable, str(MEASURE), *command], capture_output=True,
                            text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["wall_s"], report["peak_rss_kib"] / 1024


def run_variant(variant, base, models, scratch: Path, extra_flags, env) -> tuple[float, float]:
    if variant == "io_floor":
        out = scratch / "io_floor.safetensors"
        command = [sys.executable, str(HERE / "io_floor.py"), out.as_posix(), base, *models]
    else:
        config = scratch / f"{variant.replace('@', '_')}.yml"
        config.write_text(yaml.safe_dump(method_config(variant, base, models), sort_keys=False))
        out = scratch / "merged"
        mergekit_yaml = str(Path(sys.executable).with_name("mergekit-yaml"))
        command = [mergekit_yaml, str(config), str(out), "--no-copy-tokenizer", "--quiet",
                   "--random-seed", "0", *extra_flags]
    try:
        return measured(command, env)
    finally:
        if out.is_dir():
            shutil.rmtree(out)
        elif out.exists():
            out.unlink()


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem_kib = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                       if line.startswith("MemTotal")))
    versions = {}
    for package in ("torch", "mergekit", "numba", "transformers"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - absent optional package
            versions[package] = None
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1),
            "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
            **versions}


def summarize(runs: dict[str, Runs]) -> dict:
    rows = {v: {"median_wall_s": statistics.median(r.wall_s), "min_wall_s": min(r.wall_s),
                "peak_rss_mib": max(r.peak_rss_mib), "runs": len(r.wall_s)} for v, r in runs.items()}
    floor = rows.get("io_floor", {}).get("median_wall_s")
    ta = rows.get("task_arithmetic", {})
    ties = rows.get("ties", {}).get("median_wall_s")
    for variant, row in rows.items():
        row["vs_io_floor"] = row["median_wall_s"] / floor if floor else None
        row["vs_task_arithmetic"] = row["median_wall_s"] / ta["median_wall_s"] if ta else None
        row["vs_ties"] = row["median_wall_s"] / ties if ties else None
        row["rss_vs_task_arithmetic"] = row["peak_rss_mib"] / ta["peak_rss_mib"] if ta else None
    return rows


def target_checks(rows: dict) -> list[dict]:
    """Each target of issue 3 that these rows can decide, with the measured ratio."""
    checks = []
    for variant, limit in TARGETS["vs_task_arithmetic"].items():
        if variant in rows and rows[variant]["vs_task_arithmetic"] is not None:
            checks.append({"target": f"{variant} <= {limit}x task_arithmetic wall",
                           "ratio": rows[variant]["vs_task_arithmetic"],
                           "met": rows[variant]["vs_task_arithmetic"] <= limit})
    for variant in OURS:
        row = rows.get(variant)
        if row and row["vs_ties"] is not None:
            checks.append({"target": f"{variant} <= {TARGETS['vs_ties']}x ties wall",
                           "ratio": row["vs_ties"], "met": row["vs_ties"] <= TARGETS["vs_ties"]})
        if row and row["rss_vs_task_arithmetic"] is not None:
            limit = TARGETS["rss_vs_task_arithmetic"]
            checks.append({"target": f"{variant} peak RSS <= {limit}x task_arithmetic",
                           "ratio": row["rss_vs_task_arithmetic"],
                           "met": row["rss_vs_task_arithmetic"] <= limit})
    return checks


def markdown(result: dict) -> str:
    def ratio(x):
        return "" if x is None else f"{x:.2f}"

    lines = [f"Machine: {result['machine']['cpu']}, {result['machine']['cores']} cores, "
             f"{result['machine']['ram_gib']} GiB; torch {result['machine']['torch']}, "
             f"mergekit {result['machine']['mergekit']}, numba {result['machine']['numba']}.",
             f"Inputs: base + {result['n_finetuned']} fine-tunes, {result['params_per_model'] / 1e9:.2f} B "
             f"bf16 params each ({result['layers']} layers of 7B shapes), density {DENSITY}, warm page cache, "
             f"{result['repeats']} round-robin repeats. Command: `{result['command']}`", "",
             "| method | median wall s | min wall s | peak RSS MiB | x I/O floor | x task_arithmetic | x ties |",
             "|---|---|---|---|---|---|---|"]
    for variant, row in result["rows"].items():
        lines.append(f"| `{variant}` | {row['median_wall_s']:.1f} | {row['min_wall_s']:.1f} | "
                     f"{row['peak_rss_mib']:.0f} | {ratio(row['vs_io_floor'])} | "
                     f"{ratio(row['vs_task_arithmetic'])} | {ratio(row['vs_ties'])} |")
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {c['target']} | {c['ratio']:.2f} | {'yes' if c['met'] else '**no**'} |"
              for c in result["targets"]]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = result["rows"]
    names = list(rows)
    fig, ax = plt.subplots(figsize=(9, 4))
    colors = ["grey" if n == "io_floor" else "tab:orange" if n in BUILT_INS else "tab:blue" for n in names]
    ax.bar(names, [rows[n]["median_wall_s"] for n in names], color=colors)
    ax.set_ylabel("median wall time, s")
    ax.set_title("mergekit-yaml wall time (grey: I/O floor, orange: MergeKit, blue: mergekit-cabs)")
    ax.tick_params(axis="x", rotation=60)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", type=float, default=0.7e9, help="parameters per model")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(BUILT_INS + OURS),
                        help="comma list; name@block_size for the n:m methods")
    parser.add_argument("--work", type=Path, default=HERE / "work", help="cache of the checkpoints")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--cuda", action="store_true", help="pass --cuda to mergekit-yaml")
    parser.add_argument("--small", action="store_true", help="tiny shapes (for the smoke test)")
    args = parser.parse_args(argv)

    dims = dict(hidden=64, intermediate=224, kv=16, vocab=500) if args.small else SEVEN_B
    started = time.perf_counter()
    base, models, layers = build_checkpoints(args.work, args.params, dims)
    print(f"checkpoints ready in {time.perf_counter() - started:.0f} s: {Path(base).parent}", flush=True)
    variants = ["io_floor"] + [v for v in args.methods.split(",") if v]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    scratch = args.work / "scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    run_variant("io_floor", base, models, scratch, (), env)  # warm the page cache for everyone
    runs = {v: Runs() for v in variants}
    for repeat in range(args.repeats):
        shift = repeat % len(variants)
        for variant in variants[shift:] + variants[:shift]:
            wall, rss = run_variant(variant, base, models, scratch, ["--cuda"] if args.cuda else [], env)
            runs[variant].wall_s.append(wall)
            runs[variant].peak_rss_mib.append(rss)
            print(f"repeat {repeat + 1}/{args.repeats} {variant:22s} {wall:7.1f} s {rss:8.0f} MiB", flush=True)
    rows = summarize(runs)
    result = {"machine": machine(), "params_per_model": sum(
                  torch.Size(s).numel() for s in checkpoint_shapes(args.params, **dims)[0].values()),
              "layers": layers, "n_finetuned": len(models), "repeats": args.repeats,
              "command": " ".join(["python", "benchmarks/speed/run.py", *(argv if argv is not None else sys.argv[1:])]),
              "rows": rows, "targets": target_checks(rows), "raw": {v: vars(r) for v, r in runs.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(markdown(result))
    plot(result, args.out / "results.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
