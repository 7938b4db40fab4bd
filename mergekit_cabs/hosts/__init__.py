"""One thin adapter per merge-method API (``mergekit_cabs.discovery.register_with`` picks one
by capability):

- ``mergekit_new``: mergekit >= 0.1.5 (``GroupMergeMethod``), both revisions of the API;
- ``old_api``: the old ``MergeMethod.make_task`` API of mergekit 0.1.4 and mergekitty.

Each adapter owns its planning checks, its card hook and its guarded patches (``guards``),
installed once at its first registration. Importing this package imports no host.
"""

# The host packages; ``<host>.merge_methods`` is the module whose full import the start-up
# hook waits for, and the name of the host's entry-point group.
HOST_PACKAGES = ("mergekit", "mergekitty")
