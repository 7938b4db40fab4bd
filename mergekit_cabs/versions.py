"""The installed versions a result was made with: Python and the named distributions.

Host-free and cheap (``importlib.metadata`` only), so the package's own records (the
search's ``search.json``) and the benchmarks' result files use the same one.
"""

from __future__ import annotations

import platform
from importlib import metadata
from typing import Iterable, Optional


def installed_version(distribution: str) -> Optional[str]:
    """The installed version of ``distribution`` (a name as pip knows it), or ``None``."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def versions(distributions: Iterable[str]) -> dict[str, Optional[str]]:
    """``{"python": ..., distribution: its version or None, ...}``, in the order given."""
    return {"python": platform.python_version(), **{name: installed_version(name) for name in distributions}}
