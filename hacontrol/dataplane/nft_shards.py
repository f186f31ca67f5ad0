"""Which nftables table holds a service on the nftables plane (pure, no I/O).

The kernel validates a whole nftables table, every chain its verdict maps reach, whenever a
transaction adds a nat rule or a verdict element, as a health change's does: in one table the
commit of one change grew with the number of services (0.61 ms at 1,000 services against 0.24 ms
at 10, ``bench/nft_transaction.py``). So past ``PER_SHARD`` services, the services' own objects
(their chains, dnat rules, verdict map elements) are spread over ``count`` service tables
``<main>_<i>of<count>``, i = crc32 of the key mod count: the same in every process and on both
directors, and readable from the kernel's table names alone. With ``count`` 1 they stay in the
main table: a small director has one table, as before the service tables.

Every nft command on the host lists every table first (nft 1.0.6 allocates its caches per
table: ~0.3 ms a table, for any command, ours or an operator's), so the count grows with the
services (``target_count``: a power of two, 64 services a table, at most 16), with hysteresis: a
count stays while the services need no more tables and at least a quarter of them. A count change
moves every service, which the plane does as one atomic whole-table batch.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

from hacontrol.dataplane.table import ServiceKey

PER_SHARD = 64  # services a service table holds, about
COUNTS = (1, 2, 4, 8, 16)


def target_count(services: int, current: int | None = None) -> int:
    """The number of service tables for ``services`` services, keeping ``current`` while it
    is enough and not four times too many."""
    want = next((c for c in COUNTS if c * PER_SHARD >= services), COUNTS[-1])
    if current in COUNTS and want <= current < want * 4:
        return current
    return want


def shard_index(key: ServiceKey, count: int) -> int:
    return zlib.crc32(f"{key.protocol} {key.address} {key.port}".encode()) % count


@dataclass(frozen=True)
class Layout:
    """Where the services of a main table named ``main`` go, with ``count`` service tables."""

    main: str
    count: int = 1

    def shard(self, key: ServiceKey) -> str:
        """The table holding ``key``'s chain, rule and verdict element."""
        if self.count == 1:
            return self.main
        return f"{self.main}_{shard_index(key, self.count)}of{self.count}"

    def every_name(self) -> list[str]:
        """Every table name of ours, whatever the count: the main one first."""
        return [self.main, *(f"{self.main}_{i}of{c}" for c in COUNTS[1:] for i in range(c))]

    def parse(self, name: str) -> int | None:
        """The count of one of our table names (1: the main one), None when not ours."""
        if name == self.main:
            return 1
        m = re.fullmatch(rf"{re.escape(self.main)}_(\d+)of(\d+)", name)
        if m is None or int(m[2]) not in COUNTS[1:] or int(m[1]) >= int(m[2]):
            return None
        return int(m[2])
