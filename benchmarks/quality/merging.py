"""Merging the fine-tuned bodies through plain ``mergekit-yaml``, and the mask statistics.

Scale. Every method here computes ``base + s * D`` where ``s`` is the shared per-model
``weight`` (or, for MergeKit's ``ties``, whose default ``normalize: true`` divides the
weight out, the shared ``lambda``) and ``D`` does not depend on ``s``: the masks are chosen
from the task vectors alone and the combine step is linear (TIES's sign election is
invariant to a shared positive scale). So one merge at ``s = 1`` gives every point of the
scale search exactly; the final model of each method is merged again through
``mergekit-yaml`` at its chosen scale and compared with the rescaled one.

Processes. MergeKit's start-up (its imports pull in PEFT and transformers) takes about 7 s,
longer than merging this 23 M-parameter model, so merges that do not depend on the process
run together in one ``mergekit-multi`` process (MergeKit's own multi-merge command, one
``run_merge`` per document). The re-merge at the chosen scale is a separate plain
``mergekit-yaml`` call, so it also checks that batching changed nothing.
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import yaml
from safetensors.torch import load_file

from mergekit_cabs.kernels import conflict_aware_masks, keep_count, magnitude_mask, nm_mask
from mergekit_cabs.methods import METHOD_TABLE

from ..merge_outputs import fresh_output

MERGEKIT_YAML = str(Path(sys.executable).with_name("mergekit-yaml"))
MERGEKIT_MULTI = str(Path(sys.executable).with_name("mergekit-multi"))
# MergeKit's DARE methods draw their masks from the process-wide generator that
# --random-seed seeds once per process: inside a batch, their masks would depend on the
# merges before them. They get a process each. Our DARE variants seed a generator per
# tensor and task from the same seed, so they batch.
OWN_PROCESS_METHODS = frozenset({"dare_ties", "dare_linear"})


@dataclass(frozen=True)
class MethodRun:
    """One row of the benchmark: a merge method at a density (None: dense).

    ``options`` are extra shared parameters of the YAML (``(("normalize", True),)``), for
    the decomposition rows; they appear in the label.
    """

    method: str
    density: Optional[float]
    block_size: Optional[int] = None  # only for the n:m methods
    options: tuple = ()

    @property
    def label(self) -> str:
        name = self.method + "".join(f"[{k}={v}]" for k, v in self.options)
        return name if self.density is None else f"{name}@{self.density:g}"

    @property
    def normalized(self) -> bool:
        # MergeKit's ties normalizes by default (TIES's disjoint mean); ours do not.
        return dict(self.options).get("normalize", self.method == "ties")

    @property
    def scale_key(self) -> str:
        # A normalized combine divides the (shared) weight out: the scale is lambda.
        return "lambda" if self.normalized else "weight"


MERGEKIT_SPARSE = ("ties", "dare_ties", "dare_linear")


def method_runs(densities: Sequence[float], block_size: int) -> list[MethodRun]:
    """Dense task arithmetic, MergeKit's sparse methods and every name of ours, per density."""
    runs = [MethodRun("task_arithmetic", None)]
    for density in densities:
        runs += [MethodRun(name, density) for name in MERGEKIT_SPARSE]
        for info in METHOD_TABLE:
            nm = info.recipe.sparsifier.value == "n:m"
            runs.append(MethodRun(info.name, density, block_size if nm else None))
    return runs


def mask_twin(method: str) -> Optional[str]:
    """The method of ours with the same masks and a plain sum (a TIES combine keeps the
    masks), or None for MergeKit's own methods."""
    recipes = {info.name: info.recipe for info in METHOD_TABLE}
    recipe = recipes.get(method)
    if recipe is None:
        return None
    return next(name for name, other in recipes.items()
                if other.sparsifier == recipe.sparsifier and other.conflict_aware == recipe.conflict_aware
                and other.combine.value != "ties")


def merge_config(run: MethodRun, base: str, models: Sequence[str], scale: float) -> dict:
    """The YAML a user would write: each model at ``density``, the scale as weight or lambda."""
    per_model = {"weight": scale if run.scale_key == "weight" else 1.0}
    if run.density is not None:
        per_model["density"] = run.density
    config = {
        "merge_method": run.method,
        "base_model": base,
        "models": [{"model": m, "parameters": dict(per_model)} for m in models],
        "dtype": "float32",
    }
    shared = dict(run.options)
    if run.scale_key == "lambda":
        shared["lambda"] = scale
    if run.block_size is not None:
        shared["block_size"] = run.block_size
    if shared:
        config["parameters"] = shared
    return config


def _run(command: list[str], config_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed for {config_path}:\n{result.stderr[-3000:]}")


def run_mergekit_yaml(config: dict, workdir: Path, seed: int) -> Path:
    """Write the config and merge it with a plain ``mergekit-yaml`` subprocess; return the output
    dir, which must not exist before (``fresh_output``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, out = workdir / "config.yml", fresh_output(workdir / "merged")
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    _run([MERGEKIT_YAML, str(config_path), str(out), "--no-copy-tokenizer", "--random-seed", str(seed)],
         config_path)
    return out


def run_mergekit_multi(configs: dict[str, dict], workdir: Path, seed: int) -> dict[str, Path]:
    """Merge named configs in one ``mergekit-multi`` subprocess; return each output dir (none
    may exist before, ``fresh_output``).

    Every document is a complete config (none refers to another), so this is the same as
    one ``mergekit-yaml`` per config, minus the start-ups, for methods that do not draw
    from the process-wide generator (see ``OWN_PROCESS_METHODS``).
    """
    workdir.mkdir(parents=True, exist_ok=True)
    config_path, out = workdir / "multi.yml", workdir / "multi"
    # mergekit-multi reads every string of a document that equals a document's name as a
    # reference to that merge, so a merge named "task_arithmetic" would depend on itself.
    names = {name: f"merge-{index}" for index, name in enumerate(configs)}
    outputs = {name: fresh_output(out / names[name]) for name in configs}
    documents = [{"name": names[n], **c} for n, c in configs.items()]
    config_path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    _run([MERGEKIT_MULTI, str(config_path), "--intermediate-dir", str(out), "--no-lazy",
          "--no-copy-tokenizer", "--random-seed", str(seed)], config_path)
    return outputs


def inspect_masks(config: dict, workdir: Path, seed: int) -> dict:
    """Overall mask statistics of a config of ours, from ``mergekit-cabs inspect``.

    Returns, per task in merge order: kept share and kept-energy share of the method's masks
    and of per-tensor magnitude masks at the same density, the energy lost to CA (CA
    methods), and the pooled overlap (intersection / union over all task pairs) of both.
    """
    from mergekit_cabs.diagnostics import inspect_config

    workdir.mkdir(parents=True, exist_ok=True)
    config_path = workdir / "config.yml"
    config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The function behind `mergekit-cabs inspect CONFIG --random-seed SEED`, in this process:
    # the command's own start-up (imports) would double the time of every inspect here.
    overall = inspect_config(config_path, workdir, random_seed=seed, progress=False)["overall"]
    return {
        "overlap": {kind: overall["overlap"][kind]["all_pairs"] for kind in ("method", "magnitude")},
        "kept_share": overall["kept_share"],
        "kept_energy": overall["kept_energy"],
        "lost_to_ca": overall.get("lost_to_ca"),
    }


def task_vector_norms(base: dict, tuned: Sequence[dict]) -> list[float]:
    """``||tau_i||_2`` over every floating tensor, per task."""
    return [math.sqrt(sum(float((t[k].double() - v.double()).square().sum())
                          for k, v in base.items() if v.is_floating_point()))
            for t in tuned]


def load_body_state(path: Path) -> dict[str, torch.Tensor]:
    state = {}
    for shard in sorted(Path(path).glob("*.safetensors")):
        state.update(load_file(shard))
    return state


def merged_delta(merged: dict, base: dict) -> dict[str, torch.Tensor]:
    """``D = merged(s=1) - base`` for floating tensors (buffers such as ids are copied)."""
    return {k: (v - base[k]) if v.is_floating_point() else v for k, v in merged.items()}


def scaled_state(base: dict, delta: dict, scale: float) -> dict[str, torch.Tensor]:
    return {k: (base[k] + scale * d) if d.is_floating_point() else d for k, d in delta.items()}


def max_abs_difference(a: dict, b: dict) -> float:
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a if a[k].is_floating_point())


# ---------------------------------------------------------------- mask overlap

def task_vectors(base: dict, tuned: Sequence[dict]) -> dict[str, list[torch.Tensor]]:
    """``tau_i`` per floating tensor name, in task order."""
    return {
        name: [t[name].float() - value.float() for t in tuned]
        for name, value in base.items()
        if value.is_floating_point()
    }


def mask_sets(taus: dict, kind: str, density: float, block_size: int) -> dict[str, list[torch.Tensor]]:
    """Kept positions per tensor and task, from the package's own kernels."""
    out = {}
    for name, per_task in taus.items():
        if kind == "magnitude_linear":
            out[name] = [magnitude_mask(t, density) for t in per_task]
        elif kind == "nm_linear":
            out[name] = [nm_mask(t, keep_count(density, block_size), block_size) for t in per_task]
        elif kind == "cabs":
            n = keep_count(density, block_size)
            out[name] = conflict_aware_masks(per_task, [n] * len(per_task), block_size)
        else:
            raise ValueError(kind)
    return out


def pairwise_overlap(masks: dict) -> float:
    """Mean over task pairs of |M_i and M_j| / |M_i or M_j|, counted over all tensors."""
    n_tasks = len(next(iter(masks.values())))
    rates = []
    for i, j in itertools.combinations(range(n_tasks), 2):
        inter = sum(int((m[i] & m[j]).sum()) for m in masks.values())
        union = sum(int((m[i] | m[j]).sum()) for m in masks.values())
        rates.append(inter / union if union else 0.0)
    return sum(rates) / len(rates)


def overlap_rates(base: dict, tuned: Sequence[dict], densities: Sequence[float], block_size: int) -> dict:
    """Overlap of task masks for magnitude (per tensor), n:m without CA, and CABS.

    Counted over every tensor, and over the transformer layers alone: the word-embedding
    matrix dominates the count, and each task moves only the rows of words it has seen.
    """
    taus = task_vectors(base, tuned)
    scopes = {"": taus, " (encoder layers)": {k: v for k, v in taus.items() if ".layer." in k}}
    return {
        f"{kind}@{density:g}{scope}": pairwise_overlap(mask_sets(selected, kind, density, block_size))
        for scope, selected in scopes.items()
        for density in densities
        for kind in ("magnitude_linear", "nm_linear", "cabs")
    }
