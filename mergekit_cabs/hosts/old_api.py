"""Adapter for the old merge-method API: mergekit 0.1.4 and mergekitty 0.3.1.post2.

Both have ``MergeMethod`` with ``name()``, ``parameters()`` and ``tensor_parameters()``
(lists of ``ConfigParameterDef``) and ``make_task(...)`` returning a ``Task`` of the host
(``mergekit.graph.Task`` / ``mergekitty.task.Task``); registration is the dict
``REGISTERED_MERGE_METHODS``. One ``OldApiHost`` serves each package.

The host resolves parameters itself (``ConfigReader.parameter``), validating nothing and
handing ``make_task`` maps without order. So every parameter is declared optional with no
default, and ``make_task`` validates the resolved values itself (our defaults, our
messages); the merge order (the order of ``models:``) comes from the planner's
``plan_tensor``, which this adapter wraps once at registration (guarded, ``guards``):

1. planning checks (``<host>.plan.MergePlanner.plan_tensor``): unknown keys, shared keys
   set per model, ``block_size`` rules, base and model list; it passes the models' order
   to ``make_task``;
2. the model card (``<host>.merge.generate_card``, bound from ``<host>.card``);
3. the model-path check (``<host>.config.MergeConfiguration.referenced_models``, what
   ``run_merge`` asks first): a missing local folder is named before the host reads a model.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch

from mergekit_cabs.hosts.guards import (
    is_ours,
    mark_ours,
    missing_capability,
    require_host_object,
    require_same_binding,
)
from mergekit_cabs.hosts.model_paths import paths_checked
from mergekit_cabs.methods import (
    CABS_URL,
    METHOD_TABLE,
    METHODS_BY_NAME,
    GroupInputs,
    MethodInfo,
    check_planned,
    check_settings,
    merge_group_tensor,
    validated,
)
from mergekit_cabs.validation import MergeConfigError, check_group_inputs, check_same_shapes

_PLAN_TENSOR = ("self", "weight", "weights_in", "models", "cfg_reader")
_MAKE_TASK = ("self", "output_weight", "tensors", "parameters", "tensor_parameters", "base_model")
_GENERATE_CARD = ("config", "config_yaml", "name")
_IS_HF = ("path",)
_REFERENCED_MODELS = ("self",)

# (models in merge order, base model) of the tensor the host's planner is planning now.
_planning: contextvars.ContextVar = contextvars.ContextVar("mergekit_cabs_planning")


@dataclass(frozen=True)
class OldApiHost:
    """One package with the old API: where its pieces live and the version we follow."""

    package: str
    task_module: str
    supported: str

    def module(self, name: str) -> Any:
        return importlib.import_module(f"{self.package}.{name}" if name else self.package)

    def applies(self) -> bool:
        """Whether the loaded package has the old API."""
        base = self.module("merge_methods.base")
        return hasattr(base, "ConfigParameterDef") and not hasattr(base, "GroupMergeMethod")

    def register(self) -> tuple[str, ...]:
        return register_methods(self)


MERGEKIT_014 = OldApiHost("mergekit", "mergekit.graph", "0.1.4")
MERGEKITTY = OldApiHost("mergekitty", "mergekitty.task", "0.3.1.post2")


def setting_sources(reader: Any, model: Any) -> list:
    """The settings ``reader.parameter`` reads for ``model`` (None: the shared ones), highest
    precedence first: the model's slice source, the slice, the module (where the host has
    modules), the top-level ``parameters:``."""
    out_slice, module = reader.slice_out, getattr(reader, "module", None)
    sources = []
    if out_slice is not None:
        if model is not None:
            sources += [s.parameters for s in out_slice.sources if s.model == model]
        sources.append(out_slice.parameters)
    if module is not None:
        sources.append(module.parameters)
    sources.append(reader.config.parameters)
    return [s for s in sources if s is not None]


def own_settings(reader: Any, model: Any) -> list:
    shared = {id(s) for s in setting_sources(reader, None)}
    return [s for s in setting_sources(reader, model) if id(s) not in shared]


@contextlib.contextmanager
def planning_order(models: list, base_model: Any) -> Iterator[None]:
    token = _planning.set((tuple(m for m in models if m != base_model), base_model))
    try:
        yield
    finally:
        _planning.reset(token)


def planning_checked(plan_tensor: Callable) -> Callable:
    """The host's ``MergePlanner.plan_tensor``, checking our methods' settings before the
    host resolves them and telling ``make_task`` the order of the models."""
    if is_ours(plan_tensor):
        return plan_tensor

    def checked(self, weight, weights_in, models, cfg_reader):
        info = getattr(self._method, "info", None)
        if not isinstance(info, MethodInfo):
            return plan_tensor(self, weight, weights_in, models, cfg_reader)
        base_model = cfg_reader.base_model
        check_group_inputs(info.name, models, base_model, None)
        check_settings(info, setting_sources(cfg_reader, None),
                       [(m, own_settings(cfg_reader, m)) for m in models])
        with planning_order(models, base_model):
            return plan_tensor(self, weight, weights_in, models, cfg_reader)

    return mark_ours(checked, plan_tensor)


@functools.lru_cache(maxsize=None)
def classes(host: OldApiHost) -> tuple[type, type]:
    """(the ``MergeMethod`` subclass, its ``Task`` subclass) for ``host``, made once."""
    base = host.module("merge_methods.base")
    task_base = importlib.import_module(host.task_module).Task

    class SparseTaskArithmeticTask(task_base[torch.Tensor], arbitrary_types_allowed=True):
        method: str
        tensors: Any
        tensor_name: str
        base_model: Any
        models: tuple
        weights: tuple
        densities: tuple
        shared: tuple

        def arguments(self) -> dict:
            return {"tensors": self.tensors}

        def uses_accelerator(self) -> bool:
            return True

        def group_label(self) -> Optional[str]:
            return self.tensors.group_label()

        def execute(self, tensors: dict, **_kwargs: Any) -> torch.Tensor:
            return merge_loaded(self, tensors)

    class SparseTaskArithmeticMerge(base.MergeMethod):
        """Task arithmetic over sparsified task vectors, configured by a ``MethodInfo``."""

        def __init__(self, info: MethodInfo):
            self.info = info

        def name(self) -> str:
            return self.info.name

        def pretty_name(self) -> Optional[str]:
            return self.info.pretty_name

        def reference_url(self) -> Optional[str]:
            return CABS_URL

        def parameters(self) -> list:
            return [base.ConfigParameterDef(name=p.name) for p in self.info.parameters if not p.per_model]

        def tensor_parameters(self) -> list:
            return [base.ConfigParameterDef(name=p.name) for p in self.info.parameters if p.per_model]

        def make_task(self, *, output_weight, tensors, parameters, tensor_parameters, base_model):
            return planned_task(SparseTaskArithmeticTask, self.info, output_weight.name, tensors,
                                parameters, tensor_parameters)

    return SparseTaskArithmeticMerge, SparseTaskArithmeticTask


def planned_task(task_class: type, info: MethodInfo, tensor_name: str, tensors: Any,
                 parameters: Any, tensor_parameters: Any) -> Any:
    """Validate one tensor's resolved parameters and check them together (before anything
    loads); the task that merges the tensor in the order of ``models:``."""
    try:
        models, base_model = _planning.get()
    except LookupError:
        raise MergeConfigError(
            f"{info.name}: make_task was called outside the host's MergePlanner.plan_tensor, "
            "so the order of the models is unknown; plan merges with the host's run_merge.") from None
    shared = validated(info, tensor_name, dict(parameters.data))
    per_model = [validated(info, tensor_name, dict(tensor_parameters[m].data), m) for m in models]
    densities = tuple(p["density"] for p in per_model)
    check_planned(info, tensor_name, models, densities, shared)
    return task_class(method=info.name, tensors=tensors, tensor_name=tensor_name,
                      base_model=base_model, models=models,
                      weights=tuple(p["weight"] for p in per_model), densities=densities,
                      shared=tuple(sorted(shared.items())))


def merge_loaded(task: Any, tensors: dict) -> torch.Tensor:
    """The merged tensor from the host's loaded ``tensors`` (a map by model)."""
    missing = [m for m in (task.base_model, *task.models) if m not in tensors]
    if missing:
        raise MergeConfigError(
            f"{task.method}: tensor {task.tensor_name} is missing from model {missing[0]}; "
            "every model of the merge needs every tensor it merges.")
    base = (task.base_model, tensors[task.base_model])
    tuned = tuple((m, tensors[m]) for m in task.models)
    check_same_shapes(task.tensor_name, base, tuned)
    inputs = GroupInputs(tensor_name=task.tensor_name, base=base, tuned=tuned,
                         weights=task.weights, densities=task.densities, shared=dict(task.shared))
    return merge_group_tensor(METHODS_BY_NAME[task.method], inputs, torch.initial_seed())


def require_old_api(host: OldApiHost) -> None:
    """Check every host object this adapter uses or replaces before changing any."""
    plan, card, merge = host.module("plan"), host.module("card"), host.module("merge")
    methods = host.module("merge_methods")
    base = host.module("merge_methods.base")

    def require(obj, module, parameters, purpose):
        require_host_object(obj, module, parameters, purpose, host.package, host.supported)

    planning = "the planning checks and the merge order of mergekit-cabs's methods"
    require(plan.MergePlanner.plan_tensor, f"{host.package}.plan", _PLAN_TENSOR, planning)
    require(base.MergeMethod.make_task, f"{host.package}.merge_methods.base", _MAKE_TASK, planning)
    if not isinstance(getattr(methods, "REGISTERED_MERGE_METHODS", None), dict):
        raise missing_capability(host.package, f"{host.package}.merge_methods has no dict "
                                 "REGISTERED_MERGE_METHODS to register merge methods in", host.supported)
    card_purpose = "the model card of mergekit-cabs's merges"
    require(card.generate_card, f"{host.package}.card", _GENERATE_CARD, card_purpose)
    require_same_binding(merge.generate_card, card.generate_card, f"{host.package}.merge.generate_card",
                         card_purpose, host.package, host.supported)
    require(card.is_hf, f"{host.package}.card", _IS_HF, card_purpose)
    require(host.module("config").MergeConfiguration.referenced_models, f"{host.package}.config",
            _REFERENCED_MODELS, "checking the model paths of mergekit-cabs's merges before the host reads them")


_installed: set = set()


def install_changes(host: OldApiHost) -> None:
    """Check, then install this adapter's three changes in ``host`` (idempotent)."""
    if host in _installed:
        return
    from mergekit_cabs.card import card_with_our_sections

    require_old_api(host)
    plan, card, merge = host.module("plan"), host.module("card"), host.module("merge")
    plan.MergePlanner.plan_tensor = planning_checked(plan.MergePlanner.plan_tensor)
    configuration = host.module("config").MergeConfiguration
    configuration.referenced_models = paths_checked(configuration.referenced_models)
    merge.generate_card = card_with_our_sections(card.generate_card, card,
                                                 functools.partial(slice_sources, host))
    _installed.add(host)


def slice_sources(host: OldApiHost, config: Any, out_slice: Any, module: Any) -> tuple:
    """(shared sources, [(model, its sources)]) of one output slice, highest precedence first."""
    reader_class = host.module("config").ConfigReader
    extra = {"module": module} if "module" in reader_class.model_fields else {}
    reader = reader_class(config=config, t=0, slice_out=out_slice, **extra)
    base = out_slice.base_model or config.base_model
    tasks = [s.model for s in out_slice.sources if s.model != base]
    return (tuple(setting_sources(reader, None)),
            [(str(m), tuple(setting_sources(reader, m))) for m in tasks])


def register_methods(host: OldApiHost) -> tuple[str, ...]:
    """Install our changes in ``host``, then put every method of the table in its registry
    (idempotent; a name taken by another method is an error)."""
    install_changes(host)
    registry = host.module("merge_methods").REGISTERED_MERGE_METHODS
    method_class, _ = classes(host)
    names = []
    for info in METHOD_TABLE:
        existing = registry.get(info.name)
        if existing is None:
            registry[info.name] = method_class(info)
        elif not isinstance(getattr(existing, "info", None), MethodInfo):
            raise RuntimeError(f"merge method name {info.name!r} is already taken in {host.package} "
                               f"by {type(existing).__module__}.{type(existing).__name__}")
        names.append(info.name)
    return tuple(names)
