"""The data plane interface: read what the kernel holds, apply a change to it, and say what the
plane can do (its capabilities), so no caller has to probe for attributes or concrete classes.

Implementations: ``ipvs.IpvsDataplane`` (pyroute2 AsyncIPVS), ``nft.NftDataplane`` (nftables
tables owned by the daemon, replaced atomically) and ``memory.MemoryDataplane`` (unit tests,
``--dry-run``). The reconciler and the daemon only ever talk to these protocols.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.table import ServiceKey, Table


class DataplaneError(Exception):
    """An apply or snapshot failed; the reconciler logs it, retries with backoff, shows it."""


class IpvsRequests(Protocol):
    """The IPVS generic-netlink requests the connection sync daemons need
    (``hacontrol.dataplane.ipvs_sync``); ``IpvsDataplane`` provides them."""

    async def dump_nested(self, cmd: int, body: bytes, want: int) -> list[dict[int, Any]]: ...

    async def request(self, cmd: int, body: bytes) -> int: ...


class Dataplane(Protocol):
    @property
    def kind(self) -> str:
        """ipvs | nftables | memory: logged and shown in the status."""

    @property
    def whole_table(self) -> bool:
        """True when every service the plane reads back is ours (nftables: one table of our
        own), so the reconciler owns all of them; False when the kernel table is shared
        (IPVS: services of other tools are foreign and never touched)."""

    @property
    def forwarding_in_place(self) -> bool:
        """True when a destination's forwarding method can change in place (``update_dest``);
        False: the diff deletes and re-adds that destination."""

    def ipvs_requests(self) -> IpvsRequests | None:
        """The plane's IPVS netlink requests for the connection sync daemons (``ha.sync``);
        None on a plane without kernel IPVS connections."""

    def watch(self, changed: Callable[[str, int], None]) -> None:
        """Call ``changed(reason, count)`` when someone else changes the plane's kernel objects
        (nftables: notifications on our table; ``count`` foreign changes, coalesced), so the
        reconciler repairs them before the periodic resync. Planes that cannot tell do nothing."""

    def expect(self, services: int) -> None:
        """The pass about to apply leaves ``services`` services of ours: a plane that lays out
        its kernel objects by size (nftables: its service tables) picks that layout once for
        the whole pass, not batch by batch. Others ignore it."""

    async def open(self) -> None:
        """Connect to the kernel; raise DataplaneError with a clear reason if unavailable."""

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        """The services the kernel holds now. ``owned`` is a hint; implementations may return
        more (foreign services), which the diff never touches."""

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        """Make the kernel match ``desired``. Incremental planes apply ``actions`` in order;
        whole-table planes (nftables) render ``desired`` atomically."""

    async def close(self) -> None: ...
