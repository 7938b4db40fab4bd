"""The README's first command: tiny models, one CABS merge through plain ``mergekit-yaml``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from mergekit_cabs.output_dir import owned_output_dir

DEMO_PARAMETERS = {"weight": 1.0, "density": 0.25}
DEMO_BLOCK_SIZE = 16
DEMO_TOOL = "mergekit-cabs demo"


def demo_config(base: str, models: list[str]) -> dict:
    return {
        "merge_method": "cabs",
        "base_model": base,
        "models": [{"model": m, "parameters": dict(DEMO_PARAMETERS)} for m in models],
        "parameters": {"block_size": DEMO_BLOCK_SIZE},
        "dtype": "float32",
    }


def summarize(base: str, models: list[str], merged: str) -> str:
    """One line: tensors written and the share of parameters the merge moved off the base."""
    from mergekit_cabs.tiny_models import load_state

    base_state, out = load_state(base), load_state(merged)
    changed = sum(int((out[k] != base_state[k]).sum()) for k in base_state)
    total = sum(v.numel() for v in base_state.values())
    density = DEMO_PARAMETERS["density"]
    n = round(density * DEMO_BLOCK_SIZE)
    return (
        f"cabs merged {len(models)} fine-tunes at {n}:{DEMO_BLOCK_SIZE} (density {density}) "
        f"into {len(out)} tensors; {changed / total:.1%} of {total} parameters moved off the "
        f"base (disjoint masks allow at most {min(1.0, len(models) * density):.0%})"
    )


def run_demo(out_dir: str) -> Path:
    """Build the tiny family in ``out_dir`` and merge it; a non-empty ``out_dir`` must be an earlier
    demo output, of which only the files the demo wrote are removed."""
    from mergekit_cabs.tiny_models import build_tiny_family

    with owned_output_dir(out_dir, DEMO_TOOL) as root:
        base, models = build_tiny_family(root / "models", n_finetuned=3)
        config_path = root / "cabs.yml"
        config_path.write_text(yaml.safe_dump(demo_config(base, models), sort_keys=False))
        merged = root / "merged"
        mergekit_yaml = str(Path(sys.executable).with_name("mergekit-yaml"))
        command = [mergekit_yaml, str(config_path), str(merged), "--no-copy-tokenizer", "--quiet"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    print(f"merged model: {merged}")
    print(summarize(base, models, str(merged)))
    return merged
