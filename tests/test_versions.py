"""``versions`` records Python and each named distribution's installed version, in order."""

import platform
from importlib import metadata

from mergekit_cabs.versions import versions


def test_versions_name_python_then_each_distribution_in_the_order_given():
    assert list(versions(["torch", "mergekit"])) == ["python", "torch", "mergekit"]


def test_versions_are_the_installed_ones():
    recorded = versions(["torch"])
    assert recorded == {"python": platform.python_version(), "torch": metadata.version("torch")}


def test_a_distribution_that_is_not_installed_has_no_version():
    assert versions(["no-such-distribution-of-mergekit-cabs"])["no-such-distribution-of-mergekit-cabs"] is None
