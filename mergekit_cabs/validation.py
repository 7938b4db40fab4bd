"""Checks of merge inputs, each failing with a message that names the culprit and the fix.

Pure Python plus torch; MergeKit calls these through the method class (every pipeline)
and, during planning, through ``compat.install_planning_checks`` (before any tensor loads).
"""

from __future__ import annotations

import json
import math
import os
import struct
from functools import lru_cache
from typing import Any, Hashable, Iterable, Mapping, Optional, Sequence

import torch

from mergekit_cabs.kernels import keep_count

# Parameters of the authors' MergeKit pull request and of MergeKit's own methods, which
# users carry over; MergeKit would drop them silently.
FOREIGN_PARAMETER_HINTS = {
    "default_n_val": "use density and block_size (n = round(density * block_size))",
    "default_m_val": "use block_size for m (n = round(density * block_size))",
    "n_val": "use density and block_size (n = round(density * block_size))",
    "m_val": "use block_size for m (n = round(density * block_size))",
    "pruning_order": "the conflict-aware order is the order of `models:`; reorder that list",
    "rescale": "only the DARE variants rescale, always by 1/density",
    "int8_mask": "it is an option of MergeKit's ties with no effect here; drop it",
}


class MergeConfigError(ValueError):
    """A merge configuration or input that cannot give a correct merge."""


def check_density(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"density must be the kept fraction, a number in [0, 1]; got {value!r}"
        )
    return value


def check_block_size(value: int) -> int:
    if value < 1:
        raise ValueError(f"block_size must be a whole number >= 1; got {value!r}")
    return value


def check_finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError(f"must be a finite number; got {value!r}")
    return value


def check_group_inputs(
    method: str,
    input_ids: Sequence[Hashable],
    base_id: Optional[Hashable],
    group_name: Optional[str],
) -> None:
    """A base model, at least one fine-tuned model, and no model twice."""
    where = f" (in {group_name})" if group_name else ""
    seen = set()
    for model in input_ids:
        if model in seen:
            raise MergeConfigError(
                f"{method}: model {model} is listed twice{where}. List each model once; "
                "to give it more influence, raise its weight."
            )
        seen.add(model)
    if base_id is None:
        raise MergeConfigError(
            f"{method}: no base_model{where}. Task vectors are fine-tuned minus base: "
            "set `base_model:` to the model the others were fine-tuned from."
        )
    if not any(model != base_id for model in input_ids):
        raise MergeConfigError(
            f"{method}: no fine-tuned model besides the base {base_id}{where}. "
            "List at least one fine-tuned model under `models:`."
        )


def check_keep_counts(
    method: str,
    tensor: str,
    models: Sequence[Any],
    densities: Sequence[float],
    block_size: int,
) -> None:
    """A positive density must keep at least one entry per block: n = round(density * m) >= 1."""
    for model, density in zip(models, densities):
        if density > 0 and keep_count(density, block_size) == 0:
            needed = math.ceil(0.5 / density)
            raise MergeConfigError(
                f"{method}: density {density} of model {model} keeps n = "
                f"round({density} * {block_size}) = 0 entries per block of block_size "
                f"{block_size} (tensor {tensor}). Raise block_size to at least {needed} "
                "or raise density; density 0 drops the model on purpose."
            )


def check_tensors_finite(tensor: str, inputs: Iterable[tuple[Any, torch.Tensor]]) -> None:
    """NaN or inf in a checkpoint would spread through the merge: refuse it."""
    for model, value in inputs:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise MergeConfigError(
                f"tensor {tensor} of model {model} contains NaN or inf. The checkpoint is "
                "damaged; repair or replace it (merging would spread the non-finite values)."
            )


def agreed_buffer(tensor: str, inputs: Sequence[tuple[Any, torch.Tensor]]) -> torch.Tensor:
    """An integer or bool buffer has no task vector: pass it through if all models agree."""
    (_, first), *rest = inputs
    for model, value in rest:
        if value.dtype != first.dtype or not torch.equal(value, first):
            raise MergeConfigError(
                f"non-floating tensor {tensor} differs in model {model}; integer and bool "
                "buffers cannot be merged. Make them equal in every model, or merge this "
                "tensor with another method (e.g. a `slices:`/`passthrough` for it)."
            )
    return first.clone()


def check_setting_keys(
    method: str,
    known: Sequence[str],
    settings: Optional[Mapping[str, Any]],
    where: str,
) -> None:
    """Refuse parameters the method does not have (MergeKit would ignore them silently)."""
    for key in settings or {}:
        if key in known:
            continue
        hint = FOREIGN_PARAMETER_HINTS.get(key, f"its parameters are {', '.join(known)}")
        raise MergeConfigError(
            f"unknown parameter {key!r} for {method} ({where}); {hint}."
        )


def check_block_size_setting(method: str, setting: Any) -> None:
    """block_size is one integer per tensor: a gradient would interpolate to fractions."""
    if isinstance(setting, list) and all(
        isinstance(e, (int, float, str)) and not isinstance(e, bool) for e in setting
    ):
        raise MergeConfigError(
            f"{method}: block_size {setting} is a per-layer gradient, which would "
            "interpolate to fractional block sizes. Give one integer, or per-tensor "
            "integers with filters: [{filter: mlp, value: 128}, {value: 256}]."
        )


@lru_cache(maxsize=1024)
def safetensors_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Tensor shapes from a safetensors file's JSON header, without reading any tensor."""
    with open(path, "rb") as file:
        (header_size,) = struct.unpack("<Q", file.read(8))
        header = json.loads(file.read(header_size))
    return {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}


def stored_shape(base_path: str, shard: str, tensor: str) -> Optional[tuple[int, ...]]:
    """Shape of ``tensor`` in shard ``shard`` of a model at ``base_path`` (None if unknown)."""
    path = shard if os.path.isabs(shard) else os.path.join(base_path, shard)
    if not path.endswith(".safetensors") or not os.path.exists(path):
        return None
    return safetensors_shapes(path).get(tensor)


def check_input_shapes(
    method: str, tensor: str, base: Any, shapes: Mapping[Any, Optional[tuple[int, ...]]]
) -> None:
    """Every fine-tuned tensor must have the base's shape (task vectors are differences)."""
    base_shape = shapes.get(base)
    if base_shape is None:
        return
    for model, shape in shapes.items():
        if shape is not None and shape != base_shape:
            raise MergeConfigError(
                f"{method}: tensor {tensor} has shape {list(shape)} in model {model} but "
                f"{list(base_shape)} in the base model {base}. Task vectors need identical "
                "architectures: merge models fine-tuned from this base (for a resized "
                "vocabulary, align it with MergeKit's `tokenizer:` settings)."
            )
