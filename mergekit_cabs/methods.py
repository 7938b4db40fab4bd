"""The registered merge methods, host-free: the table of names, their parameters and checks.

``METHOD_TABLE`` is the single source of truth: every host adapter (``mergekit_cabs.hosts``),
the README table, the model card and the validation messages read it. Nothing here imports
a MergeKit: an adapter turns a ``Parameter`` into its host's declaration and calls
``merge_group_tensor`` with the tensors its host loaded.

A method is a ``SparsifierStrategy`` x conflict-aware x ``CombineStrategy``
(``strategies``), with its name, pretty name and row of the paper's ablation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Mapping, Optional, Sequence

import torch

from mergekit_cabs import merge_log
from mergekit_cabs.kernels import MergeArgs, Recipe, checked_merge, tensor_seed
from mergekit_cabs.papers import CABS_PAPER, CABS_URL, Paper
from mergekit_cabs.strategies import (
    BLOCK_SIZE,
    DENSITY,
    LAMBDA,
    MAGNITUDE,
    NM_BLOCKS,
    NORMALIZE,
    RANDOM_DARE,
    RESCALE,
    SUM,
    TIES,
    WEIGHT,
    CombineStrategy,
    Parameter,
    SparsifierStrategy,
    strategy_for,
)
from mergekit_cabs.validation import (
    MergeConfigError,
    agreed_buffer,
    check_block_size_setting,
    check_keep_counts,
    check_setting_keys,
    check_tensors_finite,
    parameter_error,
    warn_if_counts_overlap,
    warn_if_starved,
)

__all__ = ["BLOCK_SIZE", "CABS_URL", "METHOD_TABLE", "METHODS_BY_NAME", "MethodInfo", "Parameter",
           "SparsifierStrategy", "GroupInputs", "merge_group_tensor", "parameter_specs", "strategy_for"]

# Elements per chunk of the n:m merge: blocks are independent, so peak memory is bounded
# by this, not by the tensor, at no cost to the result.
CHUNK_ELEMENTS = 1 << 22

@dataclass(frozen=True)
class MethodInfo:
    """One registered name: sparsifier x conflict-aware x combine, and how the paper and
    the card call it."""

    name: str
    sparsifier: SparsifierStrategy
    conflict_aware: bool
    combine: CombineStrategy
    pretty_name: str
    paper_row: str
    recipe: Recipe = field(init=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "recipe", Recipe(self.sparsifier.kernel, self.conflict_aware,
                                                  self.combine.kernel))

    @property
    def parameters(self) -> tuple[Parameter, ...]:
        return (WEIGHT, DENSITY, LAMBDA, NORMALIZE, RESCALE) + self.sparsifier.extra_parameters

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.parameters)

    @property
    def papers(self) -> tuple[Paper, ...]:
        """CABS (every method here is a row of its ablation), the combine's, then the
        sparsifier's."""
        return (CABS_PAPER,) + self.combine.papers + self.sparsifier.papers


_SUM, _TIES = SUM, TIES

METHOD_TABLE: tuple[MethodInfo, ...] = (
    MethodInfo("cabs", NM_BLOCKS, True, _SUM, "CABS", "CABS"),
    MethodInfo("cabs_ties", NM_BLOCKS, True, _TIES, "CABS with TIES", "TIES + CABS"),
    MethodInfo("nm_linear", NM_BLOCKS, False, _SUM, "n:m Task Arithmetic", "BS only (TA + BS)"),
    MethodInfo("nm_ties", NM_BLOCKS, False, _TIES, "n:m TIES", "TIES + BS"),
    MethodInfo("magnitude_linear", MAGNITUDE, False, _SUM, "Magnitude Task Arithmetic", "TA + magnitude"),
    MethodInfo("ca_magnitude_linear", MAGNITUDE, True, _SUM, "Conflict-Aware Magnitude Task Arithmetic", "CA only"),
    MethodInfo("ca_ties", MAGNITUDE, True, _TIES, "Conflict-Aware TIES", "TIES + CA"),
    MethodInfo("ca_dare_linear", RANDOM_DARE, True, _SUM, "Conflict-Aware Linear DARE", "DARE + CA"),
    MethodInfo("ca_dare_ties", RANDOM_DARE, True, _TIES, "Conflict-Aware DARE TIES", "TIES + DARE + CA"),
)

METHODS_BY_NAME = {info.name: info for info in METHOD_TABLE}


def parameter_specs(recipe: Recipe) -> tuple[Parameter, ...]:
    """Parameters of a recipe; ``block_size`` exists only where blocks do (n:m)."""
    return next(i for i in METHOD_TABLE if i.recipe == recipe).parameters


def method_table_markdown() -> str:
    """The README's table of registered names, rendered from ``METHOD_TABLE``."""
    rows = ["| `merge_method` | sparsifier | conflict-aware | combine | paper row | parameters |",
            "|---|---|---|---|---|---|"]
    for info in METHOD_TABLE:
        rows.append(
            f"| `{info.name}` | {info.sparsifier.table_words} | "
            f"{'yes' if info.conflict_aware else 'no'} | "
            f"{info.combine.table_word} | {info.paper_row} | "
            + ", ".join(f"`{p}`" for p in info.parameter_names) + " |"
        )
    return "\n".join(rows)


# ---- checks every host runs while it plans (before any tensor loads) ----

def check_settings(info: MethodInfo, shared_sources: Iterable[Optional[Mapping[str, Any]]],
                   model_sources: Iterable[tuple[Any, Iterable[Optional[Mapping[str, Any]]]]]) -> None:
    """The keys a config sets for ``info``: unknown ones (a host would drop them silently),
    shared ones set for one model, and ``block_size`` rules. ``model_sources`` holds each
    model's own settings, without the shared ones."""
    shared_only = [p.name for p in info.parameters if not p.per_model]
    for settings in shared_sources:
        check_setting_keys(info.name, info.parameter_names, settings, "shared `parameters:`")
        if settings and "block_size" in settings:
            check_block_size_setting(info.name, settings["block_size"])
    for model, sources in model_sources:
        for settings in sources:
            check_setting_keys(info.name, info.parameter_names, settings, f"model {model}",
                               shared_only)


def validated(info: MethodInfo, tensor_name: str, raw: Mapping[str, Any], model: Any = None) -> dict:
    """Shared (``model`` None) or one model's resolved raw values, validated; ``None`` or a
    missing key stands for "not set". Errors name the parameter, the owner and the fix."""
    values = {}
    for parameter in info.parameters:
        if parameter.per_model != (model is not None):
            continue
        value = raw.get(parameter.name)
        if value is None and parameter.required:
            raise parameter_error(info.name, parameter.name, model, tensor_name, None)
        try:
            values[parameter.name] = parameter.validate(parameter.default if value is None else value)
        except ValueError as error:
            raise parameter_error(info.name, parameter.name, model, tensor_name, error) from None
    return values


def check_planned(info: MethodInfo, tensor_name: str, models: Sequence[Any],
                  densities: Sequence[float], shared: Mapping[str, Any]) -> None:
    """Checks that span parameters, on one tensor's resolved values: n:m keep counts, and
    conflict-aware pruning that starves a model (``warn_if_starved``; not for DARE, whose
    leftovers are a random draw, not the weakest entries)."""
    block_size = shared.get("block_size") if info.sparsifier.has_blocks else None
    if info.conflict_aware and not info.sparsifier.kernel.random:
        warn_if_starved(info.name, models, densities, block_size)
    if not info.sparsifier.has_blocks:
        return
    check_keep_counts(info.name, tensor_name, models, densities, block_size)
    if info.conflict_aware:
        warn_if_counts_overlap(info.name, tensor_name, models, densities, block_size)


# ---- the one call into the kernels ----

@dataclass(frozen=True)
class GroupInputs:
    """One tensor as a host hands it over: the base and each fine-tuned model's tensor in
    merge order (``(model, tensor)`` pairs), their weights and densities, and the shared
    parameters (``lambda``, ``normalize``, ``block_size`` where the sparsifier has blocks)."""

    tensor_name: str
    base: tuple[Hashable, torch.Tensor]
    tuned: tuple[tuple[Hashable, torch.Tensor], ...]
    weights: tuple[float, ...]
    densities: tuple[float, ...]
    shared: Mapping[str, Any]


def merge_group_tensor(info: MethodInfo, inputs: GroupInputs, seed: int) -> torch.Tensor:
    """The merged tensor of ``inputs`` by ``info``'s recipe; ``seed`` is the host's torch
    seed (the DARE variants' masks are drawn from it and the tensor's name)."""
    name = inputs.tensor_name
    base_id, base = inputs.base
    models = [model for model, _ in inputs.tuned]
    if not base.is_floating_point():
        return agreed_buffer(name, [inputs.base, *inputs.tuned])
    block_size = info.sparsifier.block_length(inputs.shared.get("block_size"), tuple(base.shape))
    if info.sparsifier.has_blocks:
        check_keep_counts(info.name, name, models, inputs.densities, block_size)
    merge_log.record(
        (info.name, base_id, tuple(models)),
        merge_log.TensorRecord(name, base.numel(), tuple(inputs.densities), tuple(inputs.weights),
                               block_size if info.sparsifier.kernel.blocks else None))
    merged, finite = checked_merge(
        info.recipe,
        base,
        [tensor for _, tensor in inputs.tuned],
        MergeArgs(
            weights=tuple(inputs.weights),
            densities=tuple(inputs.densities),
            block_size=block_size,
            lam=inputs.shared["lambda"],
            normalize=inputs.shared["normalize"],
            seeds=tuple(tensor_seed(seed, name, i) for i in range(len(models))),
            chunk_blocks=max(1, CHUNK_ELEMENTS // block_size),
            rescale=rescale_norm(inputs.shared.get("rescale", "none")),
        ),
    )
    if not finite:
        refuse_nonfinite_merge(info, inputs, merged)
    return merged


def rescale_norm(setting: str) -> Optional[str]:
    """The kernels' ``MergeArgs.rescale`` of a ``rescale`` setting: None for ``none``."""
    return None if setting == "none" else setting


def refuse_nonfinite_merge(info: MethodInfo, inputs: GroupInputs, merged: torch.Tensor) -> None:
    """A NaN or inf in any input reaches the result (dropped entries are tau * 0), so the
    kernels' test of the result stands in for one pass per input; those are read only
    here, to name the model."""
    check_tensors_finite(inputs.tensor_name, [inputs.base, *inputs.tuned])
    raise MergeConfigError(
        f"{info.name}: merging tensor {inputs.tensor_name} gives values beyond the range of "
        f"{merged.dtype}; lower weight or lambda."
    )
