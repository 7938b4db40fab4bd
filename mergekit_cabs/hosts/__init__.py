"""One thin adapter per merge-method API, and ``HOSTS``, the one table of hosts.

- ``mergekit_new``: mergekit >= 0.1.5 (``GroupMergeMethod``), both revisions of the API;
- ``old_api``: the old ``MergeMethod.make_task`` API of mergekit 0.1.4 and mergekitty.

An adapter is a module or an object with ``package``, ``supported`` (the release whose
internals it follows, named in its errors), ``applies()`` (whether the loaded package has its
API) and ``register()`` (install its changes once, then register every method; idempotent).
Each adapter owns its planning checks, its card hook and its guarded patches (``guards``).

``HOSTS`` is read by ``mergekit_cabs.discovery`` (which adapter registers with a loaded
host) and, through its copy of the packages, by the start-up hook ``mergekit_cabs_hook``,
which cannot import this package at interpreter start; ``tests/test_host_table.py`` keeps
that copy and pyproject's entry-point groups in step with the table. Importing this package
imports no host and no adapter: the table names adapters as entry points do,
``module:attribute``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Host:
    """A package with a merge-method API: its import name and the adapters that may serve
    it, tried in order, the first whose ``applies()`` holds registering (``module`` or
    ``module:attribute``)."""

    package: str
    adapters: tuple[str, ...]

    @property
    def trigger(self) -> str:
        """The module whose full import the start-up hook waits for; also the name of the
        host's entry-point group."""
        return f"{self.package}.merge_methods"

    @property
    def entry_point(self) -> str:
        """Our entry point in the group ``trigger``: registers every method with this host."""
        return f"mergekit_cabs.discovery:register_{self.package}"


HOSTS = (
    Host("mergekit", ("mergekit_cabs.hosts.mergekit_new", "mergekit_cabs.hosts.old_api:MERGEKIT_014")),
    Host("mergekitty", ("mergekit_cabs.hosts.old_api:MERGEKITTY",)),
)
HOSTS_BY_PACKAGE = {host.package: host for host in HOSTS}
