"""MergeKit's command line as ``mergekit-cabs merge`` runs it, and the names it knows."""

from __future__ import annotations

from typing import Any


def mergekit_yaml_command() -> Any:
    """MergeKit's ``mergekit-yaml`` click command."""
    from mergekit.scripts.run_yaml import main

    return main


def registered_method_names() -> list[str]:
    """Every merge method the loaded MergeKit knows, ours included (after registration)."""
    from mergekit import merge_methods

    if hasattr(merge_methods, "registered_methods"):  # mergekit >= 0.1.5
        return sorted(m.spec.name for m in merge_methods.registered_methods())
    return sorted(merge_methods.REGISTERED_MERGE_METHODS)  # mergekit 0.1.4
