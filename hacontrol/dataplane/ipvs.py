"""The IPVS data plane: reads and changes the kernel's IPVS table over generic netlink.

``IpvsDataplane`` implements the ``Dataplane`` protocol for Linux Virtual Server. pyroute2's
``AsyncIPVS`` opens the "IPVS" generic-netlink family (``setup_endpoint`` resolves its id and
proves the kernel has IPVS; under uvloop, which refuses AsyncIPVS's endpoint, pyroute2's sync
``IPVS`` does it on a worker thread). The table itself is read and written through a netlink
socket of this module's own, with a small struct codec for the IPVS attributes
(``hacontrol.dataplane.ipvs_codec`` owns the wire format; this module owns the socket, its
sequence numbers, the pipelining and the plane's memory of applied forwarding): pyroute2's
generic message classes cost ~6 ms per request under emulation (20x ``ipvsadm -R``), and a full
load of 10,000 destinations must stay within 1.5x of ``ipvsadm -R``. Requests are pipelined: up
to ``batch`` requests go to the kernel in one send; only the last of each batch asks for an ack
(the kernel always reports errors), so a batch costs one send and one or two receives.

Kernel semantics handled here (see docs/testing.md for how they were observed):
- every add and set carries the forwarding method explicitly (MASQ 0, TUNNEL 2, DR 3);
- persistence is ``IP_VS_SVC_F_PERSISTENT`` plus the timeout in seconds;
- adding what exists (EEXIST) is retried as a set; deleting what is gone (ENOENT/ESRCH) is fine;
- fwmark services cannot be represented in a ``Table`` and are skipped by ``snapshot``;
- a destination on a local address reads back as LOCALNODE: it is reported with the forwarding
  this plane last applied to it (else "nat") so the diff does not churn on it forever.
Any other per-action error raises DataplaneError naming the action and the errno text; the rest of
the actions are still applied (the reconciler retries against a fresh snapshot).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.ipvs_codec import (
    CMD,
    CMD_ATTR_DEST,
    CMD_ATTR_SERVICE,
    FWD_NAME,
    GONE_OK,
    NLM_F_ACK,
    NLM_F_DUMP,
    NLM_F_REQUEST,
    NLMSG_DONE,
    NLMSG_ERROR,
    RETRY_AS_SET,
    SVC_AF,
    decode_dest,
    decode_service,
    encode_action,
    header,
    parse_attrs,
    service_attrs,
)
from hacontrol.dataplane.table import DestKey, DestSpec, Fwd, ServiceKey, Table, TableService

log = logs.get("hacontrol.dataplane.ipvs")

IPVS_PROC = "/proc/net/ip_vs"
NETLINK_GENERIC = 16
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
SOL_NETLINK = 270


def _netlink_socket() -> socket.socket:
    """A non-blocking generic-netlink socket with short acks and a large receive buffer."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_GENERIC)
    try:
        sock.setblocking(False)
        sock.bind((0, 0))
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # acks without the request echoed
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    except OSError as e:
        sock.close()
        raise DataplaneError(f"ipvs: netlink socket: {e}") from e
    return sock


async def _family_id() -> int:
    """The IPVS generic-netlink family id, resolved by pyroute2 (lazy import: it costs seconds
    under emulation). ``AsyncIPVS`` needs the stock asyncio loop (uvloop, the daemon's loop,
    refuses its AF_NETLINK endpoint); on any other loop pyroute2's sync ``IPVS`` resolves it on a
    worker thread."""
    if isinstance(asyncio.get_running_loop(), asyncio.BaseEventLoop):
        from pyroute2.ipvs import AsyncIPVS

        ipvs = AsyncIPVS()
        try:
            await ipvs.setup_endpoint()
            return int(ipvs.prid)
        finally:
            ipvs.close()

    def resolve() -> int:
        from pyroute2 import IPVS

        with IPVS() as ipvs:
            return int(ipvs.prid)

    return await asyncio.to_thread(resolve)


class IpvsDataplane:
    """The kernel IPVS table of the current network namespace, as a Dataplane."""

    kind = "ipvs"
    whole_table = False  # the kernel table is shared: other tools' services are foreign
    forwarding_in_place = True  # EDITDEST carries the connection flags

    def __init__(self, *, batch: int = 512, proc: str = IPVS_PROC) -> None:
        self.batch = max(1, batch)
        self.proc = proc
        self._sock: socket.socket | None = None
        self._family = 0
        self._seq = 0
        self._lock = asyncio.Lock()
        self._fwd_applied: dict[tuple[ServiceKey, DestKey], Fwd] = {}
        self.dumps = 0  # dump requests sent (tests: an event must read nothing back)

    async def open(self) -> None:
        if not os.path.exists(self.proc):  # noqa: ASYNC240 - a /proc stat, never blocks
            raise DataplaneError(
                f"ipvs: this kernel has no IPVS ({self.proc} missing): modprobe ip_vs, "
                "or use the nftables data plane"
            )
        try:
            family = await _family_id()
        except Exception as e:
            raise DataplaneError(f"ipvs: cannot open the IPVS generic netlink family: {e}") from e
        self._family = family
        self._sock = _netlink_socket()
        log.info("ipvs.open", family_id=family, reason="kernel has IPVS")

    def watch(self, changed: Callable[[str, int], None]) -> None:
        """No change notifications watched: drift is repaired at the periodic resync."""

    def expect(self, services: int) -> None:
        """One layout whatever the size: nothing to pick."""

    def ipvs_requests(self) -> IpvsDataplane:
        """This plane serves the connection sync daemons' netlink requests itself."""
        return self

    async def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # ------------------------------------------------------------------ netlink plumbing
    def _header(self, cmd: int, flags: int, body: bytes) -> tuple[int, bytes]:
        self._seq = (self._seq + 1) & 0xFFFFFFFF or 1
        return self._seq, header(self._family, cmd, flags, self._seq, body)

    def _need(self) -> socket.socket:
        if self._sock is None:
            raise DataplaneError("ipvs: data plane is not open")
        return self._sock

    async def _recv(self) -> bytes:
        sock = self._need()
        try:
            return sock.recv(1 << 16)
        except BlockingIOError:
            return await asyncio.get_running_loop().sock_recv(sock, 1 << 16)

    async def _send(self, data: bytes) -> None:
        sock = self._need()
        try:
            sock.send(data)
        except BlockingIOError:
            await asyncio.get_running_loop().sock_sendall(sock, data)

    async def _dump(self, cmd: int, body: bytes, want: int | None = None) -> list[dict[int, Any]]:
        """Each dumped object's nested attributes (service, dest, or ``want``) as {type: bytes}."""
        seq, msg = self._header(cmd, NLM_F_REQUEST | NLM_F_DUMP, body)
        self.dumps += 1
        await self._send(msg)
        out: list[dict[int, Any]] = []
        if want is None:
            want = CMD_ATTR_SERVICE if cmd == CMD["get_service"] else CMD_ATTR_DEST
        while True:
            data = await self._recv()
            off = 0
            while off + 16 <= len(data):
                n, kind, _flags, mseq = struct.unpack_from("=IHHI", data, off)
                if n < 16:
                    raise DataplaneError("ipvs: malformed netlink message in dump")
                if mseq == seq:
                    if kind == NLMSG_DONE:
                        return out
                    if kind == NLMSG_ERROR:
                        code = -struct.unpack_from("=i", data, off + 16)[0]
                        if code:
                            raise DataplaneError(f"ipvs: dump: {os.strerror(code)}")
                    else:
                        top = parse_attrs(data, off + 20, off + n)
                        nested = top.get(want)
                        if nested is not None:
                            out.append(parse_attrs(nested))
                off += (n + 3) & ~3

    async def _pipeline(self, msgs: list[tuple[Action, int, bytes]]) -> list[tuple[Action, int]]:
        """Send one batch (the last request asks for an ack); return (action, errno) failures."""
        seqs: dict[int, Action] = {}
        last_seq = 0
        parts: list[bytes] = []
        for i, (action, cmd, body) in enumerate(msgs):
            flags = NLM_F_REQUEST | (NLM_F_ACK if i == len(msgs) - 1 else 0)
            seq, msg = self._header(cmd, flags, body)
            seqs[seq] = action
            parts.append(msg)
            last_seq = seq
        try:
            await self._send(b"".join(parts))
        except OSError as e:
            raise DataplaneError(f"ipvs: netlink send failed: {e}") from e
        failed: list[tuple[Action, int]] = []
        while True:
            try:
                data = await self._recv()
            except OSError as e:  # ENOBUFS: acks were dropped, the outcome is unknown
                raise DataplaneError(f"ipvs: netlink receive failed ({e}); resync needed") from e
            off = 0
            while off + 20 <= len(data):
                n, kind, _flags, mseq = struct.unpack_from("=IHHI", data, off)
                if kind == NLMSG_ERROR and mseq in seqs:
                    code = -struct.unpack_from("=i", data, off + 16)[0]
                    if code:
                        failed.append((seqs[mseq], code))
                    if mseq == last_seq:
                        return failed
                off += max(16, (n + 3) & ~3)

    # ------------------------------------------------------------------ other IPVS commands
    async def dump_nested(self, cmd: int, body: bytes, want: int) -> list[dict[int, Any]]:
        """Dump ``cmd``: each reply's nested attribute ``want`` as {type: bytes} (used by
        ``hacontrol.dataplane.ipvs_sync`` for the sync daemons)."""
        async with self._exchange():
            return await self._dump(cmd, body, want)

    async def request(self, cmd: int, body: bytes) -> int:
        """One acked request of ``cmd``: 0, or the errno the kernel answered."""
        async with self._exchange():
            seq, msg = self._header(cmd, NLM_F_REQUEST | NLM_F_ACK, body)
            await self._send(msg)
            while True:
                data = await self._recv()
                off = 0
                while off + 20 <= len(data):
                    n, kind, _flags, mseq = struct.unpack_from("=IHHI", data, off)
                    if kind == NLMSG_ERROR and mseq == seq:
                        return int(-struct.unpack_from("=i", data, off + 16)[0])
                    off += max(16, (n + 3) & ~3)

    # ------------------------------------------------------------------ Dataplane protocol
    @contextlib.asynccontextmanager
    async def _exchange(self) -> AsyncIterator[None]:
        """One request/response exchange at a time; if it is interrupted (error, cancellation,
        timeout) the socket may hold half a dump or stale acks: start over with a fresh one."""
        async with self._lock:
            self._need()
            try:
                yield
            except BaseException:
                if self._sock is not None:
                    self._sock.close()
                    self._sock = _netlink_socket()
                raise

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        async with self._exchange():
            table: Table = {}
            for attrs in await self._dump(CMD["get_service"], b""):
                decoded = decode_service(attrs)
                if decoded is None:
                    continue  # fwmark / other protocol: foreign and unrepresentable
                key, spec = decoded
                family = struct.unpack("=H", attrs[SVC_AF])[0]
                dests: dict[DestKey, DestSpec] = {}
                for d in await self._dump(CMD["get_dest"], service_attrs(key, None)):
                    dk, code, weight = decode_dest(d, family)
                    fwd = FWD_NAME.get(code)
                    if fwd is None:  # LOCALNODE (or BYPASS): what we asked for, if anything
                        fwd = self._fwd_applied.get((key, dk), "nat")
                    dests[dk] = DestSpec(weight=weight, forwarding=fwd)
                table[key] = TableService(spec, dests)
            return table

    def _remember(self, actions: Sequence[Action]) -> None:
        """Keep the forwarding asked for per destination (read back for LOCALNODE ones)."""
        for a in actions:
            if a.dest is not None and a.dest_spec is not None:
                self._fwd_applied[(a.service, a.dest)] = a.dest_spec.forwarding
            elif a.dest is not None:
                self._fwd_applied.pop((a.service, a.dest), None)
            elif a.op == "del_service":
                for k in [k for k in self._fwd_applied if k[0] == a.service]:
                    del self._fwd_applied[k]

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        """Apply ``actions`` in order (``desired`` is not needed by an incremental plane)."""
        if not actions:
            return
        async with self._exchange():
            cache: dict[ServiceKey, bytes] = {}
            errors: list[tuple[Action, int]] = []
            retries: list[tuple[Action, int, bytes]] = []
            for start in range(0, len(actions), self.batch):
                chunk = [encode_action(a, a.op, cache) for a in actions[start : start + self.batch]]
                for action, code in await self._pipeline(chunk):
                    if code == errno.EEXIST and action.op in RETRY_AS_SET:
                        retries.append(encode_action(action, RETRY_AS_SET[action.op], cache))
                    elif not (code in GONE_OK and action.op.startswith("del_")):
                        errors.append((action, code))
                await asyncio.sleep(0)  # let health checks and the API run between batches
            for start in range(0, len(retries), self.batch):
                failed = await self._pipeline(retries[start : start + self.batch])
                errors.extend(failed)
            if retries:
                log.info("ipvs.retry_as_set", count=len(retries), reason="already existed")
            self._remember(actions)
            if errors:
                first, code = errors[0]
                more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
                raise DataplaneError(
                    f"ipvs: {first}: {errno.errorcode.get(code, code)} {os.strerror(code)}{more}"
                )
