"""The desired table: what the kernel should hold, from the config and the health verdicts (pure).

Rules, per real server of each service:

* UP -> a destination with the configured weight (a configured weight 0 stays 0: present, no new
  connections);
* DOWN -> absent (``on_failure: remove``) or weight 0 (``on_failure: weight0``: established flows
  keep going, no new ones);
* UNKNOWN (not checked yet) -> absent, EXCEPT when ``actual`` (the kernel table) already holds that
  destination: its kernel spec is kept as it is, so a restarted daemon adopts the running table
  without a blip until the first verdict.

The sorry server (weight 1) is present only while no real server of the service serves: none is
UP and none is an adopted UNKNOWN destination with weight > 0 (adoption must not start sending new
flows to the sorry server either). A sorry server that is also a real server overrides it.
Persistence seconds are rounded up to whole seconds (IPVS takes integers). No I/O.

``ConfigDesired`` is the same rules as a ``DesiredSource``: the reconciler asks it for one
service at a time (the services a health change touched, or a slice of a big table), so an event
costs the services it touches, not the table.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)
from hacontrol.health.state import Health
from hacontrol.model import Endpoint, IPAddress, RealServer, ServiceConfig

HealthOf = Callable[[ServiceConfig, RealServer], Health]


@functools.lru_cache(maxsize=1 << 16)
def address_text(addr: IPAddress) -> str:
    """Canonical text of an address; cached: ipaddress re-formats on every str() (costly at
    thousands of real servers per desired table or status call)."""
    return str(addr)


def service_key(svc: ServiceConfig) -> ServiceKey:
    """The table key of a configured service (canonical address text)."""
    return ServiceKey(svc.protocol, address_text(svc.vip), svc.port)


def dest_key(ep: RealServer | Endpoint) -> DestKey:
    return DestKey(address_text(ep.address), ep.port)


def service_spec(svc: ServiceConfig) -> ServiceSpec:
    persistence = math.ceil(svc.persistence) if svc.persistence > 0 else 0
    return ServiceSpec(scheduler=svc.scheduler, persistence=persistence)


def desired_service(
    svc: ServiceConfig, health: HealthOf, actual: TableService | None = None
) -> TableService:
    """The destinations one service should have now."""
    dests: dict[DestKey, DestSpec] = {}
    serving = False
    for rs in svc.real_servers:
        dk = dest_key(rs)
        if dk in dests:
            raise ValueError(f"service {svc.name}: real server {dk} listed twice")
        state = health(svc, rs)
        if state is Health.UP:
            dests[dk] = DestSpec(weight=rs.weight, forwarding=svc.forwarding)
            serving = True
        elif state is Health.DOWN:
            if svc.on_failure == "weight0":
                dests[dk] = DestSpec(weight=0, forwarding=svc.forwarding)
        elif actual is not None and dk in actual.dests:
            kept = actual.dests[dk]
            dests[dk] = kept
            serving = serving or kept.weight > 0
    if svc.sorry_server is not None and not serving:
        dests[dest_key(svc.sorry_server)] = DestSpec(weight=1, forwarding=svc.forwarding)
    return TableService(service_spec(svc), dests)


def desired_table(
    services: Sequence[ServiceConfig],
    health: HealthOf,
    actual: Table | None = None,
) -> Table:
    """The whole desired table; ``actual`` (the kernel's) only serves to adopt UNKNOWN dests."""
    out: Table = {}
    names: dict[ServiceKey, str] = {}
    for svc in services:
        key = service_key(svc)
        if key in out:
            raise ValueError(f"services {names[key]} and {svc.name} both use {key}")
        names[key] = svc.name
        out[key] = desired_service(svc, health, None if actual is None else actual.get(key))
    return out


class DesiredSource(Protocol):
    """The desired table, one service at a time (pure; see ``ConfigDesired``)."""

    def keys(self) -> list[ServiceKey]:
        """Every desired service, in a stable order; ValueError when two services clash."""

    def service(self, key: ServiceKey, actual: TableService | None) -> TableService | None:
        """What ``key`` should hold now (``actual``: the kernel's, for adoption); None when the
        service is not desired."""


class ConfigDesired:
    """``desired_table`` of ``services`` per service: an index from key to service."""

    def __init__(self, services: Sequence[ServiceConfig], health: HealthOf) -> None:
        self._services = services
        self._health = health
        self._index: dict[ServiceKey, ServiceConfig] | None = None

    def _by_key(self) -> dict[ServiceKey, ServiceConfig]:
        if self._index is None:
            index: dict[ServiceKey, ServiceConfig] = {}
            for svc in self._services:
                key = service_key(svc)
                if key in index:
                    raise ValueError(f"services {index[key].name} and {svc.name} both use {key}")
                index[key] = svc
            self._index = index
        return self._index

    def keys(self) -> list[ServiceKey]:
        return list(self._by_key())

    def service(self, key: ServiceKey, actual: TableService | None) -> TableService | None:
        svc = self._by_key().get(key)
        return None if svc is None else desired_service(svc, self._health, actual)

    def build(self, actual: Table | None = None) -> Table:
        """The whole table at once (``desired_table``)."""
        return desired_table(self._services, self._health, actual)
