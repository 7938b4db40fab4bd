"""Checks of merge inputs, each failing with a message that names the culprit and the fix.

Pure Python plus torch, no host: ``mergekit_cabs.methods`` combines them into the checks
every host adapter (``mergekit_cabs.hosts``) runs while its host plans, before any tensor
loads, and when a tensor merges. Shapes are checked by the host itself when a tensor group
merges, after its ``tokenizer:`` settings have aligned the vocabularies.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Hashable, Iterable, Mapping, Optional, Sequence

import torch

from mergekit_cabs.kernels import RESCALE_NORMS, keep_count

# Parameters of the authors' MergeKit pull request and of MergeKit's own methods, which
# users carry over; MergeKit would drop them silently.
FOREIGN_PARAMETER_HINTS = {
    "default_n_val": "use density and block_size (n = round(density * block_size))",
    "default_m_val": "use block_size for m (n = round(density * block_size))",
    "n_val": "use density and block_size (n = round(density * block_size))",
    "m_val": "use block_size for m (n = round(density * block_size))",
    "pruning_order": "the conflict-aware order is the order of `models:`; reorder that list",
}

# Options of MergeKit's own methods that change nothing but memory use there: a config
# ported from MergeKit's examples keeps them, with a one-line notice.
HARMLESS_MERGEKIT_OPTIONS = {
    "int8_mask": "an option of MergeKit's ties that only saves memory there",
}

LOG = logging.getLogger(__name__)
_noticed: set = set()


class MergeConfigError(ValueError):
    """A merge configuration or input that cannot give a correct merge."""


def check_density(value: float) -> float:
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ValueError(
            f"density must be the kept fraction, a number in [0, 1]; got {value!r}"
        )
    return value


RESCALE_SETTINGS = ("none", *RESCALE_NORMS)


def check_rescale_name(value: str) -> str:
    if value not in RESCALE_SETTINGS:
        raise ValueError(f"rescale must be one of {', '.join(RESCALE_SETTINGS)}; got {value!r}")
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


# What MergeKit's loader reads from a model folder (``ShardedTensorIndex.from_disk``).
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def looks_local(path: str) -> bool:
    """Whether a model path names a folder on this machine, not a Hub repository: absolute,
    ``~``, ``./``, ``../``, two or more slashes (no Hub id has them), or a parent folder
    that exists here (``models/finetuned_9`` next to ``models/``)."""
    if os.path.isabs(path) or path.startswith(("~", "./", "../")) or path in (".", ".."):
        return True
    parent = os.path.dirname(path)
    return path.count("/") > 1 or (bool(parent) and os.path.isdir(parent))


def _model_folders_in(folder: str) -> list[str]:
    """Sub-folders of ``folder`` that hold weights (the user named their parent)."""
    with os.scandir(folder) as entries:
        folders = sorted(e.name for e in entries if e.is_dir())
    return [f for f in folders if any(os.path.isfile(os.path.join(folder, f, w)) for w in WEIGHT_FILES)]


def check_model_path(method: str, path: str, *, adapter: bool = False) -> None:
    """A local-looking model path must be a folder holding weights MergeKit can read.

    Checked before MergeKit opens anything: a missing local folder would otherwise be
    taken for a Hub repository id and fail with an unrelated message (``Repo id must be in
    the form ...``), after a long traceback. ``adapter``: a LoRA folder, whose weight files
    have other names, so only its existence is checked.
    """
    if not looks_local(path):
        return
    relative = "" if os.path.isabs(path) else f" (relative to the current folder {os.getcwd()})"
    if not os.path.exists(path):
        tilde = " MergeKit does not expand `~`: write the full path." if path.startswith("~") else ""
        raise MergeConfigError(
            f"{method}: model path {path} does not exist{relative}. Correct it in the config "
            f"(MergeKit would take it for a Hugging Face Hub id and fail).{tilde}")
    if not os.path.isdir(path):
        raise MergeConfigError(
            f"{method}: model path {path} is a file, not a model folder. Give the folder that "
            "holds the model's config.json and weights.")
    if adapter or any(os.path.isfile(os.path.join(path, w)) for w in WEIGHT_FILES):
        return
    inside = _model_folders_in(path)
    hint = f" (it holds the model folders {', '.join(inside[:3])})" if inside else ""
    raise MergeConfigError(
        f"{method}: model folder {path} holds no weights: none of {', '.join(WEIGHT_FILES)}, "
        f"which MergeKit reads{hint}. Give the folder that holds the model's config.json and "
        "weights.")


def check_tensors_finite(tensor: str, inputs: Iterable[tuple[Any, torch.Tensor]]) -> None:
    """NaN or inf in a checkpoint would spread through the merge: refuse it."""
    for model, value in inputs:
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise MergeConfigError(
                f"tensor {tensor} of model {model} contains NaN or inf. The checkpoint is "
                "damaged; repair or replace it (merging would spread the non-finite values)."
            )


def check_same_shapes(tensor: str, base: tuple[Any, torch.Tensor],
                      tuned: Sequence[tuple[Any, torch.Tensor]]) -> None:
    """Every model's tensor has the base's shape (hosts with the new API check it themselves)."""
    for model, value in tuned:
        if value.shape != base[1].shape:
            raise MergeConfigError(
                f"Tensor size mismatch for {tensor}: model {model} has {tuple(value.shape)}, the "
                f"base {base[0]} has {tuple(base[1].shape)}. Merge models of one architecture and "
                "size; for a resized vocabulary set `tokenizer:` (or `tokenizer_source:`)."
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
    shared_only: Sequence[str] = (),
) -> None:
    """Refuse parameters the method does not have (MergeKit would ignore them silently),
    and shared parameters set for one model (MergeKit would ignore those too); keep
    MergeKit's memory-only options with a one-line notice."""
    for key in settings or {}:
        if key in shared_only:
            raise MergeConfigError(
                f"{method}: `{key}` is shared by all models, but {where} sets it; MergeKit "
                f"would ignore it there. Set it once under the top-level `parameters:`."
            )
        if key in known:
            continue
        if key in HARMLESS_MERGEKIT_OPTIONS:
            if (method, key) not in _noticed:
                _noticed.add((method, key))
                LOG.warning("%s: ignoring `%s` (%s; it changes nothing here).",
                            method, key, HARMLESS_MERGEKIT_OPTIONS[key])
            continue
        hint = FOREIGN_PARAMETER_HINTS.get(key, f"its parameters are {', '.join(known)}")
        raise MergeConfigError(
            f"unknown parameter {key!r} for {method} ({where}); {hint}."
        )


def _is_gradient(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(e, (int, float, str)) and not isinstance(e, bool) for e in value
    )


def _as_written(values: list) -> str:
    """A gradient as the YAML wrote it: old hosts parse ``[16, 64]`` as ``[16.0, 64.0]``."""
    return "[" + ", ".join(f"{v:g}" if isinstance(v, (int, float)) else repr(v) for v in values) + "]"


def check_block_size_setting(method: str, setting: Any) -> None:
    """block_size is one integer per tensor: a gradient, plain or as a filter's value,
    would interpolate to fractional block sizes."""
    conditions = setting if isinstance(setting, list) and not _is_gradient(setting) else [setting]
    for condition in conditions:
        value = getattr(condition, "value", condition)
        if _is_gradient(value):
            where = f" (filter {condition.filter!r})" if hasattr(condition, "filter") else ""
            raise MergeConfigError(
                f"{method}: block_size {_as_written(value)}{where} is a per-layer gradient, which would "
                "interpolate to fractional block sizes. Give one integer, or per-tensor "
                "integers with filters: [{filter: mlp, value: 128}, {value: 256}]."
            )


def warn_if_counts_overlap(method: str, tensor: str, models: Sequence[Any],
                           densities: Sequence[float], block_size: int) -> None:
    """Densities summing to <= 1 whose rounded n:m counts overflow the block: say so once,
    with the ``block_size`` that makes the conflict-aware masks disjoint."""
    counts = [keep_count(d, block_size) for d in densities]
    if sum(densities) > 1 or sum(counts) <= block_size:
        return
    key = (method, tuple(densities), block_size)
    if key in _noticed:
        return
    _noticed.add(key)
    from mergekit_cabs.keep_counts import disjoint_block_size

    fit = disjoint_block_size(densities, block_size)
    fit_power = disjoint_block_size(densities, block_size, power_of_two=True)
    if fit is None:
        advice = "no block_size up to 65536 makes them disjoint; lower a density"
    elif fit_power not in (None, fit):
        advice = f"block_size {fit} (or {fit_power}, the smallest power of two) makes them disjoint"
    else:
        advice = f"block_size {fit} makes them disjoint"
    LOG.warning(
        "%s: densities %s sum to %g <= 1, but at block_size %d they keep %s = %d > %d entries "
        "per block (tensor %s and others), so the masks of %s overlap; %s.",
        method, list(densities), sum(densities), block_size,
        " + ".join(map(str, counts)), sum(counts), block_size, tensor,
        ", ".join(map(str, models)), advice,
    )


def _validation_message(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        return f"{message} (got {first.get('input')!r})" if "got" not in message else message
    return str(error)


def parameter_error(method: str, parameter: str, model: Any, tensor_name: str,
                    error: Optional[Exception]) -> MergeConfigError:
    """The error for ``parameter`` of ``model`` (None: the shared ones): missing where
    ``error`` is None, else invalid with the validator's reason."""
    owner = f"model {model}" if model is not None else "the shared `parameters:`"
    if error is None:
        return MergeConfigError(
            f"{method}: {owner} has no `{parameter}` (tensor {tensor_name}). "
            f"Set it per model or once under `parameters:`, e.g. {parameter}: 0.25."
        )
    return MergeConfigError(
        f"{method}: invalid `{parameter}` for {owner} (tensor "
        f"{tensor_name}): {_validation_message(error)}."
    )


def warn_if_starved(method: str, models: Sequence[Any], densities: Sequence[float],
                    block_size: Optional[int]) -> None:
    """Conflict-aware pruning that leaves a model fewer free positions than
    ``STARVED_FREE_RATIO`` times its keep count: say so once per merge, naming the model,
    its free share and the fixes. Its mask then holds what earlier models passed over."""
    from mergekit_cabs.keep_counts import STARVED_FREE_RATIO, starved_models

    starved = starved_models(densities, block_size)
    key = ("starved", method, tuple(map(str, models)), tuple(densities), block_size)
    if not starved or key in _noticed:
        return
    _noticed.add(key)
    where = "each block" if block_size else "each tensor"
    named = "; ".join(f"{models[s.index]} (model {s.index + 1} of {len(models)}) {s.free_share:.0%} of "
                      f"{where} free for a keep share of {s.keep_share:.0%}" for s in starved)
    LOG.warning(
        "%s: conflict-aware pruning leaves %s: less than %g times its keep share, so its mask "
        "takes mostly what earlier models passed over (densities %s sum to %g). Lower the "
        "densities, list that model earlier, or use the method without conflict-aware "
        "pruning (e.g. nm_linear for cabs).",
        method, named, STARVED_FREE_RATIO, list(densities), sum(densities))
