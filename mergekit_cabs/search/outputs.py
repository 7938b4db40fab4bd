"""A search's files in its output folder: ``merge.yml``, ``search.json``, ``search.png``.

``DIR/merge.yml`` is the input config with the best weights, which plain ``mergekit-yaml``
merges as it is (comments of the input are not kept; a comment above it records how the
weights were found); ``DIR/search.json`` holds bounds, start, best, every evaluation,
settings, kept shares, versions and wall time; ``DIR/search.png`` (with matplotlib) the
fitness and per-task losses. Files of an earlier search there are replaced; no other file
is touched, and a DIR whose merge.yml or search.json no search wrote is refused.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.result import OUTPUT_KIND, SearchResult

OUTPUT_FILES = ("merge.yml", "search.json", "search.png")


def check_output_dir(out_dir: Union[str, Path]) -> Path:
    """``out_dir``, refusing one that holds a merge.yml or search.json of something else."""
    out = Path(out_dir)
    marker = out / "search.json"
    ours = False
    if marker.is_file():
        try:
            ours = json.loads(marker.read_text()).get("kind") == OUTPUT_KIND
        except (ValueError, AttributeError):
            ours = False
    foreign = [name for name in OUTPUT_FILES if (out / name).exists() and not ours]
    if foreign:
        raise SearchInputError(f"--out {out} already holds {', '.join(foreign)} that no search wrote; "
                                    "choose another folder (the search replaces only its own files).")
    return out


def write_outputs(result: SearchResult, out_dir: Union[str, Path]) -> list[Path]:
    """merge.yml, search.json and (with matplotlib) search.png in ``out_dir``."""
    out = check_output_dir(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "merge.yml").write_text(result.merge_config)
    (out / "search.json").write_text(json.dumps(result.to_json(), indent=2) + "\n")
    written = [out / "merge.yml", out / "search.json"]
    figure = write_figure(result, out / "search.png")
    return written + ([figure] if figure else [])


def write_figure(result: SearchResult, path: Path) -> Optional[Path]:
    """Fitness and per-task loss over the evaluations; None without matplotlib."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        return None
    main = [r for r in result.evaluations if r.stage != "first"]
    figure = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    indices = [r.index for r in main]
    top.plot(indices, [r.fitness for r in main], ".", label="fitness F")
    running = [min(r.fitness for r in main[:j + 1]) for j in range(len(main))]
    top.plot(indices, running, "-", label="best so far")
    top.set_ylabel("F (lower is better)")
    top.legend(fontsize=8)
    for task, name in enumerate(result.task_names):
        bottom.plot(indices, [r.losses[task] for r in main], ".-", label=Path(name).name)
    bottom.set_xlabel("evaluation")
    bottom.set_ylabel("loss")
    bottom.legend(fontsize=8)
    figure.suptitle(f"{result.merge_method}: weight search", fontsize=10)
    figure.savefig(path, dpi=110)
    return path
