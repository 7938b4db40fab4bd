"""How our commands (``mergekit-cabs merge``, ``inspect``, ``search``, ``demo``) report a wrong input.

A wrong input, ours or MergeKit's (a config error of ours, MergeKit's configuration
schema, YAML syntax, a missing config file, an unknown merge method, an output folder we may
not write), is printed as one line, ``Error: ...``, with exit status 2 (click's status for a
usage error): the message names the culprit and the fix, and a 30-60-line traceback above it
would only hide it. ``--debug`` raises it instead, traceback and all. Any other exception is
a fault of the program and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, Optional

import click

INPUT_ERROR_STATUS = 2


def input_error_types() -> tuple[type, ...]:
    """The exceptions that mean a wrong input (imported only when one is being handled)."""
    import pydantic
    import yaml

    from mergekit_cabs.hosts.guards import IncompatibleMergeKit
    from mergekit_cabs.output_dir import OutputDirError
    from mergekit_cabs.validation import MergeConfigError

    return (MergeConfigError, OutputDirError, IncompatibleMergeKit, pydantic.ValidationError,
            yaml.YAMLError)


def _schema_line(error: Any) -> str:
    """A pydantic error of MergeKit's configuration schema, as one line: where, and what."""
    errors = error.errors()
    where = errors[0]["loc"]
    for other in errors[1:]:  # a union type reports each alternative: keep what they share
        where = where[:len(os.path.commonprefix([where, other["loc"]]))]
    field = ".".join(map(str, where)) or "the top level"
    first = errors[0]
    if len(errors) == 1:
        got = "" if first["type"] == "missing" else f" (got {first.get('input')!r})"
        return f"MergeKit's config schema refuses {field}: {first['msg']}{got}"
    return f"MergeKit's config schema refuses {field}: {first.get('input')!r} is none of the forms it accepts there"


def one_line(error: BaseException, source: Optional[str] = None) -> str:
    """``error``'s message on one line, with the config file it concerns where known."""
    import pydantic
    import yaml

    prefix = f"{source}: " if source else ""
    if isinstance(error, pydantic.ValidationError):
        return prefix + _schema_line(error)
    if isinstance(error, yaml.MarkedYAMLError) and error.problem_mark is not None:
        mark = error.problem_mark
        return f"{prefix}not valid YAML: {error.problem} (line {mark.line + 1}, column {mark.column + 1})"
    return " ".join(str(error).split())


@contextlib.contextmanager
def reported(debug: bool, source: Optional[str] = None) -> Iterator[None]:
    """Within the block, a wrong input exits with one line and status 2 (``debug``: raises)."""
    try:
        yield
    except Exception as error:
        if debug or not isinstance(error, input_error_types()):
            raise
        click.echo(f"Error: {one_line(error, source)}", err=True)
        sys.exit(INPUT_ERROR_STATUS)


def check_method_name(method: Any, source: str) -> None:
    """An unknown ``merge_method`` is named with the valid names (MergeKit names none)."""
    from mergekit_cabs.hosts.mergekit_commands import registered_method_names
    from mergekit_cabs.methods import METHODS_BY_NAME
    from mergekit_cabs.validation import MergeConfigError

    names = registered_method_names()
    if not isinstance(method, str) or method in names:
        return
    ours = [n for n in METHODS_BY_NAME if n in names]
    theirs = [n for n in names if n not in METHODS_BY_NAME]
    close = difflib.get_close_matches(method, names, n=1)
    guess = f" Did you mean {close[0]!r}?" if close else ""
    raise MergeConfigError(
        f"{source}: unknown merge_method {method!r}.{guess} This package's methods: "
        f"{', '.join(ours)}; MergeKit's: {', '.join(theirs)}.")


def check_config_file(path: str) -> None:
    """The config file exists, is YAML, and names a known method (before MergeKit reads it)."""
    import yaml

    from mergekit_cabs.validation import MergeConfigError

    if not Path(path).is_file():
        raise MergeConfigError(f"config file {path} does not exist; pass the path of a "
                               "mergekit-yaml config.")
    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if isinstance(raw, dict):
        check_method_name(raw.get("merge_method"), path)
