"""One resident model of the merged architecture, rewritten in place for each candidate.

``CandidateModel.prepare`` reads every checkpoint once, through MergeKit's loader, prunes
each float tensor once (``pruned.prune_tensor``) and loads the base everywhere; after that
``assemble(weights)`` rewrites only the kept positions of each tensor and reads no file.
Every merged value is rounded to the dtype MergeKit writes before it is stored in the
model (whose ``compute_dtype`` must hold that dtype exactly).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from mergekit_cabs.search.config import SearchConfig, plan_merge, tensor_inputs
from mergekit_cabs.search.errors import SearchInputError
from mergekit_cabs.search.groups import LAYER_GROUPS, group_of
from mergekit_cabs.search.pruned import PrunedTensor, merged_support, prune_tensor

ModelFactory = Callable[[Any], torch.nn.Module]  # merged config -> module (caller's weights elsewhere)

_BITS = {torch.float16: (5, 10), torch.bfloat16: (8, 7), torch.float32: (8, 23), torch.float64: (11, 52)}


def holds_exactly(wide: torch.dtype, narrow: torch.dtype) -> bool:
    """Every value of ``narrow`` is a value of ``wide`` (both floating point)."""
    (we, wm), (ne, nm) = _BITS[wide], _BITS[narrow]
    return we >= ne and wm >= nm


def causal_lm_factory(config: Any) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config)


class CandidateModel:
    """The resident model plus every tensor's pruned task vectors."""

    def __init__(self, model: torch.nn.Module, pruned: Sequence[PrunedTensor], models: Sequence[str],
                 start_weights: Sequence[float], search: SearchConfig):
        self.model = model
        self.pruned = tuple(pruned)
        self.models = tuple(models)
        self.start_weights = tuple(start_weights)
        self.search = search
        self._slots = dict(model.state_dict(keep_vars=True))

    @classmethod
    def prepare(cls, search: SearchConfig, *, device: str = "cpu", compute_dtype: Optional[str] = None,
                random_seed: Optional[int] = None, model_factory: Optional[ModelFactory] = None,
                progress: bool = False) -> "CandidateModel":
        """Plan the merge, build the model, prune every tensor once, load the base."""
        from tqdm import tqdm

        plan = plan_merge(search)
        seed = resolve_random_seed(search, random_seed)
        model = (model_factory or causal_lm_factory)(plan.out_config)
        model.eval()
        candidate = cls(model, (), search.models, plan.start_weights, search)
        candidate._check_untied([job.name for job in plan.jobs])
        written, pruned, results = {}, [], {}
        for job in tqdm(plan.jobs, desc="Pruning once", unit="tensor", disable=not progress):
            inputs = tensor_inputs(search, job, seed, results)
            if isinstance(inputs, tuple):  # a non-float buffer, the same in every candidate
                written[inputs[0]] = inputs[1]
                continue
            written[inputs.name] = inputs.written_dtype
            pruned.append(prune_tensor(inputs, torch.device(device)))
            candidate._load_whole(inputs.name, inputs.base.to(inputs.written_dtype))
        for name, value in written.items():
            if isinstance(value, torch.Tensor):
                candidate._load_whole(name, value)
        candidate.pruned = tuple(pruned)
        candidate._cast(compute_dtype, written, device, model_factory is None)
        return candidate

    def _check_untied(self, names: Sequence[str]) -> None:
        owner: dict[int, str] = {}
        for name in names:
            slot = self._slots.get(name)
            if slot is not None and owner.setdefault(id(slot), name) != name:
                raise SearchInputError(
                    f"tensors {owner[id(slot)]} and {name} are one tied parameter in "
                    f"{type(self.model).__name__} but MergeKit merges them separately; the "
                    "loaded merge would keep only one. Untie them in the base's config.json "
                    "(tie_word_embeddings: false) or drop the separate head from the checkpoints.")

    def _load_whole(self, name: str, value: torch.Tensor) -> None:
        slot = self._slots.get(name)
        if slot is None or tuple(slot.shape) != tuple(value.shape):
            raise SearchInputError(
                f"tensor {name} {tuple(value.shape)} of the merge has no matching parameter in "
                f"{type(self.model).__name__} ({'missing' if slot is None else tuple(slot.shape)}); "
                "pass a model_factory that builds the merged architecture.")
        with torch.no_grad():
            slot.data = value.detach().clone()

    def _cast(self, compute_dtype: Optional[str], written: Mapping[str, Any], device: str,
              strict: bool) -> None:
        float_dtypes = [v for v in written.values() if isinstance(v, torch.dtype)]
        widest = max(float_dtypes, key=lambda d: _BITS[d]) if float_dtypes else torch.float32
        target = getattr(torch, compute_dtype) if compute_dtype else widest
        for dtype in set(float_dtypes):
            if not holds_exactly(target, dtype):
                raise SearchInputError(
                    f"--dtype {compute_dtype} cannot hold the merge's {str(dtype).removeprefix('torch.')} "
                    "values exactly, so the model evaluated would not be the one mergekit-yaml writes; "
                    "choose a dtype at least as wide (or leave --dtype unset).")
        tied = {slot.data_ptr() for name, slot in self._slots.items() if name in written}
        uncovered = [n for n, s in self._slots.items() if n not in written and s.data_ptr() not in tied]
        if strict and uncovered:
            raise SearchInputError(
                f"the merge writes no value for {', '.join(uncovered[:5])} of {type(self.model).__name__}; "
                "a model loaded from the merge would initialise them at random. The search needs an "
                "architecture MergeKit merges whole.")
        self.model.to(device=device)
        for slot in self._slots.values():
            if slot.is_floating_point() and slot.dtype != target:
                slot.data = slot.data.to(target)
        self._slots = dict(self.model.state_dict(keep_vars=True))
        self.compute_dtype = target

    def scales(self, layer_groups: bool) -> list[tuple[str, Optional[str]]]:
        """The searched scales: one per model, or one per (layer group, model) for the
        groups that have tensors; their order is the vector's."""
        if not layer_groups:
            return [(model, None) for model in self.models]
        present = {group_of(p.name) for p in self.pruned}
        return [(model, group) for group in LAYER_GROUPS if group in present for model in self.models]

    def tensor_weights(self, scales: Sequence[tuple[str, Optional[str]]], vector: Sequence[float]
                       ) -> Callable[[str], list[float]]:
        """Per tensor name, the per-model weights that ``vector`` gives it."""
        by_key = dict(zip(scales, vector))
        groups = {group for _, group in scales}

        def weights(name: str) -> list[float]:
            group = group_of(name) if groups != {None} else None
            return [float(by_key[(model, group)]) if (model, group) in by_key else start
                    for model, start in zip(self.models, self.start_weights)]

        return weights

    def assemble(self, weights_of: Callable[[str], list[float]]) -> None:
        """Write the merge with these weights into the model, in place."""
        with torch.no_grad():
            for pruned in self.pruned:
                flat = self._slots[pruned.name].data.view(-1)
                weights = weights_of(pruned.name)
                for lo, hi in pruned.chunks():
                    values = merged_support(pruned, weights, lo, hi)
                    flat.index_copy_(0, pruned.support[lo:hi].to(torch.int64), values.to(flat.dtype))

    def compact_bytes(self) -> int:
        return sum(p.nbytes() for p in self.pruned)

    def kept_shares(self) -> dict:
        """Per model, over every pruned tensor: the kept share of its task vector's L1 norm
        (``sum |M tau| / sum |tau|``) and of its energy (``sum (M tau)^2 / sum tau^2``)."""
        shares = {}
        for i, model in enumerate(self.models):
            shares[model] = {}
            for key, p in (("l1", 1), ("energy", 2)):
                dense = math.fsum(t.sums.dense[p][i] for t in self.pruned)
                kept = math.fsum(t.sums.kept[p][i] for t in self.pruned)
                shares[model][key] = kept / dense if dense else None
        return shares


def resolve_random_seed(search: SearchConfig, random_seed: Optional[int]) -> int:
    """The seed of the DARE variants' masks: the merge's ``--random-seed``, which they need."""

    if random_seed is None:
        if search.info.recipe.sparsifier.random:
            raise SearchInputError(
                f"{search.path}: {search.info.name} draws its masks from the merge's --random-seed; "
                "pass --random-seed N to the search and merge merge.yml with mergekit-yaml "
                "--random-seed N.")
        return 0
    if not 0 <= random_seed < 2**63:
        raise SearchInputError(f"--random-seed must be a whole number >= 0; got {random_seed}.")
    return random_seed
