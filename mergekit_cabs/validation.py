"""Checks of merge inputs, each failing with a message that names the culprit and the fix.

Pure Python plus torch; MergeKit calls these through the method class (every pipeline)
and, during planning, through ``compat.install_planning_checks`` (before any tensor loads).
"""

from __future__ import annotations

import math
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
