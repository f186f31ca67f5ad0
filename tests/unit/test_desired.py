"""The desired-table builder: every rule, table-driven."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import replace

import pytest

from hacontrol.dataplane.desired import desired_table, service_key
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.health.state import Health
from hacontrol.model import Endpoint, RealServer, ServiceConfig

U, D, N = Health.UP, Health.DOWN, Health.UNKNOWN
VIP = ipaddress.ip_address("198.51.100.10")
RS = (
    RealServer(ipaddress.ip_address("192.0.2.11"), 8080, 3),
    RealServer(ipaddress.ip_address("192.0.2.12"), 8080, 1),
)
K1, K2 = DestKey("192.0.2.11", 8080), DestKey("192.0.2.12", 8080)
SORRY = Endpoint(ipaddress.ip_address("192.0.2.99"), 80)
KS = DestKey("192.0.2.99", 80)
KEY = ServiceKey("tcp", "198.51.100.10", 80)
BASE = ServiceConfig(name="web", vip=VIP, port=80, real_servers=RS)


def health_of(states: tuple[Health, ...]) -> Callable[[ServiceConfig, RealServer], Health]:
    """Health by real-server endpoint (the weight is not part of a target's identity)."""
    by_ep = {rs.endpoint: st for rs, st in zip(RS, states, strict=True)}
    return lambda svc, rs: by_ep[rs.endpoint]


def dests(table: Table) -> dict[DestKey, DestSpec]:
    return table[KEY].dests


@pytest.mark.parametrize(
    ("name", "svc", "states", "actual", "expect"),
    [
        ("all up", BASE, (U, U), None, {K1: DestSpec(3), K2: DestSpec(1)}),
        ("down removed", BASE, (U, D), None, {K1: DestSpec(3)}),
        (
            "down weight0",
            replace(BASE, on_failure="weight0"),
            (U, D),
            None,
            {K1: DestSpec(3), K2: DestSpec(0)},
        ),
        ("unknown absent", BASE, (U, N), None, {K1: DestSpec(3)}),
        (
            "unknown adopted from kernel as is",
            BASE,
            (N, N),
            {KEY: TableService(ServiceSpec("rr"), {K1: DestSpec(7, "dr"), KS: DestSpec(1)})},
            {K1: DestSpec(7, "dr")},  # sorry server not added: the adopted dest serves
        ),
        (
            "verdict overrides adoption",
            BASE,
            (D, U),
            {KEY: TableService(ServiceSpec(), {K1: DestSpec(7), K2: DestSpec(7)})},
            {K2: DestSpec(1)},
        ),
        ("nothing up: empty service", BASE, (D, N), None, {}),
        (
            "sorry server while none up",
            replace(BASE, sorry_server=SORRY),
            (D, N),
            None,
            {KS: DestSpec(1)},
        ),
        (
            "sorry server with weight0 dests",
            replace(BASE, sorry_server=SORRY, on_failure="weight0"),
            (D, D),
            None,
            {K1: DestSpec(0), K2: DestSpec(0), KS: DestSpec(1)},
        ),
        (
            "sorry server removed when one is up",
            replace(BASE, sorry_server=SORRY),
            (D, U),
            None,
            {K2: DestSpec(1)},
        ),
        (
            "sorry kept while adopting a kernel that only has it",
            replace(BASE, sorry_server=SORRY),
            (N, N),
            {KEY: TableService(ServiceSpec(), {KS: DestSpec(1)})},
            {KS: DestSpec(1)},
        ),
        (
            "adopted weight-0 dest does not count as serving",
            replace(BASE, sorry_server=SORRY),
            (N, D),
            {KEY: TableService(ServiceSpec(), {K1: DestSpec(0)})},
            {K1: DestSpec(0), KS: DestSpec(1)},
        ),
        (
            "configured weight 0 is present with weight 0",
            replace(BASE, real_servers=(replace(RS[0], weight=0), RS[1])),
            (U, U),
            None,
            {K1: DestSpec(0), K2: DestSpec(1)},
        ),
        (
            "forwarding per service",
            replace(BASE, forwarding="dr"),
            (U, D),
            None,
            {K1: DestSpec(3, "dr")},
        ),
    ],
)
def test_rules(
    name: str,
    svc: ServiceConfig,
    states: tuple[Health, ...],
    actual: Table | None,
    expect: dict[DestKey, DestSpec],
) -> None:
    assert dests(desired_table([svc], health_of(states), actual)) == expect, name


def test_spec_and_persistence() -> None:
    t = desired_table([replace(BASE, scheduler="sh", persistence=2.5)], health_of((U, U)))
    assert t[KEY].spec == ServiceSpec("sh", 3)
    t = desired_table([BASE], health_of((U, U)))
    assert t[KEY].spec == ServiceSpec("wrr", 0)


def test_ipv6_canonical_keys() -> None:
    rs = RealServer(ipaddress.ip_address("2001:0db8:0002:0000::0011"), 80, 2)
    svc = ServiceConfig(
        name="v6",
        vip=ipaddress.ip_address("2001:db8:0:0::10"),
        port=443,
        protocol="udp",
        real_servers=(rs,),
    )
    t = desired_table([svc], lambda s, r: U)
    key = ServiceKey("udp", "2001:db8::10", 443)
    assert service_key(svc) == key
    assert t == {key: TableService(ServiceSpec(), {DestKey("2001:db8:2::11", 80): DestSpec(2)})}


def test_foreign_and_other_kernel_services_are_not_copied() -> None:
    other = ServiceKey("tcp", "198.51.100.99", 80)
    actual: Table = {other: TableService(ServiceSpec(), {K1: DestSpec(1)})}
    assert set(desired_table([BASE], health_of((U, U)), actual)) == {KEY}


def test_duplicate_service_key_is_an_error() -> None:
    with pytest.raises(ValueError, match=re.escape("web and web2 both use tcp/198.51.100.10:80")):
        desired_table([BASE, replace(BASE, name="web2")], health_of((U, U)))


def test_duplicate_real_server_is_an_error() -> None:
    svc = replace(BASE, real_servers=(RS[0], RS[0]))
    with pytest.raises(ValueError, match="listed twice"):
        desired_table([svc], lambda s, r: U)
