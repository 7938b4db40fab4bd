"""Registration of this package's methods with every MergeKit host.

No host has plugin discovery. ``mergekit_cabs_hook`` (imported by the
``mergekit_cabs_hook.pth`` file at interpreter start, itself importing nothing heavy) calls
every entry point of the group ``<host>.merge_methods`` once ``<host>.merge_methods`` is
imported and no host module is mid-import, for each host of ``hosts.HOST_PACKAGES``
(mergekit, mergekitty); ours are ``register_mergekit`` and ``register_mergekitty``. Other
plugins can declare the same groups. ``import mergekit_cabs`` arms the same triggers for
this package alone, so it behaves alike with the start-up hook switched off.
"""

from __future__ import annotations

import importlib
import sys

from mergekit_cabs.hosts import HOST_PACKAGES
from mergekit_cabs.hosts.guards import missing_capability


def trigger_module(package: str) -> str:
    return f"{package}.merge_methods"


def loaded_hosts() -> tuple[str, ...]:
    """The host packages whose merge methods are imported in this process."""
    return tuple(p for p in HOST_PACKAGES if trigger_module(p) in sys.modules)


def register_with(package: str) -> tuple[str, ...]:
    """Register every method of the table with ``package`` (imported here) through the
    adapter of the API it has; idempotent."""
    from mergekit_cabs.hosts import mergekit_new, old_api

    importlib.import_module(trigger_module(package))
    if package == "mergekit" and mergekit_new.applies():
        return mergekit_new.register()
    host = {"mergekit": old_api.MERGEKIT_014, "mergekitty": old_api.MERGEKITTY}[package]
    if not host.applies():
        raise missing_capability(package, "its merge_methods has neither GroupMergeMethod nor "
                                 "the MergeMethod/ConfigParameterDef API", host.supported)
    return old_api.register(host)


_registering = False


def register_all(package: str | None = None) -> tuple[str, ...]:
    """Register every method of the table with ``package``, or without one with every host
    whose merge methods are loaded (with mergekit, imported here, if none is). Idempotent.

    Returns the registered names. Raises ``hosts.guards.IncompatibleMergeKit`` before registering
    anything with a host whose internals are not the ones its adapter was written against.
    Re-entrant calls (from imports made here) return at once: the outer call finishes.
    """
    global _registering
    if _registering:
        return ()
    _registering = True
    try:
        names: tuple[str, ...] = ()
        for host in (package,) if package else (loaded_hosts() or ("mergekit",)):
            names = register_with(host)
        return names
    finally:
        _registering = False


def register_mergekit() -> tuple[str, ...]:
    """Entry point of the group ``mergekit.merge_methods``."""
    return register_all("mergekit")


def register_mergekitty() -> tuple[str, ...]:
    """Entry point of the group ``mergekitty.merge_methods``."""
    return register_all("mergekitty")


def register_when_mergekit_loads() -> None:
    """Register with each host once its merge methods are loaded (now, if they are).

    Cheap: imports nothing until a host itself is imported.
    """
    from mergekit_cabs_hook import install

    install(register_mergekit, trigger_module("mergekit"))
    install(register_mergekitty, trigger_module("mergekitty"))
