"""What this package's commands ask of MergeKit itself (``mergekit-cabs merge`` wraps
``mergekit-yaml``; mergekit 0.1.5 and 0.1.4): its ``mergekit-yaml`` command, and the names
of the merge methods it knows, ours included once registered."""

from __future__ import annotations

import click


def mergekit_yaml() -> click.Command:
    """MergeKit's ``mergekit-yaml`` command (imports MergeKit)."""
    from mergekit.scripts.run_yaml import main

    return main


def registered_method_names() -> list[str]:
    """Every merge method the loaded MergeKit knows, ours included (after registration)."""
    from mergekit import merge_methods

    if hasattr(merge_methods, "registered_methods"):  # mergekit >= 0.1.5
        return sorted(m.spec.name for m in merge_methods.registered_methods())
    return sorted(merge_methods.REGISTERED_MERGE_METHODS)  # mergekit 0.1.4
