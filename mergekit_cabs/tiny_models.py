"""Tiny Llama checkpoints built locally (no Hub): the demo's, the tests' and the benchmarks'.

A base model with random weights and fine-tunes that add a seeded perturbation to it. A
share of every perturbation is exactly zero, as in real bf16 task vectors.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch


def tiny_llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=16,
        num_key_value_heads=16,
        num_hidden_layers=2,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


def build_tiny_family(
    root: str | os.PathLike,
    n_finetuned: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    delta_scale: float = 0.02,
    zero_share: float = 0.1,
) -> tuple[str, list[str]]:
    """Save a base and ``n_finetuned`` fine-tunes under ``root``; return absolute paths.

    Absolute paths matter: MergeKit's model card treats ``a/b`` as a Hub repository id.
    """
    from transformers import LlamaForCausalLM

    root = Path(root).resolve()
    torch.manual_seed(seed)
    base = LlamaForCausalLM(tiny_llama_config()).to(dtype)
    base_path = root / "base"
    base.save_pretrained(base_path, safe_serialization=True)
    generator = torch.Generator().manual_seed(seed + 1)
    paths = []
    for index in range(n_finetuned):
        model = LlamaForCausalLM(tiny_llama_config()).to(dtype)
        state = {}
        for name, value in base.state_dict().items():
            noise = torch.randn(value.shape, generator=generator) * delta_scale
            keep = torch.rand(value.shape, generator=generator) >= zero_share
            state[name] = (value.float() + noise * keep).to(dtype)
        model.load_state_dict(state)
        path = root / f"finetuned_{index + 1}"
        model.save_pretrained(path, safe_serialization=True)
        paths.append(str(path))
    return str(base_path), paths


def load_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """All tensors of a saved model directory (every safetensors shard)."""
    from safetensors.torch import load_file

    state = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(shard))
    return state
