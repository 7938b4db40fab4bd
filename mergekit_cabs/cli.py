"""Console entry points that make sure our methods are registered first."""

from __future__ import annotations

import sys


def merge_yaml(argv: list[str] | None = None) -> None:
    """``mergekit-yaml`` with every flag, our methods registered explicitly (no hook needed)."""
    import mergekit_cabs  # noqa: F401 - registers the methods
    from mergekit.scripts.run_yaml import main

    main(args=argv if argv is not None else sys.argv[1:], prog_name="mergekit-cabs-yaml")
