"""Everything this package changes in MergeKit 0.1.5, installed in one place.

``install_mergekit_changes`` runs once, at registration (``discovery.register_all``). It
first checks every MergeKit object it replaces (the function it wraps and every name bound
to it), and only when all checks pass installs all changes; a failed check raises
``IncompatibleMergeKit`` naming the MergeKit version, so nothing is ever half-installed or
silently downgraded. Each change is listed, with the upstream change that would retire it,
in ``docs/mergekit-integration.md``:

1. planning checks (``mergekit.parameter_resolver.resolve_parameters``, also bound in
   ``mergekit.plan``): checks that span parameters, unknown keys, ``block_size`` rules;
2. optional weights with aliases (``mergekit.plan.MergePlanner.plan_tensor``): BERT-family
   models plan at all;
3. the model card (``mergekit.merge.generate_card``, bound from ``mergekit.card``): our
   paragraph, tags and citation; ``mergekit.card.is_hf`` answers "local" offline, only
   while our card is made.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, Callable

LOG = logging.getLogger(__name__)

MERGEKIT_VERSION_SUPPORTED = "0.1.5"

_RESOLVE_PARAMETERS = ("spec", "tensor_name", "inputs", "sources", "base_model", "t")
_PLAN_TENSOR = ("self", "weight", "weights_in", "models", "cfg_reader")
_GENERATE_CARD = ("config", "config_yaml", "name")
_IS_HF = ("path",)

_installed = False


class IncompatibleMergeKit(RuntimeError):
    """The installed MergeKit is not the one this package's changes were written against."""


def is_ours(function: Callable) -> bool:
    """Whether ``function`` is one of this package's wrappers."""
    return getattr(function, "__mergekit_cabs__", False)


def _mergekit_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mergekit")
    except PackageNotFoundError:
        return "unknown"


def require_mergekit_object(obj: Any, module: str, parameters: tuple[str, ...], purpose: str) -> None:
    """Raise ``IncompatibleMergeKit`` unless ``obj`` is the function of ``module`` with
    exactly ``parameters`` that MergeKit 0.1.5 has (or already our wrapper of it)."""
    if is_ours(obj):
        return
    problem = None
    if not callable(obj):
        problem = "is missing"
    elif getattr(obj, "__module__", None) != module:
        problem = f"is defined in {getattr(obj, '__module__', '?')}, not {module}"
    elif tuple(inspect.signature(obj).parameters) != parameters:
        problem = f"takes {tuple(inspect.signature(obj).parameters)}, not {parameters}"
    if problem:
        name = getattr(obj, "__qualname__", "the function")
        raise IncompatibleMergeKit(
            f"mergekit-cabs cannot attach to MergeKit {_mergekit_version()}: {module}.{name} "
            f"{problem}; it needs that function for {purpose}. mergekit-cabs is written against "
            f"MergeKit {MERGEKIT_VERSION_SUPPORTED}: install it with "
            f"`pip install 'mergekit=={MERGEKIT_VERSION_SUPPORTED}'`, then merge with plain "
            "`mergekit-yaml` or `mergekit-cabs merge CONFIG OUT` (its same flags)."
        )


def require_same_binding(bound: Any, original: Any, where: str, purpose: str) -> None:
    """``where`` must still hold MergeKit's ``original`` (or our wrapper of it)."""
    if bound is original or is_ours(bound):
        return
    raise IncompatibleMergeKit(
        f"mergekit-cabs cannot attach to MergeKit {_mergekit_version()}: {where} is not the "
        f"function it imports in MergeKit {MERGEKIT_VERSION_SUPPORTED}; it needs it for "
        f"{purpose}. Install `pip install 'mergekit=={MERGEKIT_VERSION_SUPPORTED}'`, then merge "
        "with plain `mergekit-yaml` or `mergekit-cabs merge CONFIG OUT`."
    )


def install_mergekit_changes() -> None:
    """Check every MergeKit object we replace, then replace them all (idempotent)."""
    global _installed
    if _installed:
        return
    import mergekit.card as card
    import mergekit.merge as merge
    import mergekit.parameter_resolver as resolver
    import mergekit.plan as plan

    planning = "the planning checks of mergekit-cabs's methods"
    require_mergekit_object(resolver.resolve_parameters, "mergekit.parameter_resolver",
                            _RESOLVE_PARAMETERS, planning)
    require_same_binding(plan.resolve_parameters, resolver.resolve_parameters,
                         "mergekit.plan.resolve_parameters", planning)
    require_mergekit_object(plan.MergePlanner.plan_tensor, "mergekit.plan", _PLAN_TENSOR,
                            "planning optional weights with aliases (BERT-family models)")
    card_purpose = "the model card of mergekit-cabs's merges"
    require_mergekit_object(card.generate_card, "mergekit.card", _GENERATE_CARD, card_purpose)
    require_same_binding(merge.generate_card, card.generate_card,
                         "mergekit.merge.generate_card", card_purpose)
    require_mergekit_object(card.is_hf, "mergekit.card", _IS_HF, card_purpose)

    from mergekit_cabs.card import card_with_our_sections
    from mergekit_cabs.validation import planning_checked

    checked = planning_checked(resolver.resolve_parameters)
    resolver.resolve_parameters = plan.resolve_parameters = checked
    plan.MergePlanner.plan_tensor = plan_tensor_with_concatenable_aliases(
        plan.MergePlanner.plan_tensor)
    merge.generate_card = card_with_our_sections(card.generate_card, card)
    _installed = True


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
            weights_in = [
                w.model_copy(update={"aliases": ConcatenableAliases(w.aliases)})
                if w.aliases
                else w
                for w in weights_in
            ]
        return plan_tensor(self, weight, weights_in, models, cfg_reader)

    wrapper.__mergekit_cabs__ = True
    wrapper.__wrapped__ = plan_tensor
    return wrapper
