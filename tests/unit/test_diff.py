"""The table diff: table-driven cases and properties over random tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.dataplane.diff import Action, apply_actions, describe, diff, foreign
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)

S1 = ServiceKey("tcp", "198.51.100.10", 80)
S2 = ServiceKey("tcp", "198.51.100.11", 80)
S6 = ServiceKey("udp", "2001:db8::10", 53)
D1, D2, D3 = DestKey("192.0.2.11", 80), DestKey("192.0.2.12", 80), DestKey("192.0.2.13", 80)
WRR = ServiceSpec("wrr", 0)


def svc(spec: ServiceSpec = WRR, **dests: DestSpec) -> TableService:
    keys = {"d1": D1, "d2": D2, "d3": D3}
    return TableService(spec, {keys[k]: v for k, v in dests.items()})


def ops(actions: list[Action]) -> list[tuple[str, ServiceKey, DestKey | None]]:
    return [(a.op, a.service, a.dest) for a in actions]


def test_equal_tables_give_no_actions() -> None:
    t: Table = {S1: svc(d1=DestSpec(1), d2=DestSpec(2))}
    assert diff(t, t, {S1}) == []


def test_add_service_then_dests() -> None:
    want: Table = {S1: svc(d1=DestSpec(1), d2=DestSpec(1))}
    assert ops(diff(want, {}, set())) == [
        ("add_service", S1, None),
        ("add_dest", S1, D1),
        ("add_dest", S1, D2),
    ]


@pytest.mark.parametrize(
    ("owned", "expect"),
    [
        ({S2}, [("del_service", S2, None)]),  # owned and no longer desired: deleted
        (set(), []),  # foreign: never touched
    ],
)
def test_owned_vs_foreign(owned: set[ServiceKey], expect: list[object]) -> None:
    want: Table = {S1: svc(d1=DestSpec(1))}
    have: Table = {S1: svc(d1=DestSpec(1)), S2: svc(d2=DestSpec(1))}
    assert ops(diff(want, have, owned)) == expect


def test_update_service_and_weight() -> None:
    want: Table = {S1: svc(ServiceSpec("sh", 30), d1=DestSpec(5))}
    have: Table = {S1: svc(d1=DestSpec(1))}
    acts = diff(want, have, {S1})
    assert ops(acts) == [("update_service", S1, None), ("update_dest", S1, D1)]
    assert acts[0].spec == ServiceSpec("sh", 30)
    assert acts[1].dest_spec == DestSpec(5)


def test_forwarding_change_in_place_or_replace() -> None:
    want: Table = {S1: svc(d1=DestSpec(1, "dr"))}
    have: Table = {S1: svc(d1=DestSpec(1, "nat"))}
    assert ops(diff(want, have, {S1})) == [("update_dest", S1, D1)]
    acts = diff(want, have, {S1}, forwarding_in_place=False)
    assert ops(acts) == [("del_dest", S1, D1), ("add_dest", S1, D1)]
    assert apply_actions(have, acts) == want


def test_make_before_break_order() -> None:
    """Replacing every dest adds the new ones before removing the old: never empty."""
    want: Table = {S1: svc(d2=DestSpec(1), d3=DestSpec(1)), S6: svc()}
    have: Table = {S1: svc(d1=DestSpec(1)), S2: svc(d1=DestSpec(1))}
    acts = diff(want, have, {S1, S2})
    assert ops(acts) == [
        ("add_service", S6, None),
        ("add_dest", S1, D2),
        ("add_dest", S1, D3),
        ("del_dest", S1, D1),
        ("del_service", S2, None),
    ]
    # replay step by step: S1 never has zero destinations
    t = have
    for a in acts:
        t = apply_actions(t, [a])
        assert len(t[S1].dests) > 0


def test_action_str_is_readable() -> None:
    a = Action("add_dest", S6, dest=DestKey("2001:db8::2", 53), dest_spec=DestSpec(3))
    assert str(a) == "add_dest udp/[2001:db8::10]:53 -> [2001:db8::2]:53 weight=3 forwarding=nat"
    assert str(Action("del_service", S1)) == "del_service tcp/198.51.100.10:80"


@pytest.mark.parametrize(
    "action",
    [
        Action("add_service", S1, spec=WRR),
        Action("del_service", S2),
        Action("add_dest", S1, dest=D1, dest_spec=DestSpec()),
        Action("update_dest", S1, dest=D2, dest_spec=DestSpec()),
        Action("del_dest", S1, dest=D2),
    ],
)
def test_apply_refuses_what_the_kernel_would(action: Action) -> None:
    have: Table = {S1: svc(d1=DestSpec(1))}
    with pytest.raises(ValueError):
        apply_actions(have, [action])
    assert have == {S1: svc(d1=DestSpec(1))}  # input untouched


def test_action_validation() -> None:
    with pytest.raises(ValueError):
        Action("add_service", S1)
    with pytest.raises(ValueError):
        Action("add_dest", S1, dest=D1)


def test_describe() -> None:
    want: Table = {S1: svc(d1=DestSpec(1), d2=DestSpec(1))}
    have: Table = {S1: svc(ServiceSpec("rr"), d1=DestSpec(0))}
    assert describe(want, have, [S1, S2]) == [
        "tcp/198.51.100.10:80 scheduler=rr persistence=0 (want wrr/0)",
        "tcp/198.51.100.10:80 -> 192.0.2.11:80 weight=0 forwarding=nat (want 1/nat)",
        "tcp/198.51.100.10:80 -> 192.0.2.12:80 missing",
    ]
    assert describe(want, {}, [S1]) == ["tcp/198.51.100.10:80 missing"]


# -- properties ---------------------------------------------------------------------------------

service_keys = st.sampled_from(
    [S1, S2, S6, ServiceKey("udp", "198.51.100.10", 80), ServiceKey("tcp", "2001:db8::1", 443)]
)
dest_keys = st.sampled_from([D1, D2, D3, DestKey("2001:db8:2::1", 80), DestKey("192.0.2.11", 81)])
dest_specs = st.builds(DestSpec, st.integers(0, 3), st.sampled_from(["nat", "dr", "tunnel"]))
specs = st.builds(ServiceSpec, st.sampled_from(["rr", "wrr", "sh"]), st.sampled_from([0, 30]))
services = st.builds(TableService, specs, st.dictionaries(dest_keys, dest_specs, max_size=4))
tables = st.dictionaries(service_keys, services, max_size=5)


@settings(max_examples=300, deadline=None)
@given(tables, tables, st.sets(service_keys), st.booleans())
def test_diff_then_apply_reaches_desired_plus_foreign(
    desired: Table, actual: Table, owned: set[ServiceKey], in_place: bool
) -> None:
    acts = diff(desired, actual, owned, forwarding_in_place=in_place)
    result = apply_actions(actual, acts)  # never refused: every action is valid in order
    assert result == {**foreign(actual, desired, owned), **desired}
    # foreign services are never named by any action
    for a in acts:
        assert a.service in desired or a.service in owned
    # applying again is a no-op
    assert diff(desired, result, owned | set(desired)) == []


@settings(max_examples=100, deadline=None)
@given(tables, st.sets(service_keys))
def test_diff_of_equal_tables_is_empty(table: Table, owned: set[ServiceKey]) -> None:
    assert diff(table, table, owned) == []
