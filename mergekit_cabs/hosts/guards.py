"""Guards for the host internals an adapter replaces: check all, then change all.

An adapter checks every host object it replaces (the function it wraps and every name
bound to it) before it changes any; a failed check raises ``IncompatibleMergeKit`` naming
the host package and its installed version, so nothing is ever half-installed or silently
downgraded.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable

from mergekit_cabs.versions import installed_version


class IncompatibleMergeKit(RuntimeError):
    """The installed host is not one whose internals an adapter was written against."""


def is_ours(function: Callable) -> bool:
    """Whether ``function`` is one of this package's wrappers."""
    return getattr(function, "__mergekit_cabs__", False)


def mark_ours(wrapper: Callable, wrapped: Callable) -> Callable:
    """Mark ``wrapper`` as ours (wrapping it again is a no-op) and keep what it wraps."""
    wrapper.__mergekit_cabs__ = True
    wrapper.__wrapped__ = wrapped
    return wrapper


def shown_version(package: str) -> str:
    return installed_version(package) or "unknown"


def _advice(package: str, supported: str) -> str:
    return (f"mergekit-cabs is written against {package} {supported}: install it with "
            f"`pip install '{package}=={supported}'`, then merge with plain "
            f"`{package}-yaml` or `mergekit-cabs merge CONFIG OUT` (its same flags).")


def require_host_object(obj: Any, module: str, parameters: tuple[str, ...], purpose: str,
                        package: str, supported: str) -> None:
    """Raise ``IncompatibleMergeKit`` unless ``obj`` is the function of ``module`` with
    exactly ``parameters`` (or already our wrapper of it)."""
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
            f"mergekit-cabs cannot attach to {_host(package)} {shown_version(package)}: "
            f"{module}.{name} {problem}; it needs that function for {purpose}. "
            + _advice(package, supported))


def require_same_binding(bound: Any, original: Any, where: str, purpose: str, package: str,
                         supported: str) -> None:
    """``where`` must still hold the host's ``original`` (or our wrapper of it)."""
    if bound is original or is_ours(bound):
        return
    raise IncompatibleMergeKit(
        f"mergekit-cabs cannot attach to {_host(package)} {shown_version(package)}: {where} "
        f"is not the function it imports in {package} {supported}; it needs it for {purpose}. "
        + _advice(package, supported))


def missing_capability(package: str, what: str, supported: str) -> IncompatibleMergeKit:
    """The error for a host whose merge-method API lacks ``what``."""
    return IncompatibleMergeKit(
        f"mergekit-cabs cannot attach to {_host(package)} {shown_version(package)}: {what}. "
        + _advice(package, supported))


def _host(package: str) -> str:
    return "MergeKit" if package == "mergekit" else package
