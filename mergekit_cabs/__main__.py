"""``python -m mergekit_cabs CONFIG OUT [mergekit-yaml flags]``."""

from mergekit_cabs.cli import merge_yaml

merge_yaml()
