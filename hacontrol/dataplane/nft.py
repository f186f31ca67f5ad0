"""The nftables data plane: the whole desired table as nftables tables the daemon owns (a main
table and, past 64 services, up to 16 service tables: ``hacontrol.dataplane.nft_shards``),
replaced as one.

For kernels without IPVS. The plane keeps the table as it last read or wrote it. An apply of a
few actions (a health change) is a few commands on the touched services' own objects, set and
map elements and the service's own chain (``hacontrol.dataplane.nft_delta``), in one transaction:
the table and its base chains stay. The whole desired table is rendered and replaced atomically
(one JSON batch: add + delete + add table and all its contents; established flows
keep their conntrack NAT bindings) only when the plane does not hold a table it trusts: none yet,
a hand-edited one (a service read back ``altered:``), or after a failed apply. Other nftables
tables are never touched. An empty desired table deletes our table. A snapshot is read and
parsed by a child process (``hacontrol.dataplane.nft_read``), not on the event loop.
``commands`` counts the commands sent and ``rewrites`` the whole-table replacements (tests, the
benchmark). An event's commands go as our own nf_tables netlink batch (``hacontrol.dataplane.
nftnl``: no cache listing of the table first, so the cost does not grow with the table; the
kernel's acks confirm the commit); a batch it cannot encode exactly, or every batch when its
socket is refused, goes to nft instead (logged once). Through nft, small batches go through
libnftables in the daemon's process on a thread of its own, big ones (a whole table) and listings
through the nft binary, which is also the fallback (``hacontrol.dataplane.nft_exec``). A change
someone else makes to our table (``nft flush table``, ``nft delete table``) is seen in the
nf_tables notifications (``hacontrol.dataplane.nft_watch``, started by ``watch``) and asks the
reconciler for a resync at once; our own commits (this process's threads, among them the netlink
writer's and libnftables', and the nft children we start) are not.

Rendering (the table layout, the slot schedules) lives in the pure
``hacontrol.dataplane.nft_render``, reading back (detecting hand edits) in the pure
``nft_readback``; this module sends the batches and is the ``Dataplane``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action, apply_in_place
from hacontrol.dataplane.nft_delta import Refs, address_refs, delta
from hacontrol.dataplane.nft_exec import NftExec
from hacontrol.dataplane.nft_read import read_table
from hacontrol.dataplane.nft_readback import ALTERED, parse_key
from hacontrol.dataplane.nft_render import EXACT, FAMILY, WEIGHT_MAPS, NftRenderer, check
from hacontrol.dataplane.nft_shards import COUNTS, Layout, target_count
from hacontrol.dataplane.nft_slots import MAX_SLOTS, slots_for, smooth_slots
from hacontrol.dataplane.nft_watch import NftWatch
from hacontrol.dataplane.nftnl import NftNetlink
from hacontrol.dataplane.table import ServiceKey, Table

__all__ = [
    "ALTERED",
    "EXACT",
    "FAMILY",
    "MAX_SLOTS",
    "WEIGHT_MAPS",
    "NftDataplane",
    "NftRenderer",
    "check",
    "parse_key",
    "run_nft",
    "slots_for",
    "smooth_slots",
]

log = logs.get("hacontrol.dataplane.nft")


async def run_nft(
    *args: str,
    stdin: bytes | None = None,
    netns: str | None = None,
    limit: float = 10.0,
    started: Callable[[int], None] | None = None,
) -> tuple[int, str, str]:
    """Run nft (in the named namespace ``netns`` if given, killed after ``limit`` seconds):
    (exit status, stdout, stderr). ``started`` is told the child's pid (``ip netns exec``
    execs nft in the same process), so the notification watch can tell its commits as ours.

    A batch goes in through a memfd, not a pipe: nft opens ``-f -`` as /dev/stdin, which fails
    on the socketpairs uvloop uses for subprocess pipes. Shared by every nftables table the daemon
    owns (the data plane's, the SNAT one)."""
    argv = ["nft", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    fd = os.memfd_create("hacontrol-nft")
    try:
        if stdin:
            os.write(fd, stdin)
            os.lseek(fd, 0, os.SEEK_SET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise DataplaneError(f"nftables: cannot run nft: {e}") from e
    finally:
        os.close(fd)
    if started is not None:
        started(proc.pid)
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DataplaneError(f"nftables: nft {args[0]} timed out after {limit}s") from None
    return proc.returncode or 0, out.decode(), err.decode().strip()


class NftDataplane(NftRenderer):
    """One nftables table rendered from the desired table, replaced atomically."""

    kind = "nftables"
    forwarding_in_place = True  # whole-table plane: actions are informative only
    whole_table = True  # every service in our table is ours (the reconciler owns them all)

    def ipvs_requests(self) -> None:
        """No kernel IPVS connections: in-flight ones are kept by the connection hand-off."""
        return None

    def __init__(
        self,
        table_name: str = "hacontrol",
        *,
        netns: str | None = None,
        timeout: float = 10.0,
        in_process: bool = True,
        netlink: bool = True,
        shards: int | None = None,
    ) -> None:
        if shards is not None and shards not in COUNTS:
            raise ValueError(f"shards: one of {COUNTS}, got {shards}")
        super().__init__(table_name, shards or 1)
        self.fixed_count = shards  # None: as many service tables as the services need
        self._expected: int | None = None  # services after the pass being applied
        self.netns = netns  # run nft inside this named namespace (lab, tests)
        self.timeout = timeout
        # batches through libnftables in the daemon (no fork + exec per event), else nft
        self.exec = NftExec(self._run_binary, netns=netns, limit=timeout, prefer_lib=in_process)
        # per-event deltas as our own nf_tables netlink batch (no cache listing by nft first)
        self.netlink = NftNetlink(netns=netns, limit=timeout) if netlink else None
        self._children: deque[int] = deque(maxlen=32)  # pids of the last nft children we ran
        self.watcher: NftWatch | None = None
        self._warned: set[str] = set()
        self._state: Table | None = None  # our table as last read or written; None: unknown
        self._exists = False  # the kernel has our table
        self._trusted = False  # no service of it reads back altered: commands can change it
        self._refs = Refs()
        self.commands = 0
        self.rewrites = 0

    def _warn_approximations(self, table: Table) -> None:
        for svc in table.values():
            sched = svc.spec.scheduler
            if sched not in EXACT and sched not in self._warned:
                self._warned.add(sched)
                log.warning(
                    "dataplane.nft_approximation",
                    scheduler=sched,
                    reason=f"nftables has no {sched}: weighted round-robin (numgen) used",
                )

    async def _run_binary(self, *args: str, **kw: Any) -> tuple[int, str, str]:
        return await run_nft(*args, started=self._children.append, **kw)

    def ours(self, pid: int) -> bool:
        """Whether the task that committed an nftables transaction is ours: a thread of this
        process (the netlink writer and libnftables run on one) or one of the last nft
        children it started."""
        return pid in self._children or os.path.exists(f"/proc/self/task/{pid}")

    # -- the Dataplane protocol -----------------------------------------------------------------

    def watch(self, changed: Callable[[str, int], None]) -> None:
        """Watch the nf_tables notifications; ``changed(reason, count)`` on foreign changes to
        our table (``hacontrol.dataplane.nft_watch``)."""
        if self.watcher is None:
            self.watcher = NftWatch(self.owns, changed, self.ours, netns=self.netns)
            self.watcher.start()

    async def _batch(self, doc: dict[str, object], binary: bool = False) -> tuple[int, str, str]:
        return await self.exec.batch(json.dumps(doc).encode(), binary=binary)

    def expect(self, services: int) -> None:
        """The pass about to apply leaves ``services`` services: the count of service tables
        is chosen for that (a first load or a big reload comes in batches; choosing by each
        batch's size would move every service at each power of two)."""
        self._expected = services

    def _target(self, services: int) -> int:
        if self._expected is not None:
            services = self._expected
        return self.fixed_count or target_count(services, self.count)

    async def open(self) -> None:
        rc, _, err = await self.exec.command("-j", "list", "tables")
        if rc != 0:
            raise DataplaneError(f"nftables: cannot list tables: {err} (needs root/CAP_NET_ADMIN)")

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        # read, parsed and checked by a child process (hacontrol.dataplane.nft_read): the
        # listing of a big table holds an interpreter for a long time, and this one sends the
        # heartbeats; only the compact result comes back, rebuilt in slices
        got = await read_table(self.table_name, self.netns, self.timeout)
        if got is None:
            self._remember({}, exists=False)
            return {}
        table, count = got
        self.layout = Layout(self.table_name, count)
        self._remember(table, exists=True)
        return table

    def _remember(self, table: Table, *, exists: bool) -> None:
        self._state = {k: v for k, v in table.items()}
        self._exists = exists
        self._trusted = exists and not any(
            s.spec.scheduler.startswith(ALTERED) for s in table.values()
        )
        self._refs = address_refs(table, self)

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        """Apply ``actions`` on the table as this plane knows it (``desired``, the touched
        services' target, is not needed): commands on the touched services' objects, or the
        whole table rendered when the kernel's is missing or not trusted."""
        if not actions:
            return
        if self._state is None:
            raise DataplaneError("nftables: the table was not read yet (snapshot first)")
        new = apply_in_place(dict(self._state), actions)
        self._warn_approximations({a.service: new[a.service] for a in actions if a.service in new})
        count = self._target(len(new))  # a new count moves every service
        whole = not (self._exists and self._trusted) or not new or count != self.count
        try:
            if whole:
                self.layout = Layout(self.table_name, count)
                doc = self.render(new)
                self.rewrites += 1
            else:
                refs = self._refs.copy()
                touched = {a.service for a in actions}
                doc = {"nftables": delta(self, self._state, new, touched, refs)}
            self.commands += len(doc["nftables"])
            # a delta goes as our own netlink batch when it can, else (and a whole table, and
            # the rare delta adding or deleting a service table: the encoder writes no tables)
            # to nft; with service tables through the binary: libnftables would keep its cache
            # of every table (8.7 MB for 17 tables of 64 services, measured)
            cmds = doc["nftables"]
            tables = whole or any("table" in what for c in cmds for what in c.values())
            if tables or not await self._send_netlink(cmds):
                rc, _, err = await self._batch(doc, binary=tables and self.count > 1)
                if rc != 0:
                    raise DataplaneError(f"nftables: apply failed: {err[-500:]}")
        except BaseException:
            self._state = None  # unknown: the reconciler reads the table again
            raise
        if not whole:
            self._state, self._refs = new, refs
        else:
            self._remember(new, exists=bool(new))

    async def _send_netlink(self, commands: list[dict[str, object]]) -> bool:
        return self.netlink is not None and await self.netlink.send(self.tables(), commands)

    async def replace(self, table: Table) -> None:
        """Render ``table`` whole and replace ours with it atomically (tests, the benchmark)."""
        count = self.fixed_count or target_count(len(table), self.count)
        self.layout = Layout(self.table_name, count)
        doc = self.render(table)
        self._warn_approximations(table)
        self.rewrites += 1
        rc, _, err = await self._batch(doc, binary=self.count > 1)
        if rc != 0:
            self._state = None
            raise DataplaneError(f"nftables: apply failed: {err[-500:]}")
        self._remember(table, exists=bool(table))

    async def remove(self) -> None:
        """Delete our table (stop without keep_on_stop; tests): the batch of an empty table."""
        doc = self.render({})
        rc, _, err = await self._batch(doc)
        if rc != 0:
            raise DataplaneError(f"nftables: delete tables {self.table_name}*: {err}")
        self._remember({}, exists=False)

    async def close(self) -> None:
        """Stop the watch and the libnftables thread; the table stays (a restart must not drop
        traffic)."""
        if self.watcher is not None:
            await self.watcher.stop()
            self.watcher = None
        self.exec.close()
        if self.netlink is not None:
            self.netlink.close()
