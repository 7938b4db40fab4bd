"""The model-path check of merges with our methods, shared by every host adapter.

Every host's ``run_merge`` reads each model's ``config.json`` before it plans (mergekit 0.1.4
and 0.1.5 in ``get_architecture_info``, mergekitty in ``run_merge`` itself), so a check in
the planning hooks would come too late: a missing local folder has by then been taken for a
Hub repository id (``OSError: Repo id must be in the form ...``). The first thing each of
them asks of the configuration is ``MergeConfiguration.referenced_models()``, a method
looked up when called (so no import-time binding can bypass it): the adapters wrap it (guarded,
``guards``) to check, for our methods only, that every local-looking path is a folder with
weights (``validation.check_model_path``). ``mergekit-cabs inspect`` and ``search`` call
``check_config_paths`` when they read a config.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any, Callable, Iterable, Iterator

from mergekit_cabs.hosts.guards import is_ours, mark_ours
from mergekit_cabs.methods import METHODS_BY_NAME
from mergekit_cabs.validation import check_model_path

# Off while a host writes the model card: it names the models but reads none of them.
_checking: contextvars.ContextVar = contextvars.ContextVar("mergekit_cabs_check_paths", default=True)


def check_references(method: str, references: Iterable[Any]) -> None:
    """Check each ``ModelReference``'s path (and LoRA path), in a stable order."""
    for reference in sorted(references, key=str):
        check_model_path(method, reference.model.path)
        if reference.lora is not None:
            check_model_path(method, reference.lora.path, adapter=True)


def check_config_paths(config: Any) -> None:
    """The check for a host's ``MergeConfiguration`` of one of our methods (others pass)."""
    if config.merge_method in METHODS_BY_NAME:
        check_references(config.merge_method, config.referenced_models())


def paths_checked(referenced_models: Callable) -> Callable:
    """The host's ``MergeConfiguration.referenced_models``, checking our merges' paths."""
    if is_ours(referenced_models):
        return referenced_models

    def checked(self):
        references = referenced_models(self)
        if _checking.get() and self.merge_method in METHODS_BY_NAME:
            check_references(self.merge_method, references)
        return references

    return mark_ours(checked, referenced_models)


@contextlib.contextmanager
def paths_unchecked() -> Iterator[None]:
    """Within the block, ``referenced_models`` checks nothing (the card reads no model)."""
    token = _checking.set(False)
    try:
        yield
    finally:
        _checking.reset(token)
