"""Narrow, version-guarded adaptations to MergeKit 0.1.5 where it offers no public hook.

Each one wraps a single MergeKit function, changes behaviour only for this package's
methods (or only on the input that would crash), and is skipped when the function it
wraps does not look like the 0.1.5 one.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable, Optional

LOG = logging.getLogger(__name__)

_RESOLVE_SIGNATURE = ("spec", "tensor_name", "inputs", "sources", "base_model", "t")


def _is_patched(function: Callable) -> bool:
    return getattr(function, "__mergekit_cabs__", False)


def _validation_message(error: Exception) -> str:
    errors = getattr(error, "errors", None)
    if callable(errors):
        first = errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        return f"{message} (got {first.get('input')!r})" if "got" not in message else message
    return str(error)


def _explain_resolution_error(
    spec: Any, tensor_name: str, inputs: dict, sources: Callable, base_model: Any, t: float
) -> None:
    """Re-resolve parameter by parameter to say which one, for which model, failed."""
    from mergekit.merge_methods.base import ParameterScope
    from mergekit.parameter_resolver import resolve_parameter

    from mergekit_cabs.validation import MergeConfigError

    targets = [(p, None) for p in spec.shared_parameters]
    targets += [
        (p, model)
        for model in inputs
        for p in spec.input_parameters
        if model != base_model or p.scope == ParameterScope.INPUT
    ]
    for parameter, model in targets:
        try:
            resolve_parameter(
                parameter, tuple(sources(model)), tensor_name=tensor_name, model=model, t=t
            )
        except Exception as error:  # noqa: BLE001 - re-raised with its context
            owner = f"model {model}" if model is not None else "the shared `parameters:`"
            if "Missing required parameter" in str(error):
                raise MergeConfigError(
                    f"{spec.name}: {owner} has no `{parameter.name}` (tensor {tensor_name}). "
                    f"Set it per model or once under `parameters:`, e.g. {parameter.name}: 0.25."
                ) from None
            raise MergeConfigError(
                f"{spec.name}: invalid `{parameter.name}` for {owner} (tensor "
                f"{tensor_name}): {_validation_message(error)}."
            ) from None


def install_planning_checks() -> bool:
    """Validate our methods' parameters while MergeKit plans, before any tensor is loaded.

    MergeKit 0.1.5 resolves every tensor's parameters in ``resolve_parameters`` while it
    plans and only starts loading after planning succeeds; it has no hook for checks that
    span parameters (density with block_size) or for keys it silently drops. Returns
    whether the checks are installed.
    """
    import mergekit.parameter_resolver as resolver

    original = resolver.resolve_parameters
    if _is_patched(original):
        return True
    if tuple(inspect.signature(original).parameters) != _RESOLVE_SIGNATURE:
        LOG.warning(
            "mergekit_cabs: MergeKit's resolve_parameters changed; parameter checks run "
            "when each tensor merges instead of while planning."
        )
        return False

    from mergekit_cabs.methods import METHODS_BY_NAME
    from mergekit_cabs.validation import (
        check_block_size_setting,
        check_input_shapes,
        check_keep_counts,
        check_setting_keys,
    )

    def resolve_parameters(spec, *, tensor_name, inputs, sources, base_model=None, t=0):
        info = METHODS_BY_NAME.get(spec.name)
        if info is None:
            return original(spec, tensor_name=tensor_name, inputs=inputs, sources=sources,
                            base_model=base_model, t=t)
        known = info.parameter_names
        for model in (None, *inputs):
            owner = "shared `parameters:`" if model is None else f"model {model}"
            for settings in sources(model):
                check_setting_keys(spec.name, known, settings, owner)
                if settings and "block_size" in settings:
                    check_block_size_setting(spec.name, settings["block_size"])
        try:
            shared, per_input = original(spec, tensor_name=tensor_name, inputs=inputs,
                                         sources=sources, base_model=base_model, t=t)
        except Exception:
            _explain_resolution_error(spec, tensor_name, inputs, sources, base_model, t)
            raise
        if tensor_name and base_model is not None:
            check_input_shapes(spec.name, tensor_name, base_model, _stored_shapes(inputs))
        if "block_size" in shared:
            models = [m for m in per_input if m != base_model]
            check_keep_counts(spec.name, tensor_name, models,
                              [per_input[m]["density"] for m in models], shared["block_size"])
        return shared, per_input

    resolve_parameters.__mergekit_cabs__ = True
    resolver.resolve_parameters = resolve_parameters
    plan = _loaded_module("mergekit.plan")
    if plan is not None:
        plan.resolve_parameters = resolve_parameters
    return True


def _stored_shapes(inputs: dict) -> dict:
    """Shape of each model's input tensor, read from safetensors headers (None if unknown).

    Only models MergeKit has already opened (it does so for all before planning) are
    looked at, so a check outside a merge never fetches anything.
    """
    from mergekit.io.tasks import LoaderCache

    from mergekit_cabs.validation import stored_shape

    shapes = {}
    loaders = LoaderCache().loaders
    for model, name in inputs.items():
        if model not in loaders:
            shapes[model] = None
            continue
        index = loaders[model].index
        shard = index.tensor_paths.get(name)
        shapes[model] = stored_shape(index.base_path, shard, name) if shard else None
    return shapes


def _loaded_module(name: str) -> Optional[Any]:
    import sys

    return sys.modules.get(name)


class _ConcatenableAliases(tuple):
    """A tuple of weight aliases that a list can also be added to (``[name] + aliases``)."""

    def __radd__(self, other):
        return list(other) + list(self)


def _patch_optional_alias_planning(plan_module: Any) -> bool:
    planner = getattr(plan_module, "MergePlanner", None)
    if planner is None:  # still importing; install_optional_alias_fix retries later
        return False
    original = planner.plan_tensor
    if _is_patched(original):
        return True

    def plan_tensor(self, weight, weights_in, models, cfg_reader):
        if weight.optional:
            weights_in = [
                w.model_copy(update={"aliases": _ConcatenableAliases(w.aliases)})
                if w.aliases
                else w
                for w in weights_in
            ]
        return original(self, weight, weights_in, models, cfg_reader)

    plan_tensor.__mergekit_cabs__ = True
    planner.plan_tensor = plan_tensor
    return True


def install_optional_alias_fix() -> None:
    """Let MergeKit plan models whose optional weights have aliases (BERT, RoBERTa, ...).

    MergeKit 0.1.5's planner checks an optional weight with ``[name] + (aliases or [])``
    while ``aliases`` is a tuple, so every merge of a BERT-family model fails with
    ``TypeError: can only concatenate list (not "tuple") to list`` before anything loads
    (``position_ids`` and friends are optional with aliases). The fix hands the planner
    those aliases as a tuple subclass that supports the concatenation; nothing else about
    the weight changes, and weights without aliases are untouched.
    """
    from mergekit_cabs_hook import after_import

    after_import("mergekit.plan", _patch_optional_alias_planning)
