"""The registered merge methods: one MergeKit method class and the table of its names.

``METHOD_TABLE`` is the single source of truth: registration, the README table, the model
card and the validation messages all read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Optional, Sequence

import torch
from pydantic import AfterValidator
from typing_extensions import Annotated

from mergekit.merge_methods.base import (
    BasePolicy,
    GroupMergeMethod,
    InputContract,
    MergeMethodSpec,
    ParameterScope,
    ParameterSpec,
    TensorGroup,
)

from mergekit_cabs import merge_log
from mergekit_cabs.kernels import Combine, MergeArgs, Recipe, Sparsifier, merge_tensor, tensor_seed
from mergekit_cabs.validation import (
    MergeConfigError,
    agreed_buffer,
    check_block_size,
    check_density,
    check_finite,
    check_group_inputs,
    check_keep_counts,
    check_tensors_finite,
)

CABS_URL = "https://arxiv.org/abs/2503.01874"

# Elements per chunk of the n:m merge: blocks are independent, so peak memory is bounded
# by this, not by the tensor, at no cost to the result.
CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class MethodInfo:
    """One registered name: its recipe and how the paper and the card call it."""

    name: str
    recipe: Recipe
    pretty_name: str
    paper_row: str

    @property
    def parameter_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in parameter_specs(self.recipe))


_NM, _MAG, _RND = Sparsifier.NM, Sparsifier.MAGNITUDE, Sparsifier.RANDOM
_SUM, _TIES = Combine.SUM, Combine.TIES

METHOD_TABLE: tuple[MethodInfo, ...] = (
    MethodInfo("cabs", Recipe(_NM, True, _SUM), "CABS", "CABS"),
    MethodInfo("cabs_ties", Recipe(_NM, True, _TIES), "CABS with TIES", "TIES + CABS"),
    MethodInfo("nm_linear", Recipe(_NM, False, _SUM), "n:m Task Arithmetic", "BS only (TA + BS)"),
    MethodInfo("nm_ties", Recipe(_NM, False, _TIES), "n:m TIES", "TIES + BS"),
    MethodInfo("magnitude_linear", Recipe(_MAG, False, _SUM), "Magnitude Task Arithmetic", "TA + magnitude"),
    MethodInfo("ca_magnitude_linear", Recipe(_MAG, True, _SUM), "Conflict-Aware Magnitude Task Arithmetic", "CA only"),
    MethodInfo("ca_ties", Recipe(_MAG, True, _TIES), "Conflict-Aware TIES", "TIES + CA"),
    MethodInfo("ca_dare_linear", Recipe(_RND, True, _SUM), "Conflict-Aware Linear DARE", "DARE + CA"),
    MethodInfo("ca_dare_ties", Recipe(_RND, True, _TIES), "Conflict-Aware DARE TIES", "TIES + DARE + CA"),
)

METHODS_BY_NAME = {info.name: info for info in METHOD_TABLE}

Density = Annotated[float, AfterValidator(check_density)]
BlockSize = Annotated[int, AfterValidator(check_block_size)]
Finite = Annotated[float, AfterValidator(check_finite)]


def parameter_specs(recipe: Recipe) -> tuple[ParameterSpec, ...]:
    """Parameters of a recipe; ``block_size`` exists only where blocks do (n:m)."""
    specs = [
        ParameterSpec("weight", Finite, ParameterScope.NON_BASE, default=1.0,
                      description="scale of the model's pruned task vector"),
        ParameterSpec("density", Density, ParameterScope.NON_BASE,
                      description="kept fraction of the task vector, in [0, 1]"),
        ParameterSpec("lambda", Finite, ParameterScope.SHARED, default=1.0,
                      description="scale of the combined task vector"),
        ParameterSpec("normalize", bool, ParameterScope.SHARED, default=False,
                      description="divide by the sum of the (agreeing, for TIES) weights"),
    ]
    if recipe.sparsifier is Sparsifier.NM:
        specs.append(ParameterSpec("block_size", BlockSize, ParameterScope.SHARED, default=32,
                                   description="m of n:m; n = round(density * m)"))
    return tuple(specs)


class SparseTaskArithmeticMerge(GroupMergeMethod):
    """Task arithmetic over sparsified task vectors, configured by a ``Recipe``."""

    def __init__(self, info: MethodInfo):
        self.info = info
        self.spec = MergeMethodSpec(
            name=info.name,
            pretty_name=info.pretty_name,
            reference_url=CABS_URL,
            parameters=parameter_specs(info.recipe),
            contract=InputContract(base=BasePolicy.REQUIRED, min_non_base=1),
        )

    def validate_inputs(
        self,
        input_ids: Sequence[Hashable],
        base_id: Optional[Hashable] = None,
        *,
        group_name: Optional[str] = None,
    ) -> None:
        check_group_inputs(self.info.name, input_ids, base_id, group_name)
        super().validate_inputs(input_ids, base_id, group_name=group_name)

    def merge_group(self, group: TensorGroup, /, **params: Any) -> torch.Tensor:
        name = group.metadata.name or "<unnamed tensor>"
        if not group.base.tensor.is_floating_point():
            return agreed_buffer(name, [(e.id, e.tensor) for e in group.entries])
        entries = group.non_base
        densities = [params["density"][e.id] for e in entries]
        block_size = params.get("block_size", 1)
        if self.info.recipe.sparsifier is Sparsifier.NM:
            check_keep_counts(self.info.name, name, [e.id for e in entries], densities, block_size)
        merge_log.record(
            (self.info.name, group.base.id, tuple(e.id for e in entries)),
            merge_log.TensorRecord(name, group.base.tensor.numel(), tuple(densities),
                                   tuple(params["weight"][e.id] for e in entries),
                                   block_size if self.info.recipe.sparsifier is Sparsifier.NM
                                   else None))
        seed = torch.initial_seed()
        merged = merge_tensor(
            self.info.recipe,
            group.base.tensor,
            [e.tensor for e in entries],
            MergeArgs(
                weights=[params["weight"][e.id] for e in entries],
                densities=densities,
                block_size=block_size,
                lam=params["lambda"],
                normalize=params["normalize"],
                seeds=[tensor_seed(seed, name, i) for i in range(len(entries))],
                chunk_blocks=max(1, CHUNK_ELEMENTS // block_size),
            ),
        )
        # A NaN or inf in any input reaches the result (dropped entries are tau * 0), so one
        # pass over the result stands in for one per input; those are read only to name it.
        # The sum is the fast test (half the time of isfinite on bf16); only if it is not
        # finite, which a large finite sum can also cause, is every value checked.
        if not (bool(torch.isfinite(merged.sum(dtype=torch.float32)))
                or bool(torch.isfinite(merged).all())):
            check_tensors_finite(name, [(e.id, e.tensor) for e in group.entries])
            raise MergeConfigError(
                f"{self.info.name}: merging tensor {name} gives values beyond the range of "
                f"{merged.dtype}; lower weight or lambda."
            )
        return merged


_SPARSIFIER_WORDS = {_NM: "n:m blocks", _MAG: "magnitude (per tensor)", _RND: "random (DARE, x 1/density)"}


def method_table_markdown() -> str:
    """The README's table of registered names, rendered from ``METHOD_TABLE``."""
    rows = ["| `merge_method` | sparsifier | conflict-aware | combine | paper row | parameters |",
            "|---|---|---|---|---|---|"]
    for info in METHOD_TABLE:
        recipe = info.recipe
        rows.append(
            f"| `{info.name}` | {_SPARSIFIER_WORDS[recipe.sparsifier]} | "
            f"{'yes' if recipe.conflict_aware else 'no'} | "
            f"{'TIES' if recipe.combine is _TIES else 'sum'} | {info.paper_row} | "
            + ", ".join(f"`{p}`" for p in info.parameter_names) + " |"
        )
    return "\n".join(rows)


def build_methods() -> tuple[SparseTaskArithmeticMerge, ...]:
    return tuple(SparseTaskArithmeticMerge(info) for info in METHOD_TABLE)


