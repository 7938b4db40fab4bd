"""Start-up hook of mergekit-cabs: load merge-method plugins of every MergeKit host on demand.

``mergekit_cabs_hook.pth`` imports this module when Python starts. It imports nothing but
``os`` and ``sys`` (both already loaded by then) and puts a finder on ``sys.meta_path``
that finds nothing itself: for every ``mergekit`` module it lets the normal finders find
it and marks the loader so that the finder learns when the module has finished executing
(the same for this package's own modules).

The hosts are ``mergekit`` and its fork ``mergekitty``; each is watched on its own. A
host's plugins load once ``<host>.merge_methods`` is imported *and* no module of a host
(or of this package) is still executing: importing ``mergekit.parameter_resolver`` first imports
``mergekit.merge_methods`` half-way through ``parameter_resolver``, and a plugin that
touched ``parameter_resolver`` then would meet a partially initialized module. Looking a
module up (``importlib.util.find_spec``, as package probes do) executes nothing, so it
changes nothing: the finder stays until the plugins have loaded, then leaves.

Loading calls every entry point of the group ``<host>.merge_methods``. A failing plugin
logs a warning and the host keeps working.
"""

import os
import sys

# The packages of ``mergekit_cabs.hosts.HOSTS``, copied: this module cannot import the package
# at interpreter start (tests/test_host_table.py keeps the copy in step with the table).
HOST_PACKAGES = ("mergekit", "mergekitty")
# Each host's trigger module (``Host.trigger``), which is also the name of its entry-point group.
TRIGGERS = tuple(f"{package}.merge_methods" for package in HOST_PACKAGES)
# Modules whose half-finished import would break registration: the hosts', and ours (a
# module of ours importing a host must finish before registration imports it).
_WATCHED = HOST_PACKAGES + ("mergekit_cabs",)


def load_plugins(group):
    """Call each entry point of ``group``; warn instead of raising."""
    import logging
    from importlib.metadata import entry_points

    for entry in entry_points(group=group):
        try:
            entry.load()()
        except Exception as error:  # noqa: BLE001 - a plugin must not break MergeKit
            logging.getLogger("mergekit_cabs_hook").warning(
                "merge-method plugin %r (%s) failed to load: %s: %s. %s's own "
                "methods still work; `import %s` shows the full error.",
                entry.name, entry.value, type(error).__name__, error,
                "MergeKit" if group.startswith("mergekit.") else group.split(".")[0],
                entry.value.split(":")[0].split(".")[0],
            )


def _is_watched(name):
    return any(name == p or name.startswith(p + ".") for p in _WATCHED)


def mergekit_is_importing():
    """Whether any host (or mergekit-cabs) module has started executing and not yet
    finished."""
    for name, module in list(sys.modules.items()):
        if _is_watched(name) and getattr(getattr(module, "__spec__", None), "_initializing", False):
            return True
    return False


class PluginLoader:
    """Finds nothing itself; once a callback's trigger module is loaded and no host module
    is mid-import, calls that callback once; leaves ``sys.meta_path`` when none is left."""

    def __init__(self):
        self.callbacks = []  # (trigger module, callback)

    def take_ready(self):
        """The callbacks whose trigger is loaded, removed from those still waiting."""
        if mergekit_is_importing():
            return []
        ready = [c for c in self.callbacks if c[0] in sys.modules]
        self.callbacks = [c for c in self.callbacks if c not in ready]
        return [callback for _, callback in ready]

    def fire_if_ready(self):
        callbacks = self.take_ready()
        if not callbacks:
            return
        if not self.callbacks and self in sys.meta_path:
            sys.meta_path.remove(self)
        # Every callback runs even if one fails; the first failure is raised after them.
        failure = None
        for callback in callbacks:
            try:
                callback()
            except Exception as error:  # noqa: BLE001 - re-raised below
                failure = failure or error
        if failure is not None:
            raise failure

    def find_spec(self, name, path=None, target=None):
        if not self.callbacks or not _is_watched(name):
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_module_then_check(module):
            exec_module(module)
            # importlib clears ``_initializing`` only after this returns.
            spec._initializing = False
            self.fire_if_ready()

        try:
            # The loader is this spec's own (path finders make one per lookup): a spec
            # that is looked up and never executed leaves no trace.
            spec.loader.exec_module = exec_module_then_check
        except AttributeError:
            pass
        return spec


def install(callback, trigger):
    """Call ``callback()`` once module ``trigger`` (a host's merge methods) is imported in
    full (now, if it already is). One finder serves every callback."""
    loader = next((f for f in sys.meta_path if isinstance(f, PluginLoader)), None)
    if loader is None:
        loader = PluginLoader()
        sys.meta_path.insert(0, loader)
    loader.callbacks.append((trigger, callback))
    loader.fire_if_ready()


def _plugins_of(group):
    return lambda: load_plugins(group)


# An escape hatch to tell whether a problem comes from a plugin: plugins then load only
# when imported explicitly (``import mergekit_cabs``).
if not os.environ.get("MERGEKIT_CABS_NO_HOOK"):
    for _trigger in TRIGGERS:
        install(_plugins_of(_trigger), _trigger)
