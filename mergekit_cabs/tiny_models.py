"""Tiny Llama checkpoints built locally (no Hub): the demo's, the tests' and the benchmarks'.

A base model with random weights and fine-tunes that add a seeded perturbation to it. A
share of every perturbation is exactly zero, as in real bf16 task vectors.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

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


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """transformers' progress bars off (each tiny save would draw "Writing model shards")."""
    from transformers.utils import logging

    enabled = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()


def build_tiny_family(
    root: str | os.PathLike,
    n_finetuned: int = 3,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    delta_scale: float = 0.02,
    zero_share: float = 0.1,
    tokenizer: bool = False,
) -> tuple[str, list[str]]:
    """Save a base and ``n_finetuned`` fine-tunes under ``root``; return absolute paths.
    ``tokenizer``: each with the word-level tokenizer of ``save_tiny_tokenizer`` (MergeKit
    copies the base's into the merge and logs an error when there is none).

    Absolute paths matter: MergeKit's model card treats ``a/b`` as a Hub repository id.
    """
    with _no_progress_bars():
        base_path, paths = _save_family(Path(root).resolve(), n_finetuned, seed, dtype,
                                        delta_scale, zero_share)
        if tokenizer:
            for path in (base_path, *paths):
                save_tiny_tokenizer(path, tiny_llama_config().vocab_size)
    return base_path, paths


def _save_family(root: Path, n_finetuned: int, seed: int, dtype: torch.dtype, delta_scale: float,
                 zero_share: float) -> tuple[str, list[str]]:
    from transformers import LlamaForCausalLM

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


def save_tiny_tokenizer(path: str | os.PathLike, vocab_size: int, added_tokens: int = 0) -> None:
    """A word-level tokenizer of ``vocab_size`` tokens (``<unk>``, ``<s>``, ``</s>``,
    ``w3``...) plus ``added_tokens`` chat tokens ``<|extra_i|>``, saved to ``path``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"w{i}": i for i in range(3, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.add_tokens([f"<|extra_{i}|>" for i in range(added_tokens)], special_tokens=True)
    tokenizer.save_pretrained(path)


def build_resized_vocab_family(
    root: str | os.PathLike, added_tokens: int = 8, seed: int = 0
) -> tuple[str, list[str]]:
    """A base with a 64-token vocabulary, one fine-tune of the same vocabulary and one with
    ``added_tokens`` chat tokens (its embedding and output rows resized), each with its
    tokenizer; absolute paths."""
    from transformers import LlamaForCausalLM

    root = Path(root).resolve()
    base_path, (same_vocab, to_resize) = build_tiny_family(root, n_finetuned=2, seed=seed)
    vocab_size = tiny_llama_config().vocab_size
    for path in (base_path, same_vocab):
        save_tiny_tokenizer(path, vocab_size)
    model = LlamaForCausalLM.from_pretrained(to_resize)
    model.resize_token_embeddings(vocab_size + added_tokens, mean_resizing=False)
    model.save_pretrained(to_resize, safe_serialization=True)
    save_tiny_tokenizer(to_resize, vocab_size, added_tokens)
    return base_path, [same_vocab, to_resize]
