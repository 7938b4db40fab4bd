"""Layer groups (``--layer-groups``): one weight per group of tensors and model.

MergeKit's parameter filters match a substring of the tensor name and the first match
wins, so the groups are exactly this chain: Llama-style names (``self_attn``, ``mlp``) and
BERT-style ones (``attention.*``, ``intermediate.dense`` and the feed-forward's
``output.dense``, which comes after ``attention.output.dense`` in the chain). Everything
else (embeddings, the output head, norms) is ``OTHER_GROUP``.
"""

GROUP_FILTERS = (("attention", "attn"), ("attention", "attention"),
                 ("mlp", "mlp"), ("mlp", "intermediate"), ("mlp", "output.dense"))
OTHER_GROUP = "embeddings"
LAYER_GROUPS = tuple(dict.fromkeys(g for g, _ in GROUP_FILTERS)) + (OTHER_GROUP,)


def group_of(tensor_name: str) -> str:
    """The layer group of a tensor: the first of ``GROUP_FILTERS`` its name contains."""
    return next((group for group, text in GROUP_FILTERS if text in tensor_name), OTHER_GROUP)
