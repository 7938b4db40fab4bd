"""Registration of this package's methods with every MergeKit host of ``hosts.HOSTS``.

No host has plugin discovery. ``mergekit_cabs_hook`` (imported by the
``mergekit_cabs_hook.pth`` file at interpreter start, itself importing nothing heavy) calls
every entry point of the group ``<host>.merge_methods`` once ``<host>.merge_methods`` is
imported and no host module is mid-import, for each host of the table; ours are
``register_<host>`` (``Host.entry_point``). Other plugins can declare the same groups.
``import mergekit_cabs`` arms the same triggers for this package alone, so it behaves alike
with the start-up hook switched off.
"""

from __future__ import annotations

import functools
import importlib
import sys
from typing import Any

from mergekit_cabs.hosts import HOSTS, HOSTS_BY_PACKAGE
from mergekit_cabs.hosts.guards import missing_capability


def loaded_hosts() -> tuple[str, ...]:
    """The host packages whose merge methods are imported in this process."""
    return tuple(host.package for host in HOSTS if host.trigger in sys.modules)


def adapter(reference: str) -> Any:
    """The adapter a ``module`` or ``module:attribute`` reference of the table names."""
    module, _, attribute = reference.partition(":")
    found = importlib.import_module(module)
    return getattr(found, attribute) if attribute else found


def register_with(package: str) -> tuple[str, ...]:
    """Register every method of the table with ``package`` (imported here) through the
    first of its adapters whose API it has; idempotent."""
    host = HOSTS_BY_PACKAGE[package]
    importlib.import_module(host.trigger)
    adapters = [adapter(reference) for reference in host.adapters]
    for candidate in adapters:
        if candidate.applies():
            return candidate.register()
    raise missing_capability(package, "its merge_methods has neither GroupMergeMethod nor the "
                             "MergeMethod/ConfigParameterDef API", adapters[-1].supported)


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

    for host in HOSTS:
        install(functools.partial(register_all, host.package), host.trigger)
