"""Model cards of merges made with this package's methods.

Every host (mergekit 0.1.4 and 0.1.5, mergekitty) writes the output's ``README.md`` with
``<host>.card.generate_card``, imported by name into ``<host>.merge`` and called from
``run_merge``; none has a hook for a method to add to the card. ``card_with_our_sections``
wraps that one name (installed by each host's adapter in ``mergekit_cabs.hosts`` at
registration). Nothing here imports a host. For a merge with
one of our methods the wrapper keeps MergeKit's card (front matter, models, YAML) and adds:
the tags ``CARD_TAGS``, a paragraph stating what was done with the resolved parameters, the
papers of the parts the recipe uses, and their BibTeX. MergeKit's own methods get
MergeKit's card, untouched.

Offline: MergeKit asks the Hub whether a local path with exactly one slash
(``models/base``) is also a Hub repository, and the merge crashes after all tensors are
written when the Hub cannot answer (``HF_HUB_OFFLINE=1``, no network). For our methods the
wrapper answers "local" when the Hub cannot be asked: the merge read that directory.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from typing import Any, Callable, Iterable, Iterator, Mapping, Optional, Sequence

from huggingface_hub import ModelCard

from mergekit_cabs import merge_log
from mergekit_cabs.card_listing import (
    MODELS_HEADING,
    current_links,
    front_matter_models,
    listed_in_merge_order,
    merge_order,
)
from mergekit_cabs.hosts.model_paths import paths_unchecked
from mergekit_cabs.keep_counts import tensor_keep_counts
from mergekit_cabs.kernels import Recipe, keep_count
from mergekit_cabs.methods import METHOD_TABLE, METHODS_BY_NAME, MethodInfo
from mergekit_cabs.strategies import combine_for, strategy_for
from mergekit_cabs.papers import CABS_PAPER, DARE_PAPER, TIES_PAPER, Paper
from mergekit_cabs.provenance import read_search_record, search_paragraph

__all__ = ["CABS_PAPER", "DARE_PAPER", "TIES_PAPER", "Paper", "papers_for", "extend_card",
           "procedure_paragraph", "disjointness_sentence", "card_with_our_sections"]

LOG = logging.getLogger(__name__)

CARD_TAGS = ("cabs", "model-merging", "task-arithmetic")


def papers_for(recipe: Recipe) -> tuple[Paper, ...]:
    """CABS (every method here is a row of its ablation), plus TIES and the sparsifier's
    papers where used (``MethodInfo.papers``)."""
    return next(i for i in METHOD_TABLE if i.recipe == recipe).papers


class _Varies:
    """Marks a parameter set by a gradient or filters: its value depends on the tensor."""

    def __repr__(self) -> str:
        return "VARIES"


VARIES = _Varies()


def fixed_setting(spec: Any, sources: Iterable[Optional[Mapping[str, Any]]]) -> Any:
    """The value of parameter ``spec`` if it is one constant for every tensor, else ``VARIES``.

    ``sources`` go from highest precedence to lowest, as MergeKit resolves them; the first
    that sets the parameter wins, and none setting it gives the default.
    """
    for settings in sources:
        if settings and spec.name in settings:
            value = settings[spec.name]
            if isinstance(value, (bool, int, float, str)):
                return spec.validate(value)
            return VARIES
    return None if spec.required else spec.validate(spec.default)


def _number(value: Any) -> str:
    return "varies by tensor" if value is VARIES else f"{value:g}"


def _value_range(values: Iterable[float]) -> str:
    """One value as is; several as ``low to high by tensor``."""
    distinct = sorted(set(values))
    if len(distinct) == 1:
        return f"{distinct[0]:g}"
    return f"{distinct[0]:g} to {distinct[-1]:g} by tensor"


def _shown(value: Any, per_tensor: Sequence[float]) -> str:
    """A fixed setting as is; a varying one as the range of its per-tensor values."""
    if value is not VARIES:
        return f"{value:g}"
    return _value_range(per_tensor) if per_tensor else "varies by tensor"


def _model_clause(model: str, weight: str, density: str, fixed_density: Any, block_size: Any,
                  recipe: Recipe) -> str:
    """``model (weight w, density d -> n:m)``, with n:m only for fixed n:m settings."""
    text = f"`{model}` (weight {weight}, density {density}"
    if strategy_for(recipe.sparsifier).has_blocks and VARIES not in (fixed_density, block_size):
        text += f" → {keep_count(fixed_density, block_size)}:{block_size}"
    return text + ")"


def _sparsifier_sentence(recipe: Recipe, block_size: Any) -> str:
    blocks = "a block" if block_size is VARIES else f"every block of {block_size}"
    return strategy_for(recipe.sparsifier).card_sentence.format(blocks=blocks)


def disjointness_sentence(recipe: Recipe, densities: Sequence[Any], block_size: Any,
                          records: Sequence[merge_log.TensorRecord]) -> str:
    """Whether the conflict-aware masks are disjoint, from keep counts (see keep_counts).

    From the merged tensors' records when there are any; else from the configuration,
    which settles it for n:m with fixed settings (the tail fits whenever full blocks do).
    """
    if records:
        counted = [(r, tensor_keep_counts(recipe, r.densities, r.block_size, r.numel))
                   for r in records]
        over = [(r, c) for r, c in counted if c.excess]
        if not over:
            return (" In every tensor the keep counts fit the block (Σ nᵢ ≤ m), so the kept "
                    "positions of different models are disjoint.")
        record, counts = over[0]
        excess, kept = sum(c.excess for _, c in over), sum(c.kept for _, c in counted)
        return (f" In {len(over)} of {len(counted)} tensors the keep counts exceed the block "
                f"(e.g. {record.name}: {' + '.join(map(str, counts.counts))} = "
                f"{sum(counts.counts)} > {counts.block_size}), so there the masks overlap: up "
                f"to {excess} kept entries ({excess / kept:.2%} of all kept) fall on positions an "
                "earlier model also kept; elsewhere they are disjoint.")
    has_blocks = strategy_for(recipe.sparsifier).has_blocks
    if VARIES in densities or (has_blocks and block_size is VARIES):
        return (" Whether the kept positions are disjoint depends on each tensor's keep "
                "counts (disjoint exactly where they fit the block, Σ nᵢ ≤ m).")
    if has_blocks:
        counts = [keep_count(d, block_size) for d in densities]
        total = sum(counts)
        sum_text = f"{' + '.join(map(str, counts))} = {total}"
        if total <= block_size:
            return (f" The keep counts {sum_text} ≤ {block_size} fit every block, so the kept "
                    "positions of different models are disjoint.")
        return (f" The keep counts {sum_text} > {block_size} exceed the block, so in every "
                f"block up to {total - block_size} kept entries fall on positions an earlier model "
                "also kept.")
    return (" The kept positions are disjoint in a tensor of N entries exactly when "
            "Σ round(densityᵢ · N) ≤ N" + (" (the densities sum to more than 1: nowhere)."
                                         if sum(densities) > 1 else "."))


def _order_sentence(recipe: Recipe, models: Sequence[str], clauses: Sequence[str],
                    densities: Sequence[Any], block_size: Any,
                    records: Sequence[merge_log.TensorRecord]) -> str:
    if not recipe.conflict_aware:
        return "independently for each model: " + ", ".join(clauses) + "."
    # The order changes the result, and MergeKit's list of the models has none: say it plainly.
    text = ("conflict-aware, pruned first to last: " + ", ".join(f"`{m}`" for m in models)
            + " (the order of `models:`); each model chose first among the positions no earlier "
            "model had kept. Per model: " + ", ".join(clauses) + ".")
    return text + disjointness_sentence(recipe, densities, block_size, records)


def _scale_term(recipe: Recipe, rescale: Any) -> str:
    """The factor of model i's pruned task vector: ``wᵢ``, DARE's ``wᵢ / densityᵢ``, or the
    norm rescale's ``wᵢ · cᵢ``."""
    if rescale not in (None, "none"):
        return "wᵢ · cᵢ"
    return "wᵢ / densityᵢ" if recipe.sparsifier.rescales else "wᵢ"


def rescale_sentence(rescale: Any) -> str:
    """What ``rescale: l1``/``l2`` did (empty without it)."""
    if rescale in (None, "none"):
        return ""
    if rescale is VARIES:
        return " The norm rescale (`rescale`) was set for some tensors only."
    p = {"l1": "1", "l2": "2"}[rescale]
    return (f" With `rescale: {rescale}`, cᵢ = ‖τᵢ‖_{p} / ‖Mᵢ ⊙ τᵢ‖_{p} per tensor: each pruned task vector "
            f"was scaled to carry the L{p} norm of its dense task vector (1 where nothing was kept).")


def _combine_sentence(recipe: Recipe, lam: Any, normalize: Any, rescale: Any = None) -> str:
    combine = combine_for(recipe.combine)
    text = f"The pruned task vectors, each multiplied by {_scale_term(recipe, rescale)}, {combine.card_clause}"
    if normalize is VARIES:
        text += f" (normalized by {combine.divisor_words} for some tensors)"
    elif normalize:
        text += f" and divided by {combine.divisor_words} (`normalize: true`)"
    else:
        text += " without normalization"
    return (text + f"; the result was scaled by λ = {_number(lam)} and added to the base model."
            + rescale_sentence(rescale))


def _formula(recipe: Recipe, rescale: Any = None) -> str:
    term = _scale_term(recipe, rescale).replace("densityᵢ", "dᵢ") + " · (Mᵢ ⊙ τᵢ)"
    combined = combine_for(recipe.combine).formula.format(term=term)
    return f"`θ = θ_base + λ · {combined}`, with τᵢ = θᵢ − θ_base and Mᵢ the mask of model i."


# Parameter settings of one model (or the shared ones), highest precedence first.
Sources = tuple[Optional[Mapping[str, Any]], ...]


# A host adapter's reading of one output slice: (config, slice, module or None) ->
# (shared sources, [(model, its sources)]).
SliceSources = Callable[[Any, Any, Any], tuple[Sources, list[tuple[str, Sources]]]]


def parameter_sources(config: Any, slice_sources: Optional[SliceSources] = None,
                      ) -> Optional[tuple[Sources, list[tuple[str, Sources]]]]:
    """(shared sources, [(model, its sources)] in merge order), or None for several slices
    (or one slice and no ``slice_sources`` of the host to read it with).

    Works on the configuration as written (``models:``, the same on every host) and as
    the host's planner leaves it after the merge (one slice, per module where the host
    has modules).
    """
    if config.models:
        tasks = [m for m in config.models if m.model != config.base_model]
        return (config.parameters,), [(str(m.model), (m.parameters, config.parameters))
                                      for m in tasks]
    modules = getattr(config, "modules", None)
    if modules:
        slices = [(module, s) for module in modules.values() for s in module.slices or ()]
    else:
        slices = [(None, s) for s in config.slices or ()]
    if len(slices) != 1 or slice_sources is None:
        return None
    module, out_slice = slices[0]
    return slice_sources(config, out_slice, module)


def procedure_paragraph(info: MethodInfo, config: Any,
                        records: Sequence[merge_log.TensorRecord] = (),
                        slice_sources: Optional[SliceSources] = None) -> str:
    """What was done, from the configuration's parameters as the host resolves them and,
    where a merge recorded them, the per-tensor values it used (``merge_log``)."""
    recipe = info.recipe
    shared_specs = [p for p in info.parameters if not p.per_model]
    model_specs = [p for p in info.parameters if p.per_model]
    resolved = parameter_sources(config, slice_sources)
    shared_sources = resolved[0] if resolved else (config.parameters,)
    shared = {s.name: fixed_setting(s, shared_sources) for s in shared_specs}
    opening = ("The task vector τᵢ of each fine-tuned model (its weights minus the base "
               f"model's) was sparsified with {_sparsifier_sentence(recipe, shared.get('block_size'))}, ")
    if resolved:
        clauses, densities = [], []
        for index, (model, sources) in enumerate(resolved[1]):
            settings = {s.name: fixed_setting(s, sources) for s in model_specs}
            weight = _shown(settings["weight"], [r.weights[index] for r in records])
            density = _shown(settings["density"], [r.densities[index] for r in records])
            clauses.append(_model_clause(model, weight, density, settings["density"],
                                         shared.get("block_size"), recipe))
            densities.append(settings["density"])
        body = opening + _order_sentence(recipe, [m for m, _ in resolved[1]], clauses, densities,
                                         shared.get("block_size"), records)
    else:
        body = (opening + ("conflict-aware in the order the models are listed"
                           if recipe.conflict_aware else "independently for each model")
                + "; the weights and densities are set per slice (see the configuration below).")
    combine = _combine_sentence(recipe, shared["lambda"], shared["normalize"], shared.get("rescale"))
    return f"{body} {combine}\n\n{_formula(recipe, shared.get('rescale'))}"


def method_paragraph(info: MethodInfo) -> str:
    """Name the method, its row of the CABS paper, and the papers of its parts."""
    papers = papers_for(info.recipe)
    parts = "".join(f"; its {p.label} part is from {p.link()}" for p in papers[1:])
    return (f"`{info.name}` ({info.pretty_name}, the row \"{info.paper_row}\" of the paper's "
            f"ablation) follows {CABS_PAPER.link()}{parts}; it ran as a MergeKit method of the "
            "mergekit-cabs plugin.")


def citation_section(papers: Sequence[Paper]) -> str:
    names = " and ".join(p.label for p in papers)
    entries = "\n\n".join(p.bibtex for p in papers)
    return (f"## Citation\n\nThis merge used the method of {names}. If you use this model, "
            f"please cite:\n\n```bibtex\n{entries}\n```\n")


def extend_card(card: str, info: MethodInfo, config: Any,
                records: Sequence[merge_log.TensorRecord] = (),
                slice_sources: Optional[SliceSources] = None, config_yaml: Optional[str] = None) -> str:
    """MergeKit's card plus our tags (in its front matter), paragraphs (with how a search
    found the weights, where ``config_yaml`` carries its record) and citation."""
    model_card = ModelCard(card)
    if not model_card.data.to_dict():
        LOG.warning("mergekit_cabs: MergeKit's model card has no YAML front matter; "
                    "it is written as MergeKit made it.")
        return card
    tags = list(model_card.data.tags or [])
    model_card.data.tags = tags + [t for t in CARD_TAGS if t not in tags]
    model_card.data.base_model = front_matter_models(model_card.data.base_model, config)
    procedure = procedure_paragraph(info, config, records, slice_sources)
    searched = search_paragraph(read_search_record(config_yaml))
    details = f"{method_paragraph(info)}\n\n{procedure}\n\n" + (f"{searched}\n\n" if searched else "")
    body = listed_in_merge_order(current_links(model_card.text), merge_order(config))
    if MODELS_HEADING in body:  # our paragraph goes right after MergeKit's "Merge Method" one
        body = body.replace(MODELS_HEADING, details + MODELS_HEADING, 1)
    else:
        body = body.rstrip("\n") + "\n\n" + details
    model_card.text = body.rstrip("\n") + "\n\n" + citation_section(papers_for(info.recipe))
    return str(model_card)


def tolerant_hub_check(is_hf: Callable[[str], bool]) -> Callable[[str], bool]:
    """MergeKit's ``is_hf``, answering "local path" where it would fail to reach the Hub.

    ``is_hf`` reaches the Hub only for a one-slash path that exists locally; the merge has
    read that directory, so "local" is true of it whatever the Hub would say.
    """

    @functools.wraps(is_hf)
    def is_hf_or_local(path: str) -> bool:
        try:
            return is_hf(path)
        except Exception as error:  # noqa: BLE001 - any failure to ask the Hub
            LOG.info("mergekit_cabs: could not ask the Hub about %r (%s: %s); the model card "
                     "lists it as the local directory it was read from.",
                     path, type(error).__name__, error)
            return False

    return is_hf_or_local


@contextlib.contextmanager
def _hub_lookups_tolerated(card_module: Any) -> Iterator[None]:
    """Within the block, MergeKit's card module treats an unreachable Hub as "local"."""
    original = getattr(card_module, "is_hf", None)
    if original is None:
        yield
        return
    card_module.is_hf = tolerant_hub_check(original)
    try:
        yield
    finally:
        card_module.is_hf = original


def card_with_our_sections(generate_card: Callable, card_module: Any,
                           slice_sources: Optional[SliceSources] = None) -> Callable:
    """A host's ``generate_card``, extended for merges with our methods (``extend_card``);
    the host's own methods get its card, untouched. Installed by each host's adapter, which
    passes how its configuration reader reads one slice (``slice_sources``)."""
    if getattr(generate_card, "__mergekit_cabs__", False):
        return generate_card

    @functools.wraps(generate_card)
    def wrapper(config, config_yaml, name=None):
        info = METHODS_BY_NAME.get(config.merge_method)
        if info is None:
            return generate_card(config, config_yaml, name)
        with _hub_lookups_tolerated(card_module), paths_unchecked():
            card = generate_card(config, config_yaml, name)
        records = merged_tensor_records(info, config, slice_sources)
        return extend_card(card, info, config, records, slice_sources, config_yaml)

    wrapper.__mergekit_cabs__ = True
    return wrapper


def merged_tensor_records(info: MethodInfo, config: Any,
                          slice_sources: Optional[SliceSources] = None) -> list[merge_log.TensorRecord]:
    """What the merge of ``config`` recorded per tensor (none for several slices)."""
    resolved = parameter_sources(config, slice_sources)
    if resolved is None or config.base_model is None:
        return []
    return merge_log.take(info.name, config.base_model, tuple(m for m, _ in resolved[1]))
