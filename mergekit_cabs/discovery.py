"""Registration of this package's methods with MergeKit.

MergeKit 0.1.5 has no plugin discovery. ``mergekit_cabs_hook`` (imported by the
``mergekit_cabs_hook.pth`` file at interpreter start, itself importing nothing heavy) calls every
entry point of the group ``ENTRY_POINT_GROUP`` right after ``mergekit.merge_methods`` is
first imported; ours is ``register_all``. Other plugins can declare the same group.
"""

from __future__ import annotations

ENTRY_POINT_GROUP = "mergekit.merge_methods"

_registering = False


def register_all() -> tuple[str, ...]:
    """Register every method of the table (idempotent); return the registered names.

    Re-entrant calls (importing MergeKit here fires the hook, which calls back) return
    at once: the outer call finishes the work.
    """
    global _registering
    if _registering:
        return ()
    _registering = True
    try:
        from mergekit import merge_methods

        from mergekit_cabs.compat import install_optional_alias_fix, install_planning_checks
        from mergekit_cabs.methods import SparseTaskArithmeticMerge, build_methods

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
        install_planning_checks()
        install_optional_alias_fix()
        return tuple(names)
    finally:
        _registering = False
