"""Registration of this package's methods with MergeKit.

MergeKit 0.1.5 has no plugin discovery. ``mergekit_cabs_hook`` (imported by the
``mergekit_cabs_hook.pth`` file at interpreter start, itself importing nothing heavy) calls
every entry point of the group ``ENTRY_POINT_GROUP`` once ``mergekit.merge_methods`` is
imported and no MergeKit module is mid-import; ours is ``register_all``. Other plugins can
declare the same group. ``import mergekit_cabs`` arms the same trigger for this package
alone, so it behaves alike with the start-up hook switched off.
"""

from __future__ import annotations

ENTRY_POINT_GROUP = "mergekit.merge_methods"

_registering = False


def register_all() -> tuple[str, ...]:
    """Install our MergeKit changes, then register every method of the table (idempotent).

    Returns the registered names. Raises ``compat.IncompatibleMergeKit`` before registering
    anything when MergeKit is not the version the changes were written against.
    Re-entrant calls (from imports made here) return at once: the outer call finishes.
    """
    global _registering
    if _registering:
        return ()
    _registering = True
    try:
        from mergekit import merge_methods

        from mergekit_cabs.compat import install_mergekit_changes
        from mergekit_cabs.methods import SparseTaskArithmeticMerge, build_methods

        install_mergekit_changes()
        registered = {method.spec.name: method for method in merge_methods.registered_methods()}
        names = []
        for method in build_methods():
            existing = registered.get(method.spec.name)
            if existing is None:
                merge_methods.register(method)
            elif not isinstance(existing, SparseTaskArithmeticMerge):
                raise RuntimeError(
                    f"merge method name {method.spec.name!r} is already taken by "
                    f"{type(existing).__module__}.{type(existing).__name__}"
                )
            names.append(method.spec.name)
        return tuple(names)
    finally:
        _registering = False


def register_when_mergekit_loads() -> None:
    """Run ``register_all`` now if MergeKit's merge methods are loaded, else once they are.

    Cheap: imports nothing until MergeKit itself is imported.
    """
    from mergekit_cabs_hook import install

    install(register_all)
