"""The rows of the whole-merge benchmark: their names, and the merge each one runs.

A row is a reference (``io_floor``, ``startup``), one of MergeKit's methods, or one of ours
as ``name[@m][:torch]``: ``@m`` the n:m block size, ``:torch`` the same merge on our torch
kernels (``MERGEKIT_CABS_TORCH_KERNELS=1``, the path of an install without numba and of
every ``--cuda`` merge).
"""

from __future__ import annotations

from mergekit_cabs.kernels import TORCH_KERNELS_ENV, Sparsifier
from mergekit_cabs.methods import METHOD_TABLE, METHODS_BY_NAME

from .inputs import Checkpoints

DENSITY = 0.25
BLOCK_SIZE = 64  # an n:m method named without @m runs at this block size
IO_FLOOR, STARTUP = "io_floor", "startup"
REFERENCES = (IO_FLOOR, STARTUP)
BUILT_INS = ("task_arithmetic", "ties", "dare_ties")
OURS = tuple(info.name for info in METHOD_TABLE)
TORCH_ROWS = ("cabs:torch", "ca_magnitude_linear:torch")
TORCH_SUFFIX = ":torch"


def nm_method_names() -> set[str]:
    """Our methods that take ``block_size``, read from the registered table."""
    return {name for name, info in METHODS_BY_NAME.items() if info.recipe.sparsifier is Sparsifier.NM}


def expand_methods(methods: str) -> list[str]:
    """Comma list -> variants ``name[@m][:torch]``; an n:m method without ``@m`` gets ``@BLOCK_SIZE``."""
    nm = nm_method_names()
    variants = []
    for name in filter(None, (m.strip() for m in methods.split(","))):
        name, torch_row, _ = name.partition(TORCH_SUFFIX)
        method, _, block = name.partition("@")
        if method not in BUILT_INS and method not in METHODS_BY_NAME:
            raise SystemExit(f"unknown method {method!r}")
        if block and method not in nm:
            raise SystemExit(f"{method} has no block_size")
        if torch_row and method in BUILT_INS:
            raise SystemExit(f"{method} is MergeKit's: it has no torch path of ours")
        block = block or (str(BLOCK_SIZE) if method in nm else "")
        variants.append(method + (f"@{block}" if block else "") + torch_row)
    return variants


def method_of(variant: str) -> str:
    return variant.partition("@")[0].partition(TORCH_SUFFIX)[0]


def is_torch_row(variant: str) -> bool:
    return variant.endswith(TORCH_SUFFIX)


def method_config(variant: str, checkpoints: Checkpoints) -> dict:
    """The merge YAML of one variant (``name[@block_size][:torch]``): density 0.25, weight 1."""
    method, _, block = variant.partition(TORCH_SUFFIX)[0].partition("@")
    parameters = {"weight": 1.0} if method == "task_arithmetic" else {"weight": 1.0, "density": DENSITY}
    config = {"merge_method": method, "base_model": checkpoints.base,
              "models": [{"model": m, "parameters": dict(parameters)} for m in checkpoints.finetuned],
              "dtype": "bfloat16"}
    if block:
        config["parameters"] = {"block_size": int(block)}
    return config


def variant_env(variant: str, env: dict) -> dict:
    """The child's environment: a ``:torch`` row forces our torch kernels."""
    return {**env, TORCH_KERNELS_ENV: "1"} if is_torch_row(variant) else env
