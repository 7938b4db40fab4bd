"""The parts a method is made of, each one object with everything the product says about it.

- ``Parameter``: one parameter as every host declares it (name, type with our range checks,
  shared or per model, default, description).
- ``SparsifierStrategy``: which positions survive. Its ``kernel`` (``kernels.Sparsifier``)
  carries the traits every kernel path reads (blocks, random scores, rescale); here are its
  extra parameters, how long its blocks are in a tensor (``block_length``), its words for
  the README table and the card, and its papers.
- ``CombineStrategy``: how the pruned task vectors are added: its ``kernel``
  (``kernels.Combine``), its table word, card sentence, formula and papers.

Host-free: ``methods`` builds the registered names from these, adapters turn a
``Parameter`` into their host's declaration.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from pydantic import AfterValidator, TypeAdapter
from typing_extensions import Annotated

from mergekit_cabs.kernels import Combine, Sparsifier
from mergekit_cabs.papers import DARE_PAPER, TIES_PAPER, Paper
from mergekit_cabs.validation import check_block_size, check_density, check_finite, check_rescale_name

Density = Annotated[float, AfterValidator(check_density)]
BlockSize = Annotated[int, AfterValidator(check_block_size)]
Finite = Annotated[float, AfterValidator(check_finite)]
RescaleName = Annotated[str, AfterValidator(check_rescale_name)]

REQUIRED = object()


@functools.lru_cache(maxsize=None)
def _adapter(value_type: Any) -> TypeAdapter:
    return TypeAdapter(value_type)


@dataclass(frozen=True)
class Parameter:
    """One parameter of a method, as every host declares it: shared by the merge, or set
    per fine-tuned model (the base model has none)."""

    name: str
    value_type: Any
    per_model: bool
    default: Any = REQUIRED
    description: str = ""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any) -> Any:
        """The value as the method uses it (pydantic coercion, then our range checks)."""
        return _adapter(self.value_type).validate_python(value)


WEIGHT = Parameter("weight", Finite, per_model=True, default=1.0,
                   description="scale of the model's pruned task vector")
DENSITY = Parameter("density", Density, per_model=True,
                    description="kept fraction of the task vector, in [0, 1]")
LAMBDA = Parameter("lambda", Finite, per_model=False, default=1.0,
                   description="scale of the combined task vector")
NORMALIZE = Parameter("normalize", bool, per_model=False, default=False,
                      description="divide by the sum of the (agreeing, for TIES) weights")
BLOCK_SIZE = Parameter("block_size", BlockSize, per_model=False, default=32,
                       description="m of n:m; n = round(density * m)")
RESCALE = Parameter("rescale", RescaleName, per_model=False, default="none",
                    description="none; or l1 / l2: scale each pruned task vector, per tensor, to "
                                "its dense task vector's norm (replaces DARE's 1/density)")




def setting_block_size(block_size: Optional[int], shape: Sequence[int]) -> int:
    """The block length of a sparsifier with a ``block_size`` parameter: its value."""
    return block_size or 1


@dataclass(frozen=True)
class SparsifierStrategy:
    """Which positions of a task vector survive, and everything the product says about it.

    ``block_length(block_size setting, tensor shape)`` is the ``m`` the kernels cut a tensor
    into where ``kernel.blocks``; ``card_sentence`` may hold ``{blocks}`` (``a block`` or
    ``every block of 16``), filled by the card where the strategy has ``block_size``.
    """

    kernel: Sparsifier
    table_words: str
    card_sentence: str
    papers: tuple[Paper, ...] = ()
    extra_parameters: tuple[Parameter, ...] = ()
    block_length: Callable[[Optional[int], Sequence[int]], int] = setting_block_size

    @property
    def has_blocks(self) -> bool:
        """Whether the tensor is cut into blocks of the ``block_size`` parameter (n:m)."""
        return BLOCK_SIZE in self.extra_parameters


NM_BLOCKS = SparsifierStrategy(
    kernel=Sparsifier.NM, table_words="n:m blocks",
    card_sentence=("balanced n:m magnitude pruning (in {blocks} consecutive weights the "
                   "n = round(density · m) largest |τ| are kept)"),
    extra_parameters=(BLOCK_SIZE,),
)
MAGNITUDE = SparsifierStrategy(
    kernel=Sparsifier.MAGNITUDE, table_words="magnitude (per tensor)",
    card_sentence="magnitude pruning (in each tensor the share `density` with the largest |τ| is kept)",
)
RANDOM_DARE = SparsifierStrategy(
    kernel=Sparsifier.RANDOM, table_words="random (DARE, x 1/density)",
    card_sentence=(f"DARE random dropping ([{DARE_PAPER.label}]({DARE_PAPER.url}): in each tensor a "
                   "random share `density` is kept and rescaled by 1/density)"),
    papers=(DARE_PAPER,),
)
SPARSIFIERS: tuple[SparsifierStrategy, ...] = (NM_BLOCKS, MAGNITUDE, RANDOM_DARE)


@dataclass(frozen=True)
class CombineStrategy:
    """How the pruned, weighted task vectors are added, and everything the product says
    about it: the README table's word, the card's clause (after "the pruned task vectors,
    each multiplied by ..."), what ``normalize`` divides by, the formula of one term
    (``{term}``), and its papers."""

    kernel: Combine
    table_word: str
    card_clause: str
    divisor_words: str
    formula: str
    papers: tuple[Paper, ...] = ()


SUM = CombineStrategy(Combine.SUM, "sum", "were summed", "the sum of the weights", "Σᵢ {term}")
TIES = CombineStrategy(
    Combine.TIES, "TIES",
    f"were combined TIES-style ([{TIES_PAPER.label}]({TIES_PAPER.url})): at each position the sign "
    "of their sum was elected and only the entries agreeing with it were added",
    "the sum of the agreeing models' weights", "TIES({{{term}}})", (TIES_PAPER,))
COMBINES: tuple[CombineStrategy, ...] = (SUM, TIES)


def strategy_for(kernel: Sparsifier) -> SparsifierStrategy:
    """The sparsifier strategy whose kernel is ``kernel``."""
    return next(s for s in SPARSIFIERS if s.kernel is kernel)


def combine_for(kernel: Combine) -> CombineStrategy:
    """The combine strategy whose kernel is ``kernel``."""
    return next(c for c in COMBINES if c.kernel is kernel)
