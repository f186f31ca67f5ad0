"""Sending the nftables plane's per-event changes as our own nf_tables netlink batch.

Through libnftables (``hacontrol.dataplane.nft_exec``), nft 1.0.6 lists every chain and set of the
table before each transaction that adds anything: about 3 ms at 1,000 services, so a health
change cost more the bigger the table. ``NftNetlink`` sends the same change (the JSON commands of
``hacontrol.dataplane.nft_delta``, encoded by ``nftnl_codec`` / ``nftnl_rule`` into the bytes nft
itself would send) on a NETLINK_NETFILTER socket of its own, as one batch (BATCH_BEGIN ...
BATCH_END, NLM_F_ACK on every message), and reads an ack for every message: the kernel sends them
after the commit, so all of them zero means the transaction is in. Nothing is listed first, so the
cost does not grow with the table.

The socket is opened, and used, on one worker thread of its own (``nft_exec.Worker``): with
``netns`` the thread enters that named namespace first, so the socket lives there. The commits are
then made by that thread, whose id the notification watch sees as ours (``NftDataplane.ours``:
a task of this process).

``send(table, commands)`` returns False when this path cannot take the batch: a command the
encoder does not produce exactly (``Unencodable``), a batch over the socket's buffers (bytes for
one sendmsg, room for its acks; the reconciler's batches of at most 64 services are far below),
or no socket (refused, no namespace). The
plane then sends the batch through nft as before; each kind of reason is logged once as
``dataplane.nftnl_fallback``; a socket that could not be opened is not retried. A kernel error
raises ``DataplaneError`` naming the refused message (errno, the object, the kernel's extended
ack text), and so does a batch whose acks did not all come back within ``limit`` (lost on a
receive-buffer overrun, or a stuck call: then the socket and its thread are given up and a new
one is opened for the next batch); the reconciler reads the table again and retries, as for any
failed apply. ``sent`` counts the batches each way (tests, the benchmark).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import time
from collections.abc import Callable, Collection

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_exec import Worker, enter_netns
from hacontrol.dataplane.nftnl_codec import Ack, Batch, Json, Unencodable, parse_acks
from hacontrol.dataplane.nftnl_rule import encode

log = logs.get("hacontrol.dataplane.nftnl")

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_CAP_ACK, NETLINK_EXT_ACK = 10, 11
SO_SNDBUFFORCE, SO_RCVBUFFORCE = 32, 33
BUFFER = 4 << 20  # bytes: a coalesced pass of hundreds of services' messages and their acks
DATAGRAM = 1 << 16
ACK_COST = 1024  # bytes of receive buffer one ack may take (its skb's truesize), at most


def open_socket(netns: str | None) -> socket.socket:
    """A NETLINK_NETFILTER socket (in ``netns`` when given: call on a thread of its own)."""
    if netns:
        enter_netns(netns)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                         NETLINK_NETFILTER)  # fmt: skip
    try:
        for force, plain in ((SO_SNDBUFFORCE, socket.SO_SNDBUF),
                             (SO_RCVBUFFORCE, socket.SO_RCVBUF)):  # fmt: skip
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, BUFFER)
            except OSError:  # without CAP_NET_ADMIN: as much as rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, plain, BUFFER)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without the request echoed
        sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)  # ... with the kernel's reason
        sock.bind((0, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class Channel:
    """A socket and the batches sent on it; every method runs on the owning worker thread."""

    def __init__(self, sock: socket.socket, limit: float) -> None:
        self.sock = sock
        self.limit = limit
        # what one batch may hold: its bytes in one sendmsg (the kernel refuses more than the
        # send buffer), its acks in the receive buffer (each ack takes up to ~1 KiB of it)
        self.max_bytes = sock.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) - 64
        self.max_acks = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // ACK_COST

    def roundtrip(self, batch: Batch) -> list[Ack]:
        """Send the batch; the answers to its messages (every ack, or the commit's error)."""
        data = batch.data
        self.sock.settimeout(self.limit)
        self.sock.send(data)
        pending = set(batch.what)
        got: list[Ack] = []
        deadline = time.monotonic() + self.limit
        while pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{len(pending)} of {len(batch.what)} acks missing")
            self.sock.settimeout(left)
            try:
                raw, sender = self.sock.recvfrom(DATAGRAM)
            except OSError as e:
                if e.errno == errno.ENOBUFS:  # not knowing which: the table is unknown
                    raise OSError(errno.ENOBUFS, "acks lost (receive buffer overrun)") from e
                raise
            if not raw:
                raise OSError(errno.EPIPE, "the netlink socket was closed")
            if isinstance(sender, tuple) and sender[0] != 0:
                continue  # not from the kernel (netlink port 0): another process's, skipped
            for ack in parse_acks(raw):
                if ack.seq in pending or (ack.seq == batch.begin and ack.error):
                    pending.discard(ack.seq)
                    got.append(ack)
            if any(a.error for a in got):  # the batch was aborted: what else is queued, then go
                return got + self._drain(pending)
        return got

    def _drain(self, pending: set[int]) -> list[Ack]:
        """The answers already queued (the kernel answers a batch before send returns)."""
        out: list[Ack] = []
        self.sock.settimeout(0)  # with a timeout, Python would wait for more first
        for _ in range(1024):  # bounded: a batch's answers fill far fewer datagrams
            try:
                raw = self.sock.recv(DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            out += [a for a in parse_acks(raw) if a.seq in pending]
        return out

    def close(self) -> None:
        self.sock.close()


class NftNetlink:
    """Per-event batches of one plane's tables, written on our own netlink socket."""

    def __init__(
        self,
        *,
        netns: str | None,
        limit: float,
        opener: Callable[[str | None], socket.socket] = open_socket,
    ) -> None:
        self.netns = netns
        self.opener = opener
        self.limit = limit
        self.mode = "netlink"  # or "off": the socket was refused, nft does all
        self._worker: Worker | None = None
        self._chan: Channel | None = None
        self._seq = int.from_bytes(os.urandom(3), "little") << 4  # well apart from 0
        self._warned: set[str] = set()
        self.sent = {"netlink": 0, "fallback": 0}

    def _fallback(self, kind: str, reason: str) -> bool:
        self.sent["fallback"] += 1
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning("dataplane.nftnl_fallback", kind=kind, reason=reason, runner="nft")
        return False

    async def _ready(self) -> bool:
        if self._chan is not None:
            return True
        self._worker = Worker("hacontrol-nftnl")
        try:
            sock = await self._worker.submit(self.opener, self.netns)
        except OSError as e:
            self._worker.stop()
            self._worker = None
            self.mode = "off"
            return self._fallback("socket", f"cannot open the nf_tables netlink socket: {e}")
        self._chan = Channel(sock, self.limit)
        return True

    async def send(self, tables: Collection[str], commands: list[Json]) -> bool:
        """Commit ``commands`` on our ``tables`` (inet): True when done, False when nft must do
        it (logged once per kind of reason); raises DataplaneError when the kernel refused it
        or its acks did not come back."""
        if self.mode != "netlink" or not commands:
            return False
        try:
            batch = encode(tables, commands, self._seq)
        except Unencodable as e:
            return self._fallback("encoder", f"not encoded: {e}")
        if not await self._ready():
            return False
        chan, worker = self._chan, self._worker
        assert chan is not None and worker is not None
        size, count = len(batch.data), len(batch.what)
        if size > chan.max_bytes or count > chan.max_acks:
            return self._fallback("size", f"a batch of {size} bytes and {count} messages is over "
                                  f"the socket's buffers ({chan.max_bytes} bytes, "
                                  f"{chan.max_acks} acks)")  # fmt: skip
        self._seq = (batch.next_seq() + 1) & 0x7FFFFFFF
        fut = worker.submit(chan.roundtrip, batch)
        try:
            async with asyncio.timeout(self.limit + 1.0):
                acks = await asyncio.shield(fut)
        except (OSError, ValueError) as e:  # a timeout, a socket error, an unreadable answer
            self._give_up()
            what = "timed out" if isinstance(e, TimeoutError) else "failed"
            raise DataplaneError(f"nftables: netlink batch {what}: {e}") from None
        self.sent["netlink"] += 1
        refused = [a for a in acks if a.error]
        if refused:
            raise DataplaneError(_refusal(batch, refused))
        return True

    def _give_up(self) -> None:
        """Leave this socket and thread (a call may still be stuck on them); open anew later."""
        chan, worker = self._chan, self._worker
        self._chan = self._worker = None
        if worker is not None:
            worker.stop(chan.close if chan is not None else None)

    def close(self) -> None:
        self._give_up()


def _refusal(batch: Batch, refused: list[Ack]) -> str:
    first = refused[0]
    what = batch.what.get(first.seq, "commit of the transaction")
    more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
    detail = f": {first.message}" if first.message else ""
    return (
        f"nftables: netlink batch refused: {what}: {os.strerror(first.error)} "
        f"(errno {first.error}){detail}{more}"
    )
