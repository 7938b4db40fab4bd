"""``hosts.HOSTS`` is the one table of hosts: the start-up hook's copy, pyproject's entry points
and the adapters it names follow it, and discovery registers through it alone."""

import sys
from importlib.metadata import distribution
from types import ModuleType, SimpleNamespace

import pytest

import mergekit_cabs_hook
from mergekit_cabs import discovery
from mergekit_cabs.hosts import HOSTS, Host
from mergekit_cabs.hosts.guards import IncompatibleMergeKit


def test_the_start_up_hook_watches_the_trigger_of_every_host_of_the_table():
    assert mergekit_cabs_hook.TRIGGERS == tuple(host.trigger for host in HOSTS)


def test_each_host_group_holds_our_entry_point_and_no_other_group_does():
    ours = {(entry.group, entry.value) for entry in distribution("mergekit-cabs").entry_points
            if entry.group != "console_scripts"}
    assert ours == {(host.trigger, host.entry_point) for host in HOSTS}


@pytest.mark.parametrize("host", HOSTS, ids=lambda host: host.package)
def test_each_entry_point_of_the_table_is_a_function_of_discovery(host):
    module, _, name = host.entry_point.partition(":")
    assert module == discovery.__name__ and callable(getattr(discovery, name))


@pytest.mark.parametrize("reference", [ref for host in HOSTS for ref in host.adapters])
def test_each_adapter_the_table_names_serves_its_host_with_the_adapter_protocol(reference):
    adapter = discovery.adapter(reference)
    host = next(host for host in HOSTS if reference in host.adapters)
    assert adapter.package == host.package
    assert isinstance(adapter.supported, str)
    assert callable(adapter.applies) and callable(adapter.register)


def fake_adapter(applies: bool, supported: str) -> SimpleNamespace:
    return SimpleNamespace(package="fakehost", supported=supported, applies=lambda: applies,
                           register=lambda: (supported,))


@pytest.fixture
def fake_host(monkeypatch):
    """A host that exists only in the table: ``fakehost`` with three adapters, the first of
    which does not apply."""
    adapters = ModuleType("fake_adapters")
    adapters.OLD, adapters.NEW, adapters.NEWER = (fake_adapter(False, "0.1"), fake_adapter(True, "0.2"),
                                                  fake_adapter(True, "0.3"))
    monkeypatch.setitem(sys.modules, "fake_adapters", adapters)
    monkeypatch.setitem(sys.modules, "fakehost", ModuleType("fakehost"))
    monkeypatch.setitem(sys.modules, "fakehost.merge_methods", ModuleType("fakehost.merge_methods"))
    host = Host("fakehost", ("fake_adapters:OLD", "fake_adapters:NEW", "fake_adapters:NEWER"))
    monkeypatch.setitem(discovery.HOSTS_BY_PACKAGE, "fakehost", host)
    return adapters


def test_discovery_registers_a_new_host_of_the_table_through_its_first_adapter_that_applies(fake_host):
    assert discovery.register_with("fakehost") == ("0.2",)


def test_a_host_no_adapter_applies_to_is_refused_with_the_last_adapters_release(fake_host):
    fake_host.NEW.applies = fake_host.NEWER.applies = lambda: False
    with pytest.raises(IncompatibleMergeKit, match="fakehost==0.3"):
        discovery.register_with("fakehost")
