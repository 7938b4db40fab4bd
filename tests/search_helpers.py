"""Tiny models, tokenizer, data files and configs for the search tests."""

import json
import random
from pathlib import Path

import torch
import yaml

from mergekit_cabs.tiny_models import build_tiny_family, save_tiny_tokenizer, tiny_llama_config


def tiny_family_with_tokenizer(root, n_finetuned=2, dtype=torch.bfloat16):
    """(base, fine-tunes) of tiny Llama models; the base has a word-level tokenizer."""
    base, tuned = build_tiny_family(root, n_finetuned=n_finetuned, seed=0, dtype=dtype)
    save_tiny_tokenizer(base, tiny_llama_config().vocab_size)
    return base, tuned


def write_task(path, seed, texts=10, words=range(3, 30)):
    rng = random.Random(seed)
    words = list(words)
    lines = [json.dumps({"text": " ".join(f"w{rng.choice(words)}" for _ in range(rng.randrange(4, 16)))})
             for _ in range(texts)]
    Path(path).write_text("\n".join(lines) + "\n")
    return str(path)


def write_search_config(path, method, base, tuned, density=0.25, weights=None, shared=None,
                        dtype="bfloat16", **extra):
    models = [{"model": t, "parameters": {"density": density, **({"weight": w} if w is not None else {})}}
              for t, w in zip(tuned, weights or [None] * len(tuned))]
    config = {"merge_method": method, "base_model": base, "models": models, "dtype": dtype, **extra}
    if shared:
        config["parameters"] = shared
    Path(path).write_text(yaml.safe_dump(config, sort_keys=False))
    return str(path)


def merged_state(config_text, out_dir, random_seed=None):
    """The state MergeKit's run_merge writes for ``config_text`` (the slow reference)."""
    from mergekit.config import MergeConfiguration
    from mergekit.merge import run_merge
    from mergekit.options import MergeOptions

    from mergekit_cabs import register_all
    from mergekit_cabs.tiny_models import load_state

    register_all()
    config = MergeConfiguration.model_validate(yaml.safe_load(config_text))
    run_merge(config, str(out_dir), options=MergeOptions(copy_tokenizer=False, quiet=True,
                                                         random_seed=random_seed))
    return load_state(out_dir)


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        width = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.view(width), b.view(width))
    return torch.equal(a, b)
