"""One thin adapter per merge-method API; ``register_with`` picks the adapter by capability.

- ``mergekit_new``: mergekit >= 0.1.5 (``GroupMergeMethod``), both revisions of the API;
- ``old_api``: the old ``MergeMethod.make_task`` API of mergekit 0.1.4 and mergekitty.

Each adapter owns its planning checks, its card hook and its guarded patches, installed
once at its first registration. Importing this package imports no host.
"""

from __future__ import annotations

import importlib
import sys

from mergekit_cabs.hosts.guards import IncompatibleMergeKit, missing_capability

# Host package -> the module whose full import means its merge methods can be registered.
HOST_PACKAGES = ("mergekit", "mergekitty")


def trigger_module(package: str) -> str:
    return f"{package}.merge_methods"


def register_with(package: str) -> tuple[str, ...]:
    """Register every method of the table with ``package`` (imported here); idempotent."""
    from mergekit_cabs.hosts import mergekit_new, old_api

    importlib.import_module(trigger_module(package))
    if package == "mergekit" and mergekit_new.applies():
        return mergekit_new.register()
    host = {"mergekit": old_api.MERGEKIT_014, "mergekitty": old_api.MERGEKITTY}[package]
    if not host.applies():
        raise missing_capability(package, "its merge_methods has neither GroupMergeMethod nor "
                                 "the MergeMethod/ConfigParameterDef API", host.supported)
    return old_api.register(host)


def loaded_hosts() -> tuple[str, ...]:
    """The host packages whose merge methods are imported in this process."""
    return tuple(p for p in HOST_PACKAGES if trigger_module(p) in sys.modules)


__all__ = ["HOST_PACKAGES", "IncompatibleMergeKit", "loaded_hosts", "register_with", "trigger_module"]
