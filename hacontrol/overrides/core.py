"""Override records, their versions, the last-writer-wins merge and the drain state machine (pure).

An override is one operator decision about one real server of one service (``Override``): drain
it (weight 0 now, removed once its connections end or at a deadline), disable it (removed now),
enable it (back to the configured values), give it a weight, or clear (forget the decision). Each
carries a ``Version`` (a Lamport counter and the node that set it): of two records for the same
server the higher version wins everywhere, so two directors that exchanged their records agree
(``merge``). ``clear`` and ``enable`` are records too (tombstones): they must win over an older
drain the peer still holds.

A real server removed from the config while it still has connections is not cut: it leaves
(``Leaving``) at weight 0 with a deadline, local to this node (both nodes reload the same file).

Times here are wall-clock seconds (``set_at``, ``deadline_at``): they survive a restart and mean
the same on the peer, which a monotonic clock does not. ``drain_step`` takes ``now`` and the
connection count read from the kernel and says whether a drain is over. No I/O.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, get_args

from hacontrol.dataplane.table import DestKey, ServiceKey, ServiceSpec, Table
from hacontrol.model import host_port

Action = Literal["drain", "disable", "enable", "weight", "clear"]
ACTIONS: tuple[str, ...] = get_args(Action)
MAX_WEIGHT = 65535  # what IPVS takes (a u32 in fact; nft slots are capped anyway)
MAX_DEADLINE = 7 * 86400.0
MAX_RECORDS = 20000  # a file or a peer offering more is refused


@dataclass(frozen=True, order=True)
class Version:
    """Lamport counter, then node name: a total order both directors compute alike."""

    counter: int
    node: str

    def __str__(self) -> str:
        return f"{self.node}#{self.counter}"


OverrideKey = tuple[str, str]  # (service name, real server "address:port")


@dataclass(frozen=True)
class Override:
    service: str
    server: str  # host_port of the real server, as the status shows it
    action: Action
    version: Version
    set_at: float  # wall seconds
    weight: int | None = None  # action "weight"
    deadline_at: float | None = None  # action "drain": wall seconds when it is cut anyway

    @property
    def key(self) -> OverrideKey:
        return (self.service, self.server)

    @property
    def active(self) -> bool:
        """False for the tombstones (clear, enable): the configured values apply."""
        return self.action in ("drain", "disable", "weight")


@dataclass(frozen=True)
class Leaving:
    """A destination the config no longer lists, kept at weight 0 until it drains."""

    service: ServiceKey
    dest: DestKey
    forwarding: str
    spec: ServiceSpec  # the service's settings, should the whole service be gone
    since: float  # wall seconds
    deadline_at: float


Records = Mapping[OverrideKey, Override]


class CommandError(ValueError):
    """A command that names no such service or server, or a bad value (nothing changed)."""


def canonical_server(text: str) -> str:
    """``address:port`` in the form the status shows; CommandError when it is not one."""
    try:
        dk = dest_of(text)
        addr = ipaddress.ip_address(dk.address)
    except ValueError:
        raise CommandError(f"real server must be address:port, got {text!r}") from None
    if not 1 <= dk.port <= 65535:
        raise CommandError(f"real server port must be 1..65535, got {text!r}")
    return host_port(str(addr), dk.port)


def dest_of(server: str) -> DestKey:
    """The destination of a record's ``server`` (ValueError when it is not address:port)."""
    host, _, port = server.rpartition(":")
    return DestKey(host.strip("[]"), int(port))


def holds(kernel: Table, pair: tuple[ServiceKey, DestKey]) -> bool:
    """The kernel table has that destination in that service."""
    svc = kernel.get(pair[0])
    return svc is not None and pair[1] in svc.dests


def validate(o: Override) -> None:
    """ValueError when a record is not one this code could have made (a file, the peer)."""
    if o.action not in ACTIONS:
        raise ValueError(f"unknown action {o.action!r}")
    if not o.service or len(o.service) > 128 or not o.server or len(o.server) > 64:
        raise ValueError("service and server must be 1..128 and 1..64 characters")
    if o.version.counter < 1 or not o.version.node or len(o.version.node) > 64:
        raise ValueError("version counter must be >= 1 with a node name of 1..64 characters")
    if (o.action == "weight") != (o.weight is not None):
        raise ValueError("a weight goes with action weight, and only with it")
    if o.weight is not None and not 0 <= o.weight <= MAX_WEIGHT:
        raise ValueError(f"weight must be 0..{MAX_WEIGHT}")
    if (o.action == "drain") != (o.deadline_at is not None):
        raise ValueError("a deadline goes with action drain, and only with it")


def next_counter(records: Iterable[Override], floor: int = 0) -> int:
    """The counter a new local record takes: above every counter seen (Lamport)."""
    return max([floor, *(o.version.counter for o in records)]) + 1


def merge(
    local: Records, remote: Iterable[Override]
) -> tuple[dict[OverrideKey, Override], set[OverrideKey]]:
    """``local`` with every newer ``remote`` record taken (last writer wins); the keys changed."""
    out = dict(local)
    changed: set[OverrideKey] = set()
    for o in remote:
        mine = out.get(o.key)
        if mine is None or o.version > mine.version:
            out[o.key] = o
            changed.add(o.key)
    return out, changed


def drain_step(deadline_at: float, now: float, conns: int | None, in_kernel: bool) -> str | None:
    """Whether a drain is over, and why: "not in kernel" (nothing to wait for), "drained" (no
    connection left), "deadline"; None while it goes on. ``conns`` None = unknown (the plane
    could not count): only the deadline ends it."""
    if not in_kernel:
        return "not in kernel"
    if conns == 0:
        return "drained"
    if now >= deadline_at:
        return "deadline"
    return None


def summary(records: Records) -> str:
    """A short stable digest of a record set (logs): count and highest version."""
    if not records:
        return "0 records"
    top = max(o.version for o in records.values())
    return f"{len(records)} records, newest {top}"
