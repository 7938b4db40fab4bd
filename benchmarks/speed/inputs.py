"""The speed benchmarks' synthetic inputs: model families on disk and single tensors.

A family is a base and fine-tunes in bf16 safetensors with a Llama ``config.json``, built
once per shape and cached under ``--work``. The fine-tunes look like real small-learning-rate
bf16 fine-tunes: heavy-tailed deltas, and about 40% of task-vector entries exactly zero after
bf16 rounding (measured while writing, and reported).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

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
# The kernel benchmark's tensor: a 7B MLP matrix of ``rows`` x 14336 and 3 fine-tunes.
COLUMNS = 14336
TASKS = 3


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


def gaussian_tensors(rows: int, device: str):
    """(base, fine-tunes, float32 task vectors): bf16 like real checkpoints, 10% exact zeros
    in every delta, and one tie-heavy task whose deltas are ~2.5 bf16 ulps of the weights."""
    generator = torch.Generator().manual_seed(0)
    shape = (rows, COLUMNS)
    base = (torch.randn(shape, generator=generator) * 0.02).to(torch.bfloat16)
    tuned = []
    for scale in (2e-3, 3e-4, 2e-3)[:TASKS]:
        delta = torch.randn(shape, generator=generator) * scale
        delta *= torch.rand(shape, generator=generator) >= 0.1
        tuned.append((base.float() + delta).to(torch.bfloat16).to(device))
    base = base.to(device)
    taus = [t.float() - base.float() for t in tuned]
    return base, tuned, taus


def finetune_tensors(rows: int, device: str):
    """(base, fine-tunes, float32 task vectors) drawn as the model families are
    (``finetuned_tensor``)."""
    generator = torch.Generator().manual_seed(0)
    base = base_tensor((rows, COLUMNS), generator)
    tuned = [finetuned_tensor(base, generator).to(device) for _ in range(TASKS)]
    base = base.to(device)
    return base, tuned, [t.float() - base.float() for t in tuned]


# The kernel benchmark's --inputs.
TENSOR_INPUTS = {"gaussian": gaussian_tensors, "finetune": finetune_tensors}
