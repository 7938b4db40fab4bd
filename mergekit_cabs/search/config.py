"""The config a search takes: read once and checked, planned by MergeKit, written back.

``read_search_config`` reads a mergekit-yaml file (``hosts.planning``) and refuses, naming
the fix, what the search cannot take; ``plan_merge`` is MergeKit's plan of it, every tensor
merging the same models with one weight per model; ``tensor_inputs`` is one tensor as our
method receives it (what ``GroupMergeMethod._execute`` does between MergeKit's loader and
the method: dtype promotion, non-float buffers; ``SaveTensor``'s cast to the written dtype);
``merge_config_text`` is the config with the found weights (``merge.yml``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import torch

from mergekit_cabs.hosts import planning
from mergekit_cabs.methods import METHODS_BY_NAME, MethodInfo
from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.groups import GROUP_FILTERS, OTHER_GROUP
from mergekit_cabs.search.pruned import TensorInputs
from mergekit_cabs.validation import MergeConfigError, agreed_buffer, check_tensors_finite


@dataclass(frozen=True)
class SearchConfig:
    """A mergekit-yaml config the search can take."""

    path: Path
    raw: dict  # the YAML as written
    config: Any  # mergekit.config.MergeConfiguration
    info: MethodInfo
    models: tuple[str, ...]  # the fine-tuned models, in merge order
    raw_indices: tuple[int, ...]  # where each sits in raw["models"]

    @property
    def base_path(self) -> str:
        return self.config.base_model.model.path


def read_search_config(path: Union[str, Path]) -> SearchConfig:
    """Read ``path`` and refuse, naming the fix, what the search cannot take."""
    path = Path(path)
    try:
        raw = planning.read_yaml(path)
        check_method(path, raw)
        config = planning.config_from_yaml(raw, path)
    except MergeConfigError as error:
        raise SearchInputError(str(error)) from None
    check_config_shape(path, config)
    base = config.base_model
    indices = tuple(i for i, m in enumerate(config.models) if m.model != base)
    for index in indices:
        check_scalar_weight(path, str(config.models[index].model), config.models[index].parameters)
    check_scalar_weight(path, "(shared parameters)", config.parameters)
    return SearchConfig(path, raw, config, METHODS_BY_NAME[config.merge_method],
                        tuple(str(config.models[i].model) for i in indices), indices)


def check_method(path: Path, raw: Any) -> None:
    method = raw.get("merge_method") if isinstance(raw, dict) else None
    if method not in METHODS_BY_NAME:
        raise SearchInputError(
            f"{path}: merge_method {method!r} is not one of this package's methods "
            f"({', '.join(METHODS_BY_NAME)}). The search prunes once through their kernels; "
            "MergeKit's own task_arithmetic/ties/dare_* are not taken (dense task arithmetic "
            "is magnitude_linear with density 1). Set merge_method to one of them."
        )


def check_config_shape(path: Path, config: Any) -> None:
    if config.slices or config.modules or not config.models:
        raise SearchInputError(f"{path}: the search takes a `models:` config with a base_model; "
                               "`slices:` and `modules:` are not supported. Rewrite it with `models:`.")
    if config.base_model is None:
        raise SearchInputError(f"{path}: no base_model. Set `base_model:` to the model the others "
                               "were fine-tuned from.")
    if config.tokenizer_source is not None or config.tokenizer is not None:
        raise SearchInputError(
            f"{path}: tokenizer_source / tokenizer settings change the vocabulary, and the "
            "search evaluates with the base model's tokenizer. Remove them (the search needs "
            "models of one vocabulary), or align the vocabularies before searching."
        )


def check_scalar_weight(path: Path, model: str, parameters: Optional[Mapping[str, Any]]) -> None:
    weight = (parameters or {}).get("weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))):
        raise SearchInputError(
            f"{path}: the weight of {model} is {weight!r}, a gradient or filter. The search "
            "scales one number per model (or per layer group with --layer-groups): set "
            "`weight:` to a number (the search's start)."
        )


@dataclass(frozen=True)
class MergePlan:
    jobs: tuple  # hosts.planning.TensorJob, in MergeKit's order
    out_config: Any  # transformers.PretrainedConfig of the merged model
    start_weights: tuple[float, ...]  # per fine-tuned model, the same in every tensor


def plan_merge(search: SearchConfig) -> MergePlan:
    """MergeKit's plan of the merge; every tensor must merge the same models with one
    weight per model (what the search scales)."""
    jobs = planning.plan_tensor_jobs(search.config)
    out_config = planning.merged_model_config(search.config)
    if not jobs:
        raise SearchInputError(f"{search.path}: MergeKit plans no tensor; check the models' paths.")
    start = jobs[0].weights
    for job in jobs:
        if tuple(str(m) for m in job.tasks) != search.models:
            raise SearchInputError(f"{search.path}: tensor {job.name} merges {[str(m) for m in job.tasks]}, "
                                   f"not {list(search.models)}; the search needs one `models:` list.")
        for model, weight, first in zip(search.models, job.weights, start):
            if weight != first:
                raise SearchInputError(
                    f"{search.path}: the weight of {model} is {weight} in {job.name} but {first} "
                    f"in {jobs[0].name}; the search scales one number per model. Set a scalar weight.")
    return MergePlan(tuple(jobs), out_config, tuple(float(w) for w in start))


def tensor_inputs(search: SearchConfig, job: planning.TensorJob, seed: int, results: dict
                  ) -> Union[TensorInputs, tuple[str, torch.Tensor]]:
    """One tensor as our method receives it, or ``(name, value)`` of a non-float buffer
    (the same in every candidate). Inputs are promoted to one dtype as MergeKit's
    ``GroupMergeMethod`` does; ``written_dtype`` is MergeKit's ``SaveTensor`` cast."""
    tensors = planning.load_tensor_group(job, results)
    order = (job.base, *job.tasks)
    missing = [str(m) for m in order if tensors.get(m) is None]
    if missing:
        raise SearchInputError(f"tensor {job.name} is missing from {', '.join(missing)}; the search "
                               "needs every tensor in the base and every fine-tuned model.")
    values = [tensors[m] for m in order]
    out_dtype = job.written_dtype()
    if not all(v.is_floating_point() for v in values):
        buffer = agreed_buffer(job.name, list(zip(map(str, order), values)))
        return job.name, buffer.to(out_dtype) if out_dtype else buffer
    check_tensors_finite(job.name, zip(map(str, order), values))
    dtype = values[0].dtype
    for value in values[1:]:
        dtype = torch.promote_types(dtype, value.dtype)
    values = [v.to(dtype) for v in values]
    return TensorInputs(name=job.name, base=values[0], tuned=tuple(values[1:]), written_dtype=out_dtype or dtype,
                        recipe=search.info.recipe, densities=tuple(job.densities),
                        block_size=search.info.sparsifier.block_length(job.block_size, tuple(values[0].shape)),
                        lam=float(job.lam), normalize=bool(job.normalize), seed=seed, rescale=job.rescale)


WeightSetting = Union[float, Mapping[str, float]]  # one weight, or one per layer group


def merge_config_text(search: SearchConfig, weights: Sequence[WeightSetting]) -> str:
    """The input config with ``weights`` (one per fine-tuned model) as their `weight:`;
    a per-group mapping becomes MergeKit filters (``GROUP_FILTERS`` of the groups it has,
    then a default: its ``OTHER_GROUP`` weight, or, where no tensor is in that group and so
    none takes the default, its first weight)."""
    import yaml

    raw = copy.deepcopy(search.raw)
    for index, weight in zip(search.raw_indices, weights):
        entry = raw["models"][index]
        if not isinstance(entry.get("parameters"), dict):
            entry["parameters"] = {}
        if isinstance(weight, Mapping):
            default = weight.get(OTHER_GROUP, next(iter(weight.values())))
            entry["parameters"]["weight"] = (
                [{"filter": text, "value": float(weight[group])} for group, text in GROUP_FILTERS if group in weight]
                + [{"value": float(default)}])
        else:
            entry["parameters"]["weight"] = float(weight)
    return yaml.safe_dump(raw, sort_keys=False)
