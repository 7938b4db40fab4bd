"""Output folders that a tool may clear: only what that tool itself wrote there.

A tool that writes a fresh output on every run (the demo, the benchmarks) calls
``owned_output_dir(path, tool)`` around its work. The folder may be new, empty, or a previous
output of the same tool; anything else is refused before anything is written. A previous
output is cleared file by file from the manifest that the tool left in it, so a file the user
put there, before or after, is never touched. The current directory, or any folder holding
it, is refused outright.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Iterator

MANIFEST = ".mergekit-cabs-output.json"


class OutputDirError(ValueError):
    """An output folder that the tool may not write into or clear."""


def _files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()} - {MANIFEST}


def _read_manifest(root: Path, tool: str) -> list[str]:
    manifest = root / MANIFEST
    hint = f"choose a new or empty folder, or remove {root} yourself"
    if not manifest.is_file():
        raise OutputDirError(f"{tool}: output folder {root} is not empty and was not written by "
                             f"{tool}; {hint}.")
    try:
        record = json.loads(manifest.read_text())
        files = record["files"]
        owner = record["tool"]
    except (ValueError, KeyError, TypeError) as error:
        raise OutputDirError(f"{tool}: {manifest} is unreadable ({error}); {hint}.") from None
    if owner != tool:
        raise OutputDirError(f"{tool}: output folder {root} was written by {owner}, not {tool}; {hint}.")
    return [f for f in files if isinstance(f, str)]


def _remove_listed(root: Path, files: list[str]) -> None:
    """Delete the listed files, then every folder left empty below ``root``."""
    for name in files:
        if Path(name).is_absolute() or ".." in Path(name).parts:
            continue  # a manifest we wrote names nothing outside its folder; this one was edited
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    for folder in sorted((p for p in root.rglob("*") if p.is_dir() and not p.is_symlink()),
                         key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only succeeds on an empty folder


def prepare_output_dir(path: str | os.PathLike, tool: str) -> tuple[Path, set[str]]:
    """Check ``path`` and clear this tool's previous output there.

    Returns the resolved folder and the files in it that are not ours (kept as they are).
    """
    root = Path(path).resolve()
    cwd = Path.cwd().resolve()
    if root == cwd or root in cwd.parents:
        raise OutputDirError(f"{tool}: output folder {root} is the current directory or holds it; "
                             "pass a new folder, e.g. --out demo-output.")
    if root.exists() and not root.is_dir():
        raise OutputDirError(f"{tool}: output path {root} is a file, not a folder; pass a folder.")
    if root.is_dir() and any(root.iterdir()):
        _remove_listed(root, _read_manifest(root, tool))
    root.mkdir(parents=True, exist_ok=True)
    return root, _files_under(root)


def record_output(root: Path, tool: str, foreign: set[str]) -> None:
    """Write the manifest: every file under ``root`` that was not there before (``foreign``)."""
    files = sorted(_files_under(root) - foreign)
    (root / MANIFEST).write_text(json.dumps({"tool": tool, "files": files}, indent=1) + "\n")


@contextlib.contextmanager
def owned_output_dir(path: str | os.PathLike, tool: str) -> Iterator[Path]:
    """The folder ``path``, cleared of ``tool``'s previous output; what the body writes there is
    recorded as ``tool``'s, even if the body fails, so a re-run can clear it and nothing else."""
    root, foreign = prepare_output_dir(path, tool)
    try:
        yield root
    finally:
        record_output(root, tool, foreign)
