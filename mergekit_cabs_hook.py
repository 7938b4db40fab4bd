"""Start-up hook of mergekit-cabs: load MergeKit merge-method plugins on demand.

``mergekit_cabs.pth`` imports this module when Python starts. It imports nothing but
``sys`` and only installs a one-shot finder; when ``mergekit.merge_methods`` is first
imported, the finder lets it load normally and then calls every entry point of the group
``mergekit.merge_methods``. A failing plugin logs a warning and MergeKit keeps working.
"""

import sys

_TARGET = "mergekit.merge_methods"
_GROUP = "mergekit.merge_methods"


def load_plugins():
    """Call each ``mergekit.merge_methods`` entry point; warn instead of raising."""
    import logging
    from importlib.metadata import entry_points

    for entry in entry_points(group=_GROUP):
        try:
            entry.load()()
        except Exception as error:  # noqa: BLE001 - a plugin must not break MergeKit
            logging.getLogger("mergekit_cabs_hook").warning(
                "merge-method plugin %r (%s) failed to load: %s: %s. MergeKit's own "
                "methods still work; `import %s` shows the full error.",
                entry.name, entry.value, type(error).__name__, error,
                entry.value.split(":")[0].split(".")[0],
            )


class _PluginFinder:
    """Finds nothing itself; wraps the real loader of ``mergekit.merge_methods``."""

    def find_spec(self, name, path=None, target=None):
        if name != _TARGET:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            find_spec = getattr(finder, "find_spec", None)
            spec = find_spec(name, path, target) if find_spec else None
            if spec is not None:
                break
        else:
            return None
        exec_module = getattr(spec.loader, "exec_module", None)
        if exec_module is None:
            return spec

        def exec_module_then_load_plugins(module):
            exec_module(module)
            load_plugins()

        try:
            spec.loader.exec_module = exec_module_then_load_plugins
        except AttributeError:
            pass
        return spec


def install():
    if _TARGET in sys.modules:
        load_plugins()
    elif not any(isinstance(f, _PluginFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PluginFinder())


install()
