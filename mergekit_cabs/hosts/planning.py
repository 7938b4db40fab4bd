"""MergeKit's planner and loader as this package's tools use them (``inspect``, ``search``).

Both read a mergekit-yaml config, let MergeKit plan the merge (which tensors, which models
in which order, every tensor's resolved parameters, the dtype it writes) and read one
tensor group at a time through MergeKit's loader (names, aliases, vocabulary alignment),
so what they see is what ``mergekit-yaml`` merges. This module is the one place they touch
MergeKit; merges themselves run inside each host through its adapter.

MergeKit 0.1.5 internals used: ``MergeConfiguration``, ``MergeOptions``,
``architecture.get_architecture_info``, ``merge._model_out_config`` (the merged model's
``config.json``), ``plan.MergePlanner.plan_to_disk`` and its ``SaveTensor`` tasks,
``io.tasks.GatherTensors`` and ``LoaderCache``, ``common.dtype_from_name``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from mergekit_cabs.methods import rescale_norm
from mergekit_cabs.validation import MergeConfigError


@dataclass(frozen=True)
class TensorJob:
    """One tensor of the merge as MergeKit planned it."""

    name: str
    inputs: Any  # mergekit.io.tasks.GatherTensors, or a vocabulary task wrapping it
    base: Any
    tasks: tuple
    densities: tuple
    block_size: Optional[int]
    weights: tuple = ()
    lam: float = 1.0
    normalize: bool = False
    out_dtype: Optional[str] = None  # what MergeKit casts the result to before saving
    rescale: Optional[str] = None  # the norm rescale (kernels.MergeArgs.rescale)

    def written_dtype(self) -> Optional[torch.dtype]:
        """The dtype MergeKit writes this tensor in (None: the merge's own)."""
        from mergekit.common import dtype_from_name

        return dtype_from_name(self.out_dtype)


def config_from_yaml(raw: Any, source: Union[str, Path], check_paths: bool = True) -> Any:
    """The ``MergeConfiguration`` of a config's parsed YAML, our methods registered and (for
    our methods) its local model paths checked; a schema error is a ``MergeConfigError``
    naming ``source``."""
    from mergekit.config import MergeConfiguration

    from mergekit_cabs import register_all
    from mergekit_cabs.hosts.model_paths import check_config_paths

    register_all()
    try:
        config = MergeConfiguration.model_validate(raw)
    except ValueError as error:
        raise MergeConfigError(f"{source}: not a valid mergekit-yaml config: {error}") from None
    if check_paths:
        check_config_paths(config)
    return config


def read_yaml(path: Union[str, Path]) -> Any:
    """A config file's parsed YAML; a missing file or bad YAML is a ``MergeConfigError``."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise MergeConfigError(f"config {path} does not exist; pass a mergekit-yaml config file.")
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise MergeConfigError(f"{path}: not valid YAML: {error}") from None


def read_config(path: Union[str, Path]) -> Any:
    """The ``MergeConfiguration`` of a mergekit-yaml file (``config_from_yaml``)."""
    return config_from_yaml(read_yaml(path), path)


def merged_model_config(config: Any) -> Any:
    """The ``config.json`` (a ``PretrainedConfig``) MergeKit writes for the merged model.

    Without the config's ``dtype``: given one, MergeKit would set the deprecated
    ``torch_dtype`` and transformers 5 print a line for it; the tools need the architecture."""
    from mergekit.architecture import get_architecture_info
    from mergekit.merge import _model_out_config
    from mergekit.options import MergeOptions

    options = MergeOptions()
    untyped = config.model_copy(update={k: None for k in ("dtype", "out_dtype") if k in type(config).model_fields})
    return _model_out_config(untyped, get_architecture_info(config, options),
                             trust_remote_code=options.trust_remote_code)


def plan_tensor_jobs(config: Any, device: str = "cpu") -> list[TensorJob]:
    """MergeKit's plan of the merge, one ``TensorJob`` per tensor it writes, in its order."""
    from mergekit.architecture import get_architecture_info
    from mergekit.io.tasks import LoaderCache
    from mergekit.options import MergeOptions
    from mergekit.plan import MergePlanner

    options = MergeOptions(device=device)
    arch_info = get_architecture_info(config, options)
    cache = LoaderCache()
    cache.setup(options=options)
    for model in config.referenced_models():  # as run_merge warms its loader cache
        cache.get(model)
    planner = MergePlanner(config.model_copy(deep=True), arch_info, options=options,
                           out_model_config=merged_model_config(config))
    # The plan run_merge executes; nothing is written unless its tasks run. (MergeKit
    # 0.1.5's plan_in_memory fails: pydantic cannot validate its abstract task field.)
    return [tensor_job(save) for save in planner.plan_to_disk(out_path=os.devnull) if is_save(save)]


def is_save(task: Any) -> bool:
    from mergekit.io.tasks import SaveTensor

    return isinstance(task, SaveTensor)


def tensor_job(save: Any) -> TensorJob:
    """A ``SaveTensor`` task and the merge task it saves, as a ``TensorJob``."""
    task = save.tensor_task
    tasks = tuple(m for m in task.model_order if m != task.base_model)
    shared = dict(task.parameters.items())
    return TensorJob(
        name=task.output_weight.name,
        inputs=task.gather_tensors,  # with MergeKit's vocabulary alignment, if any
        base=task.base_model,
        tasks=tasks,
        densities=tuple(task.input_parameters[m]["density"] for m in tasks),
        block_size=shared.get("block_size"),
        weights=tuple(task.input_parameters[m]["weight"] for m in tasks),
        lam=shared.get("lambda", 1.0),
        normalize=shared.get("normalize", False),
        out_dtype=save.dtype,
        rescale=rescale_norm(shared.get("rescale", "none")),
    )


def load_tensor_group(job: TensorJob, results: dict) -> dict:
    """One tensor of every model as the merge sees it: read by MergeKit's loader (names,
    aliases, dtype) and, under ``tokenizer:`` settings, aligned to the merged vocabulary.
    ``results`` keeps what is built once for every tensor (the merged tokenizer)."""
    tensors = run_loading_tasks(job.inputs, results)
    unmap_safetensors_shards()
    return tensors


def run_loading_tasks(inputs: Any, results: dict) -> dict:
    """Runs ``inputs``'s MergeKit tasks depth first; a task without inputs of its own other
    than tensors (the tokenizer build) is run once, its result kept in ``results``."""
    from mergekit.io.tasks import GatherTensors

    if isinstance(inputs, GatherTensors):
        loaded = {key: load.execute() for key, load in inputs.arguments().items()}
        return inputs.execute(**loaded)
    arguments = {}
    for key, task in inputs.arguments().items():
        if isinstance(task, GatherTensors) or task.arguments():
            arguments[key] = run_loading_tasks(task, results)
        else:
            if task not in results:
                results[task] = task.execute()
            arguments[key] = results[task]
    return inputs.execute(**arguments)


def unmap_safetensors_shards() -> None:
    """Close the memory-mapped safetensors shards MergeKit's loaders keep open.

    Every page read through an open mapping counts as resident until it is closed, so a
    7B shard would add gigabytes to the peak; reopening costs a header read. Pickled
    shards stay open: reopening one reads it whole.
    """
    from mergekit.io.tasks import LoaderCache

    for loader in LoaderCache().loaders.values():
        if loader.index.is_safetensors:
            loader.flush()


def planned_weights(config_text: str) -> dict[str, tuple[float, ...]]:
    """Every tensor's per-model weights as MergeKit resolves ``config_text``."""
    import yaml

    config = config_from_yaml(yaml.safe_load(config_text), "merge.yml", check_paths=False)
    return {job.name: tuple(job.weights) for job in plan_tensor_jobs(config)}
