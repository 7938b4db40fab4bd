"""The search's input error: a ``MergeConfigError`` whose message names the input and the fix."""

from mergekit_cabs.validation import MergeConfigError


class SearchInputError(MergeConfigError):
    """An input the search cannot take; the message names it and the fix."""
