"""The load-balancing table as plain values: what the kernel holds and what it should hold.

A ``Table`` maps each virtual service's key to its settings and its destinations. Both the desired
table (computed from config + health) and the actual table (read from IPVS or nftables) use these
types, so the diff and the in-memory data plane need nothing else. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacontrol.model import Forwarding, Protocol, host_port

Proto = Protocol  # the model's literals: a table holds what a config can say
Fwd = Forwarding
# IANA protocol numbers of the protocols a table holds (fixed by the IP header, so no lookup in
# /etc/protocols, which minimal hosts and containers lack)
PROTO_NUM: dict[str, int] = {"tcp": 6, "udp": 17}
PROTO_NAME: dict[int, Proto] = {6: "tcp", 17: "udp"}


@dataclass(frozen=True, order=True)
class ServiceKey:
    """Identifies a virtual service: protocol, VIP (canonical text form) and port."""

    protocol: Proto
    address: str
    port: int

    @property
    def family(self) -> int:
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return f"{self.protocol}/{host_port(self.address, self.port)}"


@dataclass(frozen=True, order=True)
class DestKey:
    address: str
    port: int

    def __str__(self) -> str:
        return host_port(self.address, self.port)


@dataclass(frozen=True)
class ServiceSpec:
    """Settings of a virtual service (everything but its destinations)."""

    scheduler: str = "wrr"
    persistence: int = 0  # seconds, 0 = off


@dataclass(frozen=True)
class DestSpec:
    weight: int = 1
    forwarding: Fwd = "nat"


@dataclass(frozen=True)
class TableService:
    spec: ServiceSpec
    dests: dict[DestKey, DestSpec] = field(default_factory=dict)


Table = dict[ServiceKey, TableService]


def copy_table(table: Table) -> Table:
    return {k: TableService(v.spec, dict(v.dests)) for k, v in table.items()}


def table_size(table: Table) -> tuple[int, int]:
    """(services, destinations)."""
    return len(table), sum(len(s.dests) for s in table.values())
