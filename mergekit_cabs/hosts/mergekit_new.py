"""Adapter for MergeKit's new merge-method API (mergekit >= 0.1.5).

``GroupMergeMethod`` with a ``MergeMethodSpec`` of ``ParameterSpec`` s, registered with
``mergekit.merge_methods.register``. The API changed while in review; the revision is told
by what exists, never by the version string:

- PyPI 0.1.5: a per-model parameter has ``ParameterScope.NON_BASE``;
- a later upstream revision: ``ParameterScope.INPUT`` with an ``InputParameterTarget``
  field of ``ParameterSpec`` set to ``InputParameterTarget.NON_BASE``.

``install_changes`` runs once, at registration. It first checks every MergeKit object it
replaces, then replaces them all (``guards``); each change, with the upstream change that
would retire it, is listed in ``docs/mergekit-integration.md``:

1. planning checks (``mergekit.parameter_resolver.resolve_parameters``, also bound in
   ``mergekit.plan``): checks that span parameters, unknown keys, ``block_size`` rules;
2. optional weights with aliases (``mergekit.plan.MergePlanner.plan_tensor``): BERT-family
   models plan at all;
3. the model card (``mergekit.merge.generate_card``, bound from ``mergekit.card``);
4. the model-path check (``mergekit.config.MergeConfiguration.referenced_models``, what
   ``run_merge`` asks first): a missing local folder is named before MergeKit reads a model.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Hashable, Optional, Sequence

import torch

from mergekit_cabs.hosts.guards import (
    IncompatibleMergeKit,
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
    Parameter,
    check_planned,
    check_settings,
    merge_group_tensor,
)
from mergekit_cabs.validation import check_group_inputs, parameter_error

# This module is an adapter of the ``hosts`` table: the package it serves, the release it follows.
package = "mergekit"
supported = "0.1.5"

_RESOLVE_PARAMETERS = ("spec", "tensor_name", "inputs", "sources", "base_model", "t")
_PLAN_TENSOR = ("self", "weight", "weights_in", "models", "cfg_reader")
_GENERATE_CARD = ("config", "config_yaml", "name")
_IS_HF = ("path",)
_REFERENCED_MODELS = ("self",)

_installed = False


def applies() -> bool:
    """Whether the loaded ``mergekit`` has the new API (else the old-API adapter serves it)."""
    import mergekit.merge_methods.base as base

    return hasattr(base, "GroupMergeMethod")


def per_model_scope(base: Any) -> dict:
    """The ``ParameterSpec`` keywords of a per-fine-tuned-model parameter in ``base`` (the
    module ``mergekit.merge_methods.base``), by what that revision of the API has."""
    target = getattr(base, "InputParameterTarget", None)
    if target is not None and hasattr(base.ParameterScope, "INPUT"):
        fields = [f.name for f in dataclasses.fields(base.ParameterSpec)
                  if "InputParameterTarget" in str(f.type)]
        if len(fields) == 1 and hasattr(target, "NON_BASE"):
            return {"scope": base.ParameterScope.INPUT, fields[0]: target.NON_BASE}
    elif hasattr(base.ParameterScope, "NON_BASE"):
        return {"scope": base.ParameterScope.NON_BASE}
    raise missing_capability(
        package, "its ParameterSpec has neither ParameterScope.NON_BASE nor one "
        "InputParameterTarget field with NON_BASE, so no parameter can be set per fine-tuned "
        "model", supported)


def host_spec(parameter: Parameter, base: Any) -> Any:
    """``parameter`` as the ``ParameterSpec`` of ``base``'s revision of the API."""
    scope = per_model_scope(base) if parameter.per_model else {"scope": base.ParameterScope.SHARED}
    default = {} if parameter.required else {"default": parameter.default}
    return base.ParameterSpec(parameter.name, parameter.value_type, description=parameter.description,
                              **scope, **default)


@functools.lru_cache(maxsize=None)
def method_class() -> type:
    """The ``GroupMergeMethod`` subclass serving our table (made once MergeKit is loaded)."""
    from mergekit.merge_methods import base

    class SparseTaskArithmeticMerge(base.GroupMergeMethod):
        """Task arithmetic over sparsified task vectors, configured by a ``MethodInfo``."""

        def __init__(self, info: MethodInfo):
            self.info = info
            self.spec = base.MergeMethodSpec(
                name=info.name,
                pretty_name=info.pretty_name,
                reference_url=CABS_URL,
                parameters=tuple(host_spec(p, base) for p in info.parameters),
                contract=base.InputContract(base=base.BasePolicy.REQUIRED, min_non_base=1),
            )

        def validate_inputs(self, input_ids: Sequence[Hashable], base_id: Optional[Hashable] = None,
                            *, group_name: Optional[str] = None) -> None:
            check_group_inputs(self.info.name, input_ids, base_id, group_name)
            super().validate_inputs(input_ids, base_id, group_name=group_name)

        def merge_group(self, group: Any, /, **params: Any) -> torch.Tensor:
            entries = group.non_base
            inputs = GroupInputs(
                tensor_name=group.metadata.name or "<unnamed tensor>",
                base=(group.base.id, group.base.tensor),
                tuned=tuple((e.id, e.tensor) for e in entries),
                weights=tuple(params["weight"][e.id] for e in entries),
                densities=tuple(params["density"][e.id] for e in entries),
                shared={p.name: params[p.name] for p in self.info.parameters if not p.per_model},
            )
            return merge_group_tensor(self.info, inputs, torch.initial_seed())

    return SparseTaskArithmeticMerge


def register() -> tuple[str, ...]:
    """Install our MergeKit changes, then register every method of the table (idempotent)."""
    from mergekit import merge_methods

    install_changes()
    registered = {method.spec.name: method for method in merge_methods.registered_methods()}
    names = []
    for info in METHOD_TABLE:
        existing = registered.get(info.name)
        if existing is None:
            merge_methods.register(method_class()(info))
        elif not is_our_method(existing):
            raise RuntimeError(
                f"merge method name {info.name!r} is already taken by "
                f"{type(existing).__module__}.{type(existing).__name__}")
        names.append(info.name)
    return tuple(names)


def is_our_method(method: Any) -> bool:
    return isinstance(getattr(method, "info", None), MethodInfo)


# ---- planning checks ----

def own_settings(sources: Any, model: Any) -> list:
    """The settings a model sets itself: its sources that the shared ones do not include."""
    shared = {id(s) for s in sources(None)}
    return [s for s in sources(model) if id(s) not in shared]


def explain_resolution_error(resolve_parameter: Any, info: MethodInfo, spec: Any, tensor_name: str,
                             inputs: dict, sources: Any, base_model: Any, t: float) -> None:
    """Re-resolve parameter by parameter to say which one, for which model, failed."""
    by_name = {p.name: p for p in spec.parameters}
    targets = [(by_name[p.name], None) for p in info.parameters if not p.per_model]
    targets += [(by_name[p.name], model) for model in inputs if model != base_model
                for p in info.parameters if p.per_model]
    for parameter, model in targets:
        try:
            resolve_parameter(parameter, tuple(sources(model)), tensor_name=tensor_name, model=model, t=t)
        except Exception as error:  # noqa: BLE001 - re-raised with its context
            missing = "Missing required parameter" in str(error)
            raise parameter_error(spec.name, parameter.name, model, tensor_name,
                                  None if missing else error) from None


def planning_checked(resolve_parameters: Any) -> Any:
    """MergeKit's ``resolve_parameters``, checking our methods' settings as it resolves them.

    MergeKit resolves every tensor's parameters while it plans and only starts loading
    after planning succeeds; it has no hook for checks that span parameters (density with
    block_size) or for keys it silently drops.
    """
    from mergekit.parameter_resolver import resolve_parameter

    def checked(spec, *, tensor_name, inputs, sources, base_model=None, t=0):
        info = METHODS_BY_NAME.get(spec.name)
        if info is None:
            return resolve_parameters(spec, tensor_name=tensor_name, inputs=inputs,
                                      sources=sources, base_model=base_model, t=t)
        check_settings(info, sources(None), [(m, own_settings(sources, m)) for m in inputs])
        try:
            shared, per_input = resolve_parameters(
                spec, tensor_name=tensor_name, inputs=inputs, sources=sources,
                base_model=base_model, t=t)
        except Exception:
            explain_resolution_error(resolve_parameter, info, spec, tensor_name, inputs, sources,
                                     base_model, t)
            raise
        models = [m for m in per_input if m != base_model]
        check_planned(info, tensor_name, models, [per_input[m]["density"] for m in models], shared)
        return shared, per_input

    return mark_ours(checked, resolve_parameters)


# ---- optional weights with aliases ----

class ConcatenableAliases(tuple):
    """A tuple of weight aliases that a list can also be added to (``[name] + aliases``)."""

    def __radd__(self, other):
        return list(other) + list(self)


def plan_tensor_with_concatenable_aliases(plan_tensor: Callable) -> Callable:
    """MergeKit's ``MergePlanner.plan_tensor``, able to plan optional weights with aliases.

    MergeKit 0.1.5's planner checks an optional weight with ``[name] + (aliases or [])``
    while ``aliases`` is a tuple, so every merge of a BERT-family model fails with
    ``TypeError: can only concatenate list (not "tuple") to list`` before anything loads
    (``position_ids`` and friends are optional with aliases). The wrapper hands the planner
    those aliases as a tuple subclass that supports the concatenation; nothing else about
    the weight changes, and weights without aliases are untouched.
    """
    if is_ours(plan_tensor):
        return plan_tensor

    def wrapper(self, weight, weights_in, models, cfg_reader):
        if weight.optional:
            weights_in = [w.model_copy(update={"aliases": ConcatenableAliases(w.aliases)})
                          if w.aliases else w for w in weights_in]
        return plan_tensor(self, weight, weights_in, models, cfg_reader)

    return mark_ours(wrapper, plan_tensor)


# ---- the model card ----

def slice_sources(config: Any, out_slice: Any, module: Any) -> tuple:
    """(shared sources, [(model, its sources)]) of one output slice, highest precedence first."""
    from mergekit.config import ConfigReader

    reader = ConfigReader(config=config, t=0, slice_out=out_slice, module=module)
    base = out_slice.base_model or config.base_model
    tasks = [s.model for s in out_slice.sources if s.model != base]
    return (tuple(reader.parameter_sources(None)),
            [(str(m), tuple(reader.parameter_sources(m))) for m in tasks])


def install_changes() -> None:
    """Check every MergeKit object we replace, then replace them all (idempotent)."""
    global _installed
    if _installed:
        return
    import mergekit.card as card
    import mergekit.config as config
    import mergekit.merge as merge
    import mergekit.merge_methods.base as methods_base
    import mergekit.parameter_resolver as resolver
    import mergekit.plan as plan

    from mergekit_cabs.card import card_with_our_sections

    def require(obj, module, parameters, purpose):
        require_host_object(obj, module, parameters, purpose, package, supported)

    def same(bound, original, where, purpose):
        require_same_binding(bound, original, where, purpose, package, supported)

    planning = "the planning checks of mergekit-cabs's methods"
    require(resolver.resolve_parameters, "mergekit.parameter_resolver", _RESOLVE_PARAMETERS, planning)
    same(plan.resolve_parameters, resolver.resolve_parameters, "mergekit.plan.resolve_parameters",
         planning)
    require(plan.MergePlanner.plan_tensor, "mergekit.plan", _PLAN_TENSOR,
            "planning optional weights with aliases (BERT-family models)")
    card_purpose = "the model card of mergekit-cabs's merges"
    require(card.generate_card, "mergekit.card", _GENERATE_CARD, card_purpose)
    same(merge.generate_card, card.generate_card, "mergekit.merge.generate_card", card_purpose)
    require(card.is_hf, "mergekit.card", _IS_HF, card_purpose)
    require(config.MergeConfiguration.referenced_models, "mergekit.config", _REFERENCED_MODELS,
            "checking the model paths of mergekit-cabs's merges before MergeKit reads them")
    per_model_scope(methods_base)

    config.MergeConfiguration.referenced_models = paths_checked(config.MergeConfiguration.referenced_models)
    checked = planning_checked(resolver.resolve_parameters)
    resolver.resolve_parameters = plan.resolve_parameters = checked
    plan.MergePlanner.plan_tensor = plan_tensor_with_concatenable_aliases(plan.MergePlanner.plan_tensor)
    merge.generate_card = card_with_our_sections(card.generate_card, card, slice_sources)
    _installed = True


__all__ = ["IncompatibleMergeKit", "applies", "register", "install_changes", "per_model_scope",
           "host_spec", "planning_checked"]
