"""Start-up hook of mergekit-cabs: load MergeKit merge-method plugins on demand.

``mergekit_cabs_hook.pth`` imports this module when Python starts. It imports nothing but
``os`` and ``sys`` (both already loaded by then) and only installs a one-shot finder: when
``mergekit.merge_methods`` is first imported, the finder lets it load normally and then
calls every entry point of the group ``mergekit.merge_methods``. A failing plugin logs a
warning and MergeKit keeps working.
"""

import os
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


class PostImportFinder:
    """Finds nothing itself: lets ``target`` load normally, then calls ``callback(module)``.

    One-shot: it leaves ``sys.meta_path`` as soon as ``target`` is looked up.
    """

    def __init__(self, target, callback):
        self.target = target
        self.callback = callback

    def find_spec(self, name, path=None, target=None):
        if name != self.target:
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
        callback = self.callback

        def exec_module_then_callback(module):
            exec_module(module)
            callback(module)

        try:
            spec.loader.exec_module = exec_module_then_callback
        except AttributeError:
            pass
        return spec


def after_import(target, callback):
    """Call ``callback(module)`` once ``target`` is imported (now, if it already is)."""
    module = sys.modules.get(target)
    if module is not None:
        callback(module)
    elif not any(
        isinstance(f, PostImportFinder) and f.target == target for f in sys.meta_path
    ):
        sys.meta_path.insert(0, PostImportFinder(target, callback))


# An escape hatch to tell whether a problem comes from a plugin: plugins then load only
# when imported explicitly (``import mergekit_cabs``).
if not os.environ.get("MERGEKIT_CABS_NO_HOOK"):
    after_import(_TARGET, lambda _module: load_plugins())
