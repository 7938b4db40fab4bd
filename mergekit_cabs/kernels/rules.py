"""The rules every kernel path follows, in one leaf that imports nothing else of ours.

Notation. ``tau_i = theta_i - theta_base`` is the task vector of fine-tuned model ``i``
(``i = 1..k`` in the order the models are listed). A *mask* ``M_i`` is a bool tensor of the
shape of ``tau_i``. The merge is

    theta = theta_base + lambda * combine_i( s_i * w_i * M_i * tau_i )

with ``w_i`` the model's weight and ``s_i = 1 / density_i`` for DARE (else 1), or, with the
norm rescale, ``s_i = c_i`` (``rescale``).

Selection rule shared by every sparsifier. Each position gets a *score* (``|tau|`` for the
magnitude and n:m sparsifiers, a seeded uniform draw for DARE). Scores are compared as the
integer bit pattern of their non-negative float32 value, which orders them exactly like the
floats. A block keeps its ``n`` largest scores; among equal scores the lowest index wins.
Positions where ``tau == 0`` are never kept: they carry nothing and so claim nothing.

This module holds what both the torch path (``masks``, ``combine``, ``per_tensor``) and the
compiled path (``compiled``) must agree on: the recipes, the keep counts and their rounding,
the score keys, the random-score hash, the scales and the one argument object of a merge.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from enum import Enum
from typing import Optional, Sequence

import torch


@dataclass(frozen=True)
class Sparsifier:
    """Which positions of a task vector survive, as traits every kernel path reads.

    Every sparsifier gives each position a score and keeps the ``n`` best nonzero ones of
    every block (the selection rule above). ``blocks``: the flattened tensor is cut into
    independent blocks of ``MergeArgs.block_size`` elements (n:m), the short tail one of its
    own; else the whole tensor is one block. ``random``: the score is a seeded uniform draw
    (one seed per model, ``random_scores``), else ``|tau|``. ``rescales``: kept entries are
    scaled by ``1 / density`` (DARE). ``value`` names it in recipes, reports and test ids.
    The named ones are ``Sparsifier.NM``, ``.MAGNITUDE`` and ``.RANDOM`` (``SPARSIFIERS``).
    """

    value: str
    blocks: bool
    random: bool = False
    rescales: bool = False


Sparsifier.NM = Sparsifier("n:m", blocks=True)  # top n of |tau| in every block of m elements
Sparsifier.MAGNITUDE = Sparsifier("magnitude", blocks=False)  # top round(d * numel) of |tau|
Sparsifier.RANDOM = Sparsifier("random", blocks=False, random=True, rescales=True)  # DARE
SPARSIFIERS = (Sparsifier.NM, Sparsifier.MAGNITUDE, Sparsifier.RANDOM)


class Combine(str, Enum):
    """How the masked, weighted task vectors are added up."""

    SUM = "sum"
    TIES = "ties"


@dataclass(frozen=True)
class Recipe:
    """One point of sparsifier x conflict-aware x combine."""

    sparsifier: Sparsifier
    conflict_aware: bool
    combine: Combine

    @property
    def rescales(self) -> bool:
        """Whether the sparsifier scales kept entries by 1 / density (DARE)."""
        return self.sparsifier.rescales


def round_half_up(x: float) -> int:
    """``floor(x + 1/2)``: the rounding used for every kept count (0.5 -> 1, 2.5 -> 3)."""
    return math.floor(x + 0.5)


def keep_count(density: float, block_size: int) -> int:
    """``n = round(density * m)``: entries kept in a full block of ``m``."""
    return round_half_up(density * block_size)


def tail_keep_count(n: int, tail: int, block_size: int) -> int:
    """``round(n * r / m)``: entries kept in the short last block of ``r`` elements."""
    return round_half_up(n * tail / block_size)


def tail_keep_counts(
    ns: Sequence[int], tail: int, block_size: int, conflict_aware: bool
) -> list[int]:
    """Keep counts of the short last block of ``r = tail`` elements, one per task.

    Each task's exact share is ``q_i = n_i * r / m``. Independent tasks round it alone,
    ``round(q_i)``. Conflict-aware tasks share the block, so their counts are shared out
    by largest remainder: ``T = round(sum_i q_i)`` entries in all, ``floor(q_i)`` each, and
    one more to each of the ``T - sum floor(q_i)`` largest remainders (lower index first
    among equal ones). Then ``sum_i n_i <= m`` implies ``sum <= r``: the tail is disjoint
    whenever the full blocks are, and a single task keeps ``round(q_1)`` either way.
    """
    if not conflict_aware:
        return [tail_keep_count(n, tail, block_size) for n in ns]
    # Exact in integers: q_i = (n_i * r) / m, floor and remainder by divmod.
    floors, remainders = zip(*(divmod(n * tail, block_size) for n in ns)) if ns else ((), ())
    total = round_half_up(sum(ns) * tail / block_size)
    extra = total - sum(floors)
    by_remainder = sorted(range(len(ns)), key=lambda i: (-remainders[i], i))
    counts = list(floors)
    for i in by_remainder[:extra]:
        counts[i] += 1
    return counts


def score_bits(score: torch.Tensor) -> torch.Tensor:
    """Order-preserving int32 key of a non-negative float32 score (``|tau|`` or a draw)."""
    return score.to(torch.float32).abs().view(torch.int32)


# Claimed positions are shifted below every free one; int32 score bits of a non-negative
# float are in [0, 0x7F800000], so subtracting this keeps both ranges in int32 and ordered.
CLAIMED_OFFSET = 0x7F800001

# Constants of the 32-bit integer hash ``mix32`` (Wellons' "lowbias32": xor-shift-multiply
# rounds with low avalanche bias) and the odd constant that spreads a seed into two keys.
MIX32_SHIFTS = (16, 15, 16)
MIX32_MULTIPLIERS = (0x7FEB352D, 0x846CA68B)
SEED_SPREAD = 0x9E3779B9
RANDOM_SCORE_BITS = 24
MAX_RANDOM_POSITIONS = 1 << 32
U32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2^32`` for int64 ``x`` in [0, 2^32), in two 16-bit halves of ``c`` so that
    no product leaves int64 (no reliance on signed overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & U32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """Bijective hash of 32-bit words held in int64: xor-shift, multiply, xor-shift, multiply,
    xor-shift (constants ``MIX32_*``), every step mod 2^32."""
    a, b, c = MIX32_SHIFTS
    x = x ^ (x >> a)
    x = _mul32(x, MIX32_MULTIPLIERS[0])
    x = x ^ (x >> b)
    x = _mul32(x, MIX32_MULTIPLIERS[1])
    return x ^ (x >> c)


def mix32_int(x: int) -> int:
    """``mix32`` of one Python int (for seeds)."""
    return int(mix32(torch.tensor([x & U32], dtype=torch.int64))[0])


def random_score_keys(seed: int) -> tuple[int, int]:
    """The two 32-bit keys of a seed: ``k1 = mix32(seed)``, ``k2 = mix32(seed ^ SEED_SPREAD)``."""
    return mix32_int(seed), mix32_int(seed ^ SEED_SPREAD)


def tensor_seed(seed: int, tensor_name: str, task_index: int) -> int:
    """A per-(tensor, task) seed that does not depend on execution order or threads."""
    return zlib.crc32(f"{seed}:{tensor_name}:{task_index}".encode())


def merge_scales(recipe: Recipe, weights: Sequence[float], densities: Sequence[float],
                 norm_factors: Sequence[float] = ()) -> list[float]:
    """``s_i * w_i``: the weight times the norm rescale's ``c_i`` where given (``rescale``),
    else times ``1 / density`` where the recipe rescales (DARE)."""
    if norm_factors:
        return [w * c for w, c in zip(weights, norm_factors)]
    return [w / d if recipe.rescales and d > 0 else w for w, d in zip(weights, densities)]


def normalizer(weights: Sequence[float]) -> float:
    """``sum_i w_i`` as the divisor of a normalized sum, with ``|sum| < 1e-8 -> 1``."""
    total = math.fsum(weights)
    return 1.0 if abs(total) < 1e-8 else total


@dataclass(frozen=True)
class MergeArgs:
    """Everything of one tensor merge but the recipe and the tensors.

    ``weights[i]`` and ``densities[i]`` belong to fine-tune ``i``; ``block_size`` is the
    n:m ``m`` (ignored by the per-tensor sparsifiers); ``lam`` the shared lambda;
    ``normalize`` divides the combined delta (see ``combine``); ``seeds[i]`` draws task
    ``i``'s random scores (DARE only, one per model). ``chunk_blocks`` bounds the work of
    one pass to that many n:m blocks (``None``: the whole tensor), with the same result.
    ``compiled`` picks the path: ``None`` the compiled kernels where they support the
    recipe and tensors, ``True`` the same but an error where numba is unavailable,
    ``False`` the torch path. ``rescale`` (``"l1"``, ``"l2"`` or ``None``) asks for the norm
    rescale (``rescale``), whose per-model factors ``norm_factors`` the dispatch computes
    once per tensor. Sequences are stored as tuples, so an instance is hashable.
    """

    weights: tuple[float, ...]
    densities: tuple[float, ...]
    block_size: int = 1
    lam: float = 1.0
    normalize: bool = False
    seeds: tuple[int, ...] = ()
    chunk_blocks: Optional[int] = None
    compiled: Optional[bool] = None
    rescale: Optional[str] = None
    norm_factors: tuple[float, ...] = ()

    def __post_init__(self):
        for name in ("weights", "densities", "seeds", "norm_factors"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.weights) != len(self.densities):
            raise ValueError(f"one weight and one density per model: {len(self.weights)} weights "
                             f"for {len(self.densities)} densities")
        if self.norm_factors and len(self.norm_factors) != len(self.weights):
            raise ValueError(f"one norm factor per model: {len(self.norm_factors)} for {len(self.weights)} models")

    @property
    def chunk_elements(self) -> Optional[int]:
        """Elements of one pass of the per-tensor torch path: ``chunk_blocks * block_size``."""
        return self.chunk_blocks and self.chunk_blocks * self.block_size

    def scales(self, recipe: Recipe) -> list[float]:
        """``s_i * w_i`` of every model (``merge_scales``)."""
        return merge_scales(recipe, self.weights, self.densities, self.norm_factors)

    def block_length(self, recipe: Recipe, numel: int) -> int:
        """The ``m`` a keep count refers to: ``block_size`` where the sparsifier has blocks,
        else the whole tensor (per-tensor magnitude and random are n:m with one block
        spanning the tensor)."""
        return self.block_size if recipe.sparsifier.blocks else max(numel, 1)

    def keep_counts(self, recipe: Recipe, numel: int) -> list[int]:
        """``n_i = round(density_i * m)`` with ``m`` from ``block_length``."""
        m = self.block_length(recipe, numel)
        return [keep_count(d, m) for d in self.densities]
