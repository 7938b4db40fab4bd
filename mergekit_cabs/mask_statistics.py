"""The statistics ``mergekit-cabs inspect`` reports of a merge's masks (pure torch).

The masks of one tensor at a time are reduced to sums (``MaskStatistics``), so memory is
bounded by one tensor group, not by the model.

Definitions (``M_i`` a mask of task ``i``, ``tau_i`` its task vector; counts are pooled
over a region, i.e. one layer or one tensor outside the layers, or the whole model):

- overlap ``O_ij = |M_i & M_j| / |M_i | M_j|``; "all pairs" pools the counts of every
  pair ``i < j``: ``sum |M_i & M_j| / sum |M_i | M_j|``.
- balance: the kept share of a unit is ``kept / size``; its coefficient of variation
  ``CV = std / mean`` (population std) is taken over the units: regions, rows (along the
  last dim of every tensor with >= 2 dims) and full blocks of ``m`` consecutive elements
  of the flattened tensor (``m`` the method's ``block_size``, else the n:m default).
- kept energy ``E_i = sum (M_i * tau_i)^2 / sum tau_i^2``. For conflict-aware methods
  ``lost_i = E_i(task i's mask without CA) - E_i(its CA mask)``: what task ``i`` gave up
  to the tasks before it.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from mergekit_cabs.kernels import Recipe, magnitude_mask, task_masks
from mergekit_cabs.strategies import BLOCK_SIZE

# Mask kinds: the configured method's, plain magnitude at the same densities, and (for
# conflict-aware methods) each task's own mask with CA switched off.
METHOD, MAGNITUDE, WITHOUT_CA = "method", "magnitude", "without_ca"

_LAYER_PREFIX = re.compile(r"^(.*?\.\d+)\.")


def region_of(tensor_name: str) -> str:
    """The layer a tensor belongs to (``model.layers.3``), or the tensor's own name."""
    match = _LAYER_PREFIX.match(tensor_name)
    return match.group(1) if match else tensor_name


def default_block_size() -> int:
    """The n:m default ``block_size``: the blocks used for the balance of every method."""
    return BLOCK_SIZE.default


def ratio(numerator: float, denominator: float) -> Optional[float]:
    """``numerator / denominator``, None where the denominator is 0 (nothing to compare)."""
    return float(numerator) / float(denominator) if denominator else None


# ---- statistics of one tensor's masks (pure torch) ----

def pairwise_intersections(masks: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[k, k]`` int64 matrix of ``|M_i & M_j|`` (the diagonal is ``|M_i|``)."""
    k = len(masks)
    counts = torch.zeros(k, k, dtype=torch.int64)
    for i in range(k):
        counts[i, i] = int(masks[i].sum())
        for j in range(i + 1, k):
            counts[i, j] = counts[j, i] = int((masks[i] & masks[j]).sum())
    return counts


def kept_energies(masks: Sequence[torch.Tensor], taus: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[k]`` float64 of ``sum (M_i * tau_i)^2``."""
    return torch.tensor([float((tau.square() * mask).sum(dtype=torch.float64))
                         for mask, tau in zip(masks, taus)], dtype=torch.float64)


def row_shares(mask: torch.Tensor) -> torch.Tensor:
    """Kept share of every row (last dim) of a tensor with >= 2 dims; empty otherwise."""
    if mask.dim() < 2 or mask.numel() == 0:
        return torch.empty(0, dtype=torch.float64)
    rows = mask.reshape(-1, mask.shape[-1])
    return rows.sum(dim=1, dtype=torch.float64) / rows.shape[1]


def block_shares(mask: torch.Tensor, block_size: int) -> torch.Tensor:
    """Kept share of every full block of ``block_size`` in the flattened tensor."""
    flat = mask.reshape(-1)
    full = (flat.numel() // block_size) * block_size
    return flat[:full].view(-1, block_size).sum(dim=1, dtype=torch.float64) / block_size


# ---- running sums over the model ----

@dataclass
class Moments:
    """Count, sum and sum of squares of values: enough for their mean and spread."""

    count: int = 0
    total: float = 0.0
    total_squares: float = 0.0

    def add(self, values: torch.Tensor) -> None:
        self.count += values.numel()
        self.total += float(values.sum())
        self.total_squares += float(values.square().sum())

    def coefficient_of_variation(self) -> Optional[float]:
        """``std / mean`` with the population std; None for no values or a zero mean."""
        if not self.count or not self.total:
            return None
        mean = self.total / self.count
        variance = max(self.total_squares / self.count - mean * mean, 0.0)
        return math.sqrt(variance) / mean


@dataclass
class RegionTally:
    """Sums over the tensors of one region (or the whole model) for ``k`` tasks."""

    tasks: int
    elements: int = 0
    energy: torch.Tensor = field(init=False)  # [k] sum tau_i^2
    shared: dict = field(default_factory=dict)  # kind -> [k, k] |M_i & M_j|
    kept_energy: dict = field(default_factory=dict)  # kind -> [k] sum (M_i tau_i)^2

    def __post_init__(self):
        self.energy = torch.zeros(self.tasks, dtype=torch.float64)

    def add_tensor(self, taus: Sequence[torch.Tensor]) -> None:
        self.elements += taus[0].numel()
        self.energy += torch.tensor([float(t.square().sum(dtype=torch.float64)) for t in taus],
                                    dtype=torch.float64)

    def add_masks(self, kind: str, shared: torch.Tensor, kept_energy: torch.Tensor) -> None:
        self.shared[kind] = self.shared.get(kind, 0) + shared
        self.kept_energy[kind] = self.kept_energy.get(kind, 0) + kept_energy

    def overlap(self, kind: str, models: Sequence[str]) -> dict:
        """Intersection over union for every pair and pooled over all pairs."""
        shared = self.shared[kind]
        pairs, inter_total, union_total = [], 0, 0
        for i in range(self.tasks):
            for j in range(i + 1, self.tasks):
                inter = int(shared[i, j])
                union = int(shared[i, i] + shared[j, j]) - inter
                inter_total, union_total = inter_total + inter, union_total + union
                pairs.append({"models": [models[i], models[j]], "overlap": ratio(inter, union)})
        return {"all_pairs": ratio(inter_total, union_total), "pairs": pairs}

    def kept_shares(self, kind: str) -> list:
        return [ratio(int(self.shared[kind][i, i]), self.elements) for i in range(self.tasks)]

    def kept_energy_shares(self, kind: str) -> list:
        return [ratio(self.kept_energy[kind][i], self.energy[i]) for i in range(self.tasks)]

    def report(self, models: Sequence[str], conflict_aware: bool) -> dict:
        kinds = (METHOD, MAGNITUDE)
        result = {
            "elements": self.elements,
            "overlap": {kind: self.overlap(kind, models) for kind in kinds},
            "kept_share": {kind: self.kept_shares(kind) for kind in kinds},
            "kept_energy": {kind: self.kept_energy_shares(kind) for kind in kinds},
        }
        if conflict_aware:
            own = self.kept_energy_shares(WITHOUT_CA)
            result["kept_energy"][WITHOUT_CA] = own
            result["lost_to_ca"] = [None if a is None or b is None else a - b
                                    for a, b in zip(own, result["kept_energy"][METHOD])]
        return result


class MaskStatistics:
    """Accumulates every statistic of the report, one tensor at a time."""

    def __init__(self, recipe: Recipe, models: Sequence[str], balance_block_size: int):
        self.recipe = recipe
        self.models = list(models)
        self.balance_block_size = balance_block_size
        self.total = RegionTally(len(models))
        self.regions: dict[str, RegionTally] = {}
        self.balance = {kind: [{"rows": Moments(), "blocks": Moments()} for _ in models]
                        for kind in (METHOD, MAGNITUDE)}

    def kinds(self) -> tuple[str, ...]:
        return (METHOD, MAGNITUDE, WITHOUT_CA) if self.recipe.conflict_aware else (METHOD, MAGNITUDE)

    def masks(self, kind: str, taus: Sequence[torch.Tensor], densities: Sequence[float],
              block_size: Optional[int], seeds: Sequence[int]) -> list[torch.Tensor]:
        """The masks of one kind, from the kernels the merge uses."""
        if kind == MAGNITUDE:
            return [magnitude_mask(t, d) for t, d in zip(taus, densities)]
        recipe = self.recipe
        if kind == WITHOUT_CA:
            recipe = dataclasses.replace(recipe, conflict_aware=False)
        return task_masks(recipe, taus, densities, block_size or 1, seeds)

    def add(self, name: str, taus: Sequence[torch.Tensor], densities: Sequence[float],
            block_size: Optional[int], seeds: Sequence[int]) -> None:
        region = self.regions.setdefault(region_of(name), RegionTally(len(self.models)))
        for tally in (region, self.total):
            tally.add_tensor(taus)
        for kind in self.kinds():
            # One kind at a time: k masks in memory, not 3k.
            masks = self.masks(kind, taus, densities, block_size, seeds)
            shared, energy = pairwise_intersections(masks), kept_energies(masks, taus)
            for tally in (region, self.total):
                tally.add_masks(kind, shared, energy)
            if kind in self.balance:
                for moments, mask in zip(self.balance[kind], masks):
                    moments["rows"].add(row_shares(mask))
                    moments["blocks"].add(block_shares(mask, self.balance_block_size))
            del masks

    def balance_report(self) -> dict:
        """CV of kept shares across regions, rows and blocks, per task, per mask kind."""
        report = {}
        for kind, per_task in self.balance.items():
            rows = []
            for index, moments in enumerate(per_task):
                across_regions = Moments()
                across_regions.add(torch.tensor(
                    [float(t.shared[kind][index, index]) / t.elements
                     for t in self.regions.values() if t.elements], dtype=torch.float64))
                rows.append({"model": self.models[index],
                             "layers": across_regions.coefficient_of_variation(),
                             "rows": moments["rows"].coefficient_of_variation(),
                             "blocks": moments["blocks"].coefficient_of_variation()})
            report[kind] = rows
        return report

    def report(self) -> dict:
        ca = self.recipe.conflict_aware
        return {
            "overall": self.total.report(self.models, ca),
            "layers": [{"name": name, **tally.report(self.models, ca)}
                       for name, tally in self.regions.items()],
            "balance": self.balance_report(),
        }


def keep_count_summary(recipe: Recipe, tensors: Sequence[tuple[str, Any]]) -> dict:
    """From each tensor's ``keep_counts.TensorKeepCounts``: are the masks disjoint by their
    counts (conflict-aware methods only; None otherwise), and where not, by how much."""
    over = [(name, counts) for name, counts in tensors if counts.excess]
    kept = sum(counts.kept for _, counts in tensors)
    return {
        "disjoint": (not over) if recipe.conflict_aware else None,
        "overlapping_tensors": [name for name, _ in over],
        "excess_entries": sum(counts.excess for _, counts in over),
        "kept_entries": kept,
        "example": None if not over else {
            "tensor": over[0][0], "counts": list(over[0][1].counts),
            "block_size": over[0][1].block_size},
    }


def keep_count_sentence(report: dict) -> str:
    """The keep-count verdict of a report in words."""
    counts = report["keep_counts"]
    if counts["disjoint"] is None:
        return "masks chosen independently per model: overlap is not ruled out"
    if counts["disjoint"]:
        return ("keep counts fit the block in every tensor (sum n_i <= m): the masks of "
                "different models are disjoint")
    example = counts["example"]
    return (f"keep counts exceed the block in {len(counts['overlapping_tensors'])} of "
            f"{report['tensors']} tensors (e.g. {example['tensor']}: "
            f"{' + '.join(map(str, example['counts']))} = {sum(example['counts'])} > "
            f"{example['block_size']}): up to {counts['excess_entries']:,} kept entries "
            f"({counts['excess_entries'] / counts['kept_entries']:.2%}) share positions with "
            "an earlier model's")
