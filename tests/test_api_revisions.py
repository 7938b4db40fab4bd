"""The new-API adapter tells MergeKit's two revisions apart by what exists.

No installable release has the later revision (``ParameterScope.INPUT`` with an
``InputParameterTarget`` field of ``ParameterSpec``), so it is a faked module surface here:
just the names the adapter reads.
"""

import dataclasses
from enum import Enum
from types import SimpleNamespace
from typing import Any, Optional

import pytest

from mergekit_cabs.hosts.guards import IncompatibleMergeKit
from mergekit_cabs.hosts.mergekit_new import host_spec, per_model_scope
from mergekit_cabs.methods import DENSITY, LAMBDA

MISSING = object()


class ScopeWithNonBase(str, Enum):
    SHARED = "shared"
    INPUT = "input"
    NON_BASE = "non_base"


class ScopeWithoutNonBase(str, Enum):
    SHARED = "shared"
    INPUT = "input"


class Target(str, Enum):
    ALL = "all"
    NON_BASE = "non_base"


@dataclasses.dataclass(frozen=True)
class SpecWithTarget:
    name: str
    value_type: Any
    scope: ScopeWithoutNonBase
    default: Any = MISSING
    description: Optional[str] = None
    target: "InputParameterTarget" = Target.ALL  # noqa: F821 - named as upstream annotates it


@dataclasses.dataclass(frozen=True)
class SpecWithoutTarget:
    name: str
    value_type: Any
    scope: Any
    default: Any = MISSING
    description: Optional[str] = None


LATER = SimpleNamespace(ParameterScope=ScopeWithoutNonBase, InputParameterTarget=Target,
                        ParameterSpec=SpecWithTarget)
PYPI_015 = SimpleNamespace(ParameterScope=ScopeWithNonBase, ParameterSpec=SpecWithoutTarget)
NEITHER = SimpleNamespace(ParameterScope=ScopeWithoutNonBase, ParameterSpec=SpecWithoutTarget)


def test_the_later_revision_declares_per_model_parameters_as_input_targeting_non_base():
    spec = host_spec(DENSITY, LATER)
    assert (spec.scope, spec.target) == (ScopeWithoutNonBase.INPUT, Target.NON_BASE)
    assert spec.default is MISSING


def test_pypi_015_declares_per_model_parameters_as_non_base():
    assert host_spec(DENSITY, PYPI_015).scope is ScopeWithNonBase.NON_BASE


def test_shared_parameters_are_shared_in_both_revisions():
    assert host_spec(LAMBDA, LATER).scope is ScopeWithoutNonBase.SHARED
    assert host_spec(LAMBDA, PYPI_015).default == 1.0


def test_an_api_with_neither_way_is_a_loud_error_naming_the_host():
    with pytest.raises(IncompatibleMergeKit, match="cannot attach to MergeKit .*InputParameterTarget"):
        per_model_scope(NEITHER)
