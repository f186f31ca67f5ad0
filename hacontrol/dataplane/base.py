"""The data plane interface: read what the kernel holds, apply a change to it.

Implementations: ``ipvs.IpvsDataplane`` (pyroute2 AsyncIPVS), ``nft.NftDataplane`` (one nftables
table owned by the daemon, replaced atomically) and ``memory.MemoryDataplane`` (unit tests,
``--dry-run``). The reconciler only ever talks to this protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.table import ServiceKey, Table


class DataplaneError(Exception):
    """An apply or snapshot failed; the reconciler logs it, retries with backoff, shows it."""


class Dataplane(Protocol):
    kind: str

    async def open(self) -> None:
        """Connect to the kernel; raise DataplaneError with a clear reason if unavailable."""

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        """The services the kernel holds now. ``owned`` is a hint; implementations may return
        more (foreign services), which the diff never touches."""

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        """Make the kernel match ``desired``. Incremental planes apply ``actions`` in order;
        whole-table planes (nftables) render ``desired`` atomically."""

    async def close(self) -> None: ...
