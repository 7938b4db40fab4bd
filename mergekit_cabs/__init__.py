"""CABS (Conflict-Aware and Balanced Sparsification) and its baselines as MergeKit methods.

Importing this package (or ``mergekit_cabs.kernels``, the pure-torch kernels) imports
neither MergeKit nor transformers. The methods register with MergeKit on their own, the
first time MergeKit's merge methods are fully imported (see ``mergekit_cabs.discovery``),
or at once with ``register_all()``.
"""

from mergekit_cabs.discovery import register_all, register_when_mergekit_loads

__version__ = "0.1.0"

register_when_mergekit_loads()

__all__ = ["register_all", "__version__"]
