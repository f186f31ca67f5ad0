"""The IPVS connection synchronisation daemons (``ipvsadm --start-daemon master|backup``).

An HA pair on the IPVS data plane keeps in-flight connections across a VIP move with the kernel's
connection sync: each director runs BOTH a master and a backup sync daemon, with the same syncid,
on the heartbeat / inside interface. Each master multicasts its connection entries, each backup
learns the peer's, so the director that takes the VIPs already holds the entries of the
connections the other one was serving (and the old active learns the new one's when it moves
back). pyroute2 0.9.7 has no API for these commands (its daemon attribute is undecoded), so this
module speaks them with the IPVS plane's own attribute encoder and socket
(``IpvsDataplane.request`` / ``dump_nested``).

It owns:
- the codec (pure): IPVS_CMD_NEW_DAEMON 9, IPVS_CMD_DEL_DAEMON 10, IPVS_CMD_GET_DAEMON 11 (a dump),
  nested IPVS_CMD_ATTR_DAEMON 3 of IPVS_DAEMON_ATTR_STATE (u32: 1 master, 2 backup),
  IPVS_DAEMON_ATTR_MCAST_IFN (NUL-terminated string, < 16 bytes), IPVS_DAEMON_ATTR_SYNC_ID (u32);
  a GET_DAEMON reply also carries SYNC_MAXLEN (u16), MCAST_GROUP(6), MCAST_PORT (u16) and
  MCAST_TTL (u8) (include/uapi/linux/ip_vs.h, net/netfilter/ipvs/ip_vs_ctl.c);
- ``plan`` (pure): which daemons to stop and start so that what runs equals the config;
- ``SyncDaemons``: reads what runs (GET_DAEMON), starts what is missing, replaces a daemon that
  runs on another interface or syncid, re-checks every resync interval (an interface that
  appears later gets its daemons then), keeps the last result for the status, and on close
  leaves the daemons running (like the kernel table) unless told not to keep them.
Errors never raise out of ``reconcile``: they are logged (``dataplane.sync_error``, once per
distinct error) and shown in the status; the next pass retries.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.dataplane.base import DataplaneError, IpvsRequests
from hacontrol.dataplane.ipvs_codec import NLA_F_NESTED, nla
from hacontrol.model import SyncConfig
from hacontrol.tasks import cancel_and_wait

__all__ = [
    "CMD_DEL_DAEMON",
    "CMD_GET_DAEMON",
    "CMD_NEW_DAEMON",
    "IpvsRequests",
    "SyncDaemon",
    "SyncDaemons",
    "daemon_attrs",
    "decode_daemon",
    "plan",
]

log = logs.get("hacontrol.dataplane.ipvs_sync")

CMD_NEW_DAEMON, CMD_DEL_DAEMON, CMD_GET_DAEMON = 9, 10, 11
CMD_ATTR_DAEMON = 3
DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID, DAEMON_SYNC_MAXLEN = 1, 2, 3, 4
DAEMON_MCAST_GROUP, DAEMON_MCAST_GROUP6, DAEMON_MCAST_PORT, DAEMON_MCAST_TTL = 5, 6, 7, 8
IP_VS_IFNAME_MAXLEN = 16  # with the terminating NUL
State = Literal["master", "backup"]
STATES: tuple[State, ...] = ("master", "backup")
STATE_CODE: dict[str, int] = {"master": 1, "backup": 2}  # IP_VS_STATE_MASTER / _BACKUP
STATE_NAME: dict[int, State] = {1: "master", 2: "backup"}
Op = Literal["start", "stop"]


@dataclass(frozen=True)
class SyncDaemon:
    """One running (or wanted) sync daemon. Equality is (state, interface, syncid); the
    multicast details are what the kernel reports (None when it does not)."""

    state: State
    interface: str
    syncid: int
    maxlen: int | None = field(default=None, compare=False)
    group: str | None = field(default=None, compare=False)
    port: int | None = field(default=None, compare=False)
    ttl: int | None = field(default=None, compare=False)

    def view(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "interface": self.interface,
            "syncid": self.syncid,
            "maxlen": self.maxlen,
            "group": self.group,
            "port": self.port,
            "ttl": self.ttl,
        }


# ---------------------------------------------------------------------- codec (pure)
def daemon_attrs(state: State, interface: str | None = None, syncid: int | None = None) -> bytes:
    """The nested IPVS_CMD_ATTR_DAEMON: the state, plus interface and syncid (NEW_DAEMON needs
    all three, DEL_DAEMON only the state). ValueError for an unusable interface or syncid."""
    body = nla(DAEMON_STATE, struct.pack("=I", STATE_CODE[state]))
    if interface is not None:
        raw = interface.encode()
        if not raw or len(raw) >= IP_VS_IFNAME_MAXLEN or b"\0" in raw:
            raise ValueError(f"sync interface name must be 1-15 bytes, got {interface!r}")
        body += nla(DAEMON_MCAST_IFN, raw + b"\0")
    if syncid is not None:
        if not 0 <= syncid <= 255:
            raise ValueError(f"syncid must be 0..255, got {syncid}")
        body += nla(DAEMON_SYNC_ID, struct.pack("=I", syncid))
    return nla(CMD_ATTR_DAEMON | NLA_F_NESTED, body)


def decode_daemon(a: dict[int, Any]) -> SyncDaemon | None:
    """A GET_DAEMON reply's nested attributes -> SyncDaemon (None if it is not one)."""
    if not {DAEMON_STATE, DAEMON_MCAST_IFN, DAEMON_SYNC_ID} <= a.keys():
        return None
    state = STATE_NAME.get(struct.unpack_from("=I", a[DAEMON_STATE])[0])
    if state is None:
        return None
    ifname = bytes(a[DAEMON_MCAST_IFN]).split(b"\0", 1)[0].decode(errors="replace")
    group = None
    if len(a.get(DAEMON_MCAST_GROUP, b"")) >= 4:
        group = socket.inet_ntop(socket.AF_INET, a[DAEMON_MCAST_GROUP][:4])
    elif len(a.get(DAEMON_MCAST_GROUP6, b"")) >= 16:
        group = socket.inet_ntop(socket.AF_INET6, a[DAEMON_MCAST_GROUP6][:16])

    def num(kind: int, fmt: str) -> int | None:
        raw = a.get(kind)
        if raw is None or len(raw) < struct.calcsize(fmt):
            return None
        return int(struct.unpack_from(fmt, raw)[0])

    return SyncDaemon(
        state=state,
        interface=ifname,
        syncid=num(DAEMON_SYNC_ID, "=I") or 0,
        maxlen=num(DAEMON_SYNC_MAXLEN, "=H"),
        group=group,
        port=num(DAEMON_MCAST_PORT, "=H"),
        ttl=num(DAEMON_MCAST_TTL, "=B"),
    )


def plan(want: SyncConfig | None, running: Sequence[SyncDaemon]) -> list[tuple[Op, SyncDaemon]]:
    """The stops and starts that make ``running`` equal to ``want`` (both a master and a backup
    on its interface with its syncid; ``want`` None: nothing runs). A daemon on another
    interface or syncid is stopped before its replacement starts (the kernel runs one of each)."""
    have = {d.state: d for d in running}
    ops: list[tuple[Op, SyncDaemon]] = []
    for state in STATES:
        target = None if want is None else SyncDaemon(state, want.interface, want.syncid)
        current = have.get(state)
        if current == target:
            continue
        if current is not None:
            ops.append(("stop", current))
        if target is not None:
            ops.append(("start", target))
    return ops


# ---------------------------------------------------------------------- the I/O shell
class SyncDaemons:
    """Keeps the kernel's sync daemons equal to ``want`` through ``plane``."""

    def __init__(self, plane: IpvsRequests, want: SyncConfig, *, clock: Clock) -> None:
        self.plane = plane
        self.want = want
        self.clock = clock
        self.running: list[SyncDaemon] | None = None  # as last read; None = never read
        self.error: str | None = None
        self.checked_at: float | None = None
        self.changes = 0  # daemons started or stopped by this process
        self._task: asyncio.Task[None] | None = None

    async def read(self) -> list[SyncDaemon]:
        """The sync daemons the kernel runs now (IPVS_CMD_GET_DAEMON)."""
        out = []
        for attrs in await self.plane.dump_nested(CMD_GET_DAEMON, b"", CMD_ATTR_DAEMON):
            d = decode_daemon(attrs)
            if d is not None:
                out.append(d)
        return out

    async def _do(self, op: Op, d: SyncDaemon, reason: str) -> None:
        if op == "start":
            code = await self.plane.request(
                CMD_NEW_DAEMON, daemon_attrs(d.state, d.interface, d.syncid)
            )
            fine = code == errno.EEXIST  # started meanwhile (by another hand): re-read next pass
        else:
            code = await self.plane.request(CMD_DEL_DAEMON, daemon_attrs(d.state))
            fine = code == errno.ESRCH  # already stopped
        if code and not fine:
            name = errno.errorcode.get(code, str(code))
            raise DataplaneError(
                f"ipvs sync: {op} {d.state} daemon on {d.interface} syncid {d.syncid}: "
                f"{name} {os.strerror(code)}"
            )
        self.changes += 1
        log.info(
            "dataplane.sync",
            action=op,
            state=d.state,
            interface=d.interface,
            syncid=d.syncid,
            result="ok" if not code else errno.errorcode.get(code, str(code)),
            reason=reason,
        )

    async def reconcile(self, reason: str, *, stop_all: bool = False) -> bool:
        """Read what runs, stop and start what differs from the config (``stop_all``: stop
        every daemon), read back. False (error logged and kept for the status) on a failure."""
        target = None if stop_all else self.want
        try:
            running = await self.read()
            ops = plan(target, running)
            states = {d.state for d in running}
            for op, d in ops:
                await self._do(op, d, _why(reason, op, d, target, states))
            if ops:
                running = await self.read()
        except (DataplaneError, OSError, ValueError) as exc:
            text = str(exc) or repr(exc)
            if text != self.error:
                log.error("dataplane.sync_error", result="error", error=text, reason=reason)
            self.error = text
            self.checked_at = self.clock()
            return False
        if self.error is not None:
            log.info("dataplane.sync_ok", daemons=len(running), reason=f"{reason}: recovered")
        self.running, self.error, self.checked_at = running, None, self.clock()
        return True

    def start(self, interval: float) -> None:
        """Re-check (and repair) every ``interval`` seconds until ``close``."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval)
                await self.reconcile("resync")

        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(loop())

    async def close(self, keep: bool) -> None:
        """Stop the re-checks; ``keep`` False also stops the kernel's sync daemons."""
        await cancel_and_wait(self._task)
        self._task = None
        if not keep:
            await self.reconcile("stop", stop_all=True)

    def status(self, now: float) -> dict[str, Any]:
        """The status's ``dataplane.sync`` block."""
        return {
            "interface": self.want.interface,
            "syncid": self.want.syncid,
            "ok": self.error is None and self.running is not None,
            "error": self.error,
            "checked_ago": None if self.checked_at is None else round(now - self.checked_at, 3),
            "daemons": None if self.running is None else [d.view() for d in self.running],
        }


def _why(reason: str, op: Op, d: SyncDaemon, target: SyncConfig | None, states: set[State]) -> str:
    """The log reason of one planned operation."""
    if target is None:
        return reason
    if op == "start" and d.state not in states:
        return f"{reason}: not running"
    return f"{reason}: runs with another interface or syncid than the config's"
