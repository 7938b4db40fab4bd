"""Merge outputs that a benchmark's child processes write, and the one rule for removing them.

A benchmark merges inside a folder it owns (``mergekit_cabs.output_dir.owned_output_dir``:
new, empty, or its own previous output, which is cleared from its manifest first). Each
merge writes a path that must not exist before the merge: once the owned folder is cleared,
whatever is still there is not this run's and is refused, untouched. So an output the
benchmark removes after reading it was created, whole, by its own child process.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from mergekit_cabs.output_dir import OutputDirError


def fresh_output(path: Path) -> Path:
    """``path``, for a child process to create; refused if anything is there already."""
    if path.exists() or path.is_symlink():
        raise OutputDirError(f"{path} exists before the merge that writes it, so it is not this "
                             "benchmark's output; move it away or pass another work folder.")
    return path


def remove_output(path: Path) -> None:
    """Remove a merge output (a folder or one file) that ``fresh_output`` gave out before the merge."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
