"""The command line every benchmark renderer shares: draw tables again from stored results.

``python -m benchmarks.<suite>.<renderer> RESULT.json ...`` writes each table beside its JSON
from the JSON alone, measuring nothing, so a committed table can be checked against (or
brought back from) the numbers it shows.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Callable, Optional, Sequence


def redraw(prog: str, doc: str, draw: Callable[[dict, Path, argparse.Namespace], object],
           argv: Optional[Sequence[str]] = None,
           configure: Callable[[argparse.ArgumentParser], None] = lambda parser: None) -> None:
    """Parse ``argv`` (the JSON files, and the options ``configure`` adds), then call
    ``draw(result, path, args)`` for each file."""
    parser = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", type=Path, nargs="+", help="result JSON files; each table is written beside its JSON")
    configure(parser)
    args = parser.parse_args(argv)
    for path in args.results:
        draw(json.loads(path.read_text()), path, args)
