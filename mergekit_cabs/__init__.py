"""CABS (Conflict-Aware and Balanced Sparsification) and its baselines as MergeKit methods.

Importing this package registers the methods with MergeKit. With the package installed
that also happens on its own, the first time MergeKit's merge methods are imported.
"""

from mergekit_cabs.discovery import register_all

__version__ = "0.1.0"

REGISTERED_METHODS = register_all()

__all__ = ["REGISTERED_METHODS", "register_all", "__version__"]
