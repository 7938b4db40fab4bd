"""The README's first command: tiny models, one CABS merge through plain ``mergekit-yaml``,
then the next steps (inspect the config's masks, search its weights) as commands that run on
what the demo wrote."""

from __future__ import annotations

import json
import random
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from mergekit_cabs.output_dir import owned_output_dir

DEMO_PARAMETERS = {"weight": 1.0, "density": 0.25}
DEMO_BLOCK_SIZE = 16
DEMO_TOOL = "mergekit-cabs demo"
CALIBRATION_LINES = 16
CALIBRATION_WORDS = 24


def demo_config(base: str, models: list[str]) -> dict:
    # No `dtype:` (the tiny models are float32 already): with one, MergeKit sets the output
    # config's deprecated `torch_dtype`, and transformers 5 prints a deprecation line.
    return {
        "merge_method": "cabs",
        "base_model": base,
        "models": [{"model": m, "parameters": dict(DEMO_PARAMETERS)} for m in models],
        "parameters": {"block_size": DEMO_BLOCK_SIZE},
    }


def calibration_lines(vocab_size: int, seed: int = 0) -> list[str]:
    """JSON lines of ``{"text": ...}`` in the tiny tokenizer's words (``w3`` ... ``w63``), what
    ``mergekit-cabs search --data`` takes."""
    rng = random.Random(seed)
    texts = (" ".join(f"w{rng.randrange(3, vocab_size)}" for _ in range(CALIBRATION_WORDS))
             for _ in range(CALIBRATION_LINES))
    return [json.dumps({"text": text}) for text in texts]


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


def next_steps(out_dir: str) -> list[str]:
    """The demo's last three lines: where the merge is, and the commands to inspect it and
    search its weights, with the paths as the user gave them (so they run from here)."""
    folder = Path(out_dir)

    def quoted(name: str) -> str:
        return shlex.quote(str(folder / name))

    return [
        f"merged model: {folder / 'merged'}",
        f"inspect its masks: mergekit-cabs inspect {quoted('cabs.yml')} --out {quoted('inspect')}",
        f"search its weights: mergekit-cabs search {quoted('cabs.yml')} --data "
        f"{quoted('calibration.jsonl')} --out {quoted('search')}",
    ]


def run_demo(out_dir: str) -> Path:
    """Build the tiny family in ``out_dir`` and merge it; a non-empty ``out_dir`` must be an earlier
    demo output, of which only the files the demo wrote are removed."""
    from mergekit_cabs.tiny_models import build_tiny_family, tiny_llama_config

    with owned_output_dir(out_dir, DEMO_TOOL) as root:
        base, models = build_tiny_family(root / "models", n_finetuned=3, tokenizer=True)
        config_path = root / "cabs.yml"
        config_path.write_text(yaml.safe_dump(demo_config(base, models), sort_keys=False))
        lines = calibration_lines(tiny_llama_config().vocab_size)
        (root / "calibration.jsonl").write_text("\n".join(lines) + "\n")
        merged = root / "merged"
        mergekit_yaml = str(Path(sys.executable).with_name("mergekit-yaml"))
        command = [mergekit_yaml, str(config_path), str(merged), "--quiet"]
        print("$", " ".join(command), flush=True)
        subprocess.run(command, check=True)
    print(summarize(base, models, str(merged)))
    print("\n".join(next_steps(out_dir)))
    return merged
