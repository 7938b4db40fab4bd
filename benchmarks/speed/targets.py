"""The whole-merge benchmark's targets, decided per model family from its rows' ratios.

Wall time on the default install: ``cabs`` against MergeKit's ``task_arithmetic`` (tighter on
the 7B-shaped family), every other method of ours against ``task_arithmetic`` and against
MergeKit's ``ties``; peak memory: every row of ours, the ``:torch`` rows included, against
``task_arithmetic``'s.
"""

from __future__ import annotations

from .variants import BUILT_INS, REFERENCES, is_torch_row, method_of

CABS_VS_TASK_ARITHMETIC = {"7b": 0.90}  # any other family: 1.0
OURS_VS_TASK_ARITHMETIC = 1.00
OURS_VS_TIES = 0.25
RSS_VS_TASK_ARITHMETIC = 1.10


def cabs_limit(slug: str) -> float:
    """``cabs``'s wall limit, as a multiple of ``task_arithmetic``'s, on family ``slug``."""
    return CABS_VS_TASK_ARITHMETIC.get(slug, 1.0)


def target_checks(rows: dict, slug: str) -> list[dict]:
    """The targets that the rows of family ``slug`` can decide, each with its measured ratio:
    wall on the default path (the ``:torch`` rows have no wall target), memory on every row."""
    checks = []
    ours = [v for v in rows if method_of(v) not in BUILT_INS + REFERENCES]
    default_path = [v for v in ours if not is_torch_row(v)]

    def check(target, ratio, limit):
        if ratio is not None:
            checks.append({"target": target, "ratio": ratio, "limit": limit, "met": ratio <= limit})

    for variant in default_path:
        limit = cabs_limit(slug) if method_of(variant) == "cabs" else OURS_VS_TASK_ARITHMETIC
        check(f"{variant} <= {limit}x task_arithmetic wall", rows[variant]["vs_task_arithmetic"], limit)
    for variant in default_path:
        check(f"{variant} <= {OURS_VS_TIES}x ties wall", rows[variant]["vs_ties"], OURS_VS_TIES)
    for variant in ours:
        check(f"{variant} peak RSS <= {RSS_VS_TASK_ARITHMETIC}x task_arithmetic",
              rows[variant]["rss_vs_task_arithmetic"], RSS_VS_TASK_ARITHMETIC)
    return checks
