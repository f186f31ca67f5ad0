"""The heartbeat transport: one UDP socket bound to ``ha.bind``, sending to every peer path.

Each outgoing message is stamped with this daemon's boot epoch, a fresh sequence number per path,
its random boot nonce and the echo of the peer's (hacontrol.ha.freshness), encoded and MAC'd
(``hacontrol.ha.beat_stamp.stamp``), under one lock whichever thread sends (``send`` from the event
loop, ``send_threaded`` from the sender thread); with a sender process the sequence numbers are
shared with it through its board (``share_seq``: odd here, even there), and what it sent is counted
here (``count_sent``). Each incoming datagram is checked in this order: its source address must be
one of ``ha.peers`` (else ``foreign``, before any decoding), it must decode with our key, not carry
our own name, and pass ``Freshness.check``: only a packet that echoes our boot nonce (``alive``) is
handed to ``on_message(msg, path, now)`` (an ``overrides`` message, type 3, to ``on_overrides``
instead: it never reaches the role machine); an ``unconfirmed`` one only teaches us the peer's
nonce (``on_learn()`` is then called, so the owner can answer at once) and is counted as such. A
dropped one is counted in ``hb_rejected{reason}`` and logged as ``ha.drop`` (at most once per
reason per ``log_every`` seconds, with the number suppressed; ``unconfirmed`` at info level: every
restart of either node sees one or two). Each accepted heartbeat's read time is fed to
``reads`` (hacontrol.ha.read_gap, when given): a read later than 1.5 intervals after the previous
one on its path is logged as ``ha.read_late`` (rate-limited like the drops), and the runner's tick
calls ``watch`` so a peer silent past its dead interval is no read gap. Also here: ``next_epoch``
(the persistent boot epoch), ``new_nonce``, ``load_key`` (the shared secret) and
``digest_bytes`` (the config digest).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import socket
import stat
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import cast

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.config.secrets import SecretError, read_key
from hacontrol.fsutil import write_atomic
from hacontrol.ha.beat_stamp import SharedBoard, stamp
from hacontrol.ha.freshness import Freshness
from hacontrol.ha.packet import (
    DECODE_REASONS,
    DIGEST_LEN,
    NO_NONCE,
    NONCE_LEN,
    Message,
    MsgType,
    PacketError,
    ReplayGuard,
    decode,
)
from hacontrol.ha.read_gap import ReadGaps
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint, host_port

log = logs.get("hacontrol.ha.transport")

DROP_REASONS = ("foreign", *DECODE_REASONS, "self", "replayed", "unconfirmed")
EPOCH_FILE = "ha-epoch"
_TOS_NETWORK_CONTROL = 0xC0  # DSCP CS6, as routing protocols and VRRP use
RCVBUF = 4 << 20  # bytes: a junk burst must not leave the real heartbeats without room
SO_RCVBUFFORCE = 33  # linux, not in the socket module


def next_epoch(state_dir: str | os.PathLike[str], wall_ms: int | None = None) -> int:
    """This boot's epoch: greater than the one stored in ``state_dir`` and not below the wall
    clock in ms (so it still grows if ``state_dir`` is a tmpfs lost at reboot). Stored back
    atomically. If the directory is unusable the wall-clock value is used and a warning logged.
    """
    now_ms = wall_ms if wall_ms is not None else time.time_ns() // 1_000_000
    path = Path(state_dir) / EPOCH_FILE
    stored = 0
    try:
        stored = int(path.read_text().strip() or 0)
    except FileNotFoundError:
        pass
    except (OSError, ValueError) as e:
        log.warning("ha.epoch", reason=f"cannot read the stored boot epoch: {e}", path=str(path))
    epoch = min(max(stored + 1, now_ms), 2**64 - 1)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, f"{epoch}\n", mode=0o644)
    except OSError as e:
        log.warning("ha.epoch", reason=f"cannot store the boot epoch: {e}", path=str(path))
    return epoch


def new_nonce() -> bytes:
    """A random boot nonce (never all zero: that is the echo of "heard no peer yet")."""
    while (nonce := os.urandom(NONCE_LEN)) == NO_NONCE:  # pragma: no cover - 2**-64
        pass
    return nonce


def load_key(path: str) -> bytes:
    """The shared HA key from ``secret_file``, by the rule ``hacontrol check`` applies too
    (``hacontrol.config.secrets.read_key``: whitespace stripped, >= 16 bytes)."""
    try:
        key = read_key(path)
        mode = Path(path).stat().st_mode
    except (SecretError, OSError) as e:
        raise ValueError(f"ha.secret_file {path}: {getattr(e, 'strerror', None) or e}") from e
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("ha.key", reason="secret file is readable by group/others", path=path)
    return key


def digest_bytes(digest: str) -> bytes:
    """The 32-byte config digest for the wire: the hex sha256 itself, else its sha256."""
    try:
        raw = bytes.fromhex(digest)
    except ValueError:
        raw = b""
    return raw if len(raw) == DIGEST_LEN else hashlib.sha256(digest.encode()).digest()


def _addr(ep: Endpoint) -> tuple[str, int]:
    return (str(ep.address), ep.port)


def _path(addr: tuple[str | int, ...]) -> str:
    return host_port(str(addr[0]), int(addr[1]))


def _source(addr: tuple[str | int, ...]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The source address of a datagram (an IPv6 zone dropped; IPv4-mapped IPv6 unmapped)."""
    try:
        ip = ipaddress.ip_address(str(addr[0]).split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class HaTransport(asyncio.DatagramProtocol):
    def __init__(
        self,
        bind: Endpoint,
        peers: Sequence[Endpoint],
        key: bytes,
        *,
        node: str,
        epoch: int,
        metrics: Metrics,
        clock: Clock,
        on_message: Callable[[Message, str, float], None],
        on_learn: Callable[[], None] | None = None,
        on_overrides: Callable[[Message, str, float], None] | None = None,
        guard: ReplayGuard | None = None,
        nonce: bytes | None = None,
        log_every: float = 5.0,
        reads: ReadGaps | None = None,
    ) -> None:
        if not key:
            raise ValueError("the HA key is empty")
        for p in peers:
            if p.address.version != bind.address.version:
                raise ValueError(f"peer {p} and bind {bind} are of different address families")
        self.bind, self.peers, self.key, self.node = bind, tuple(peers), key, node
        self.epoch, self.seq = epoch, 0
        self.metrics, self.clock, self.on_message = metrics, clock, on_message
        self.on_learn = on_learn
        self.on_overrides = on_overrides
        self.fresh = Freshness(nonce if nonce is not None else new_nonce(), guard)
        self.allowed = frozenset(p.address for p in self.peers)  # the only sources accepted
        self.log_every = log_every
        self.reads = reads  # the read gaps per path (None: not measured)
        self.dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.received: dict[str, int] = {}
        self.sent: dict[str, int] = {}
        self.send_errors = 0
        self.unconfirmed: dict[str, float] = {}  # peer node -> when its last unconfirmed came
        self._transport: asyncio.DatagramTransport | None = None
        self._sock: socket.socket | None = None  # ours (not an attached endpoint's)
        self._lock = threading.RLock()  # stamping and sending: the loop and the sender thread
        self._board: SharedBoard | None = None  # sequence numbers shared with a sender process
        self._last_log: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    async def open(self, sock: socket.socket | None = None) -> None:
        """Bind (or adopt ``sock``, already bound, e.g. made inside another namespace)."""
        loop = asyncio.get_running_loop()
        if sock is None:
            fam = socket.AF_INET6 if self.bind.address.version == 6 else socket.AF_INET
            sock = socket.socket(fam, socket.SOCK_DGRAM)
            try:
                sock.bind(_addr(self.bind))
            except OSError:
                sock.close()
                raise
        with contextlib.suppress(OSError):
            if sock.family == socket.AF_INET:
                sock.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, _TOS_NETWORK_CONTROL)
            else:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_TCLASS, _TOS_NETWORK_CONTROL)
        with contextlib.suppress(OSError):  # room for a burst (FORCE: root may pass rmem_max)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
        sock.setblocking(False)
        await loop.create_datagram_endpoint(lambda: self, sock=sock)
        self._sock = sock

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.DatagramTransport, transport)

    def close(self) -> None:
        with self._lock:  # no thread sends on a closed (and perhaps reused) descriptor
            self._sock = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, msg: Message) -> int:
        """Send ``msg`` to every peer path, each copy with its own sequence number (from the
        event loop, through its datagram transport). Returns the number of copies handed to the
        kernel (errors are logged and counted, never raised)."""
        t = self._transport
        return 0 if t is None else self._stamp_and_send(msg, t.sendto)

    def send_threaded(self, msg: Message) -> int:
        """``send`` from another thread (the heartbeat sender, hacontrol.ha.beat): a plain
        ``sendto`` on the socket, never a wait (it is non-blocking: a full send buffer is a
        counted error). 0 without a socket of our own (an attached endpoint) or once closed."""
        with self._lock:
            sock = self._sock
            return 0 if sock is None else self._stamp_and_send(msg, sock.sendto)

    def share_seq(self, board: SharedBoard | None) -> None:
        """Take sequence numbers through ``board`` (shared with the sender process,
        hacontrol.ha.beat_stamp), or alone again (None)."""
        with self._lock:
            old = self._board
            if old is not None:  # alone again: above every number either side took
                self.seq = max(self.seq, old.get("child_seq"), old.get("daemon_seq"))
            if board is not None:
                board.set("daemon_seq", self.seq)
            self._board = board

    def count_sent(self, i: int, n: int) -> None:
        """``n`` heartbeats the sender process sent on path ``i`` (of ``peers``)."""
        self._count_sent(str(self.peers[i]), n)

    def _count_sent(self, path: str, n: int) -> None:
        self.sent[path] = self.sent.get(path, 0) + n
        self.metrics.hb_sent.labels(path=path).inc(n)

    def paths(self) -> list[tuple[str, int]]:
        """Each peer path as a socket address, in the order of ``peers``."""
        return [_addr(p) for p in self.peers]

    @property
    def fileno(self) -> int | None:
        """The socket's descriptor (None: no socket of our own, or closed)."""
        return None if self._sock is None else self._sock.fileno()

    @property
    def threadable(self) -> bool:
        """``send_threaded`` can send (a UDP socket of our own, open)."""
        return self._sock is not None

    def _stamp_and_send(
        self, msg: Message, sendto: Callable[[bytes, tuple[str, int]], object]
    ) -> int:
        """Stamp (epoch, the next sequence number, nonce, echo), encode with the MAC and send
        one copy per path. Under the lock: sequence numbers stay unique and increasing whichever
        thread sends."""
        n = 0
        with self._lock:
            for peer in self.peers:
                board = self._board
                if board is None:
                    self.seq += 1
                else:  # odd numbers; the sender process takes the even ones
                    self.seq = board.take_seq("daemon_seq", "child_seq", 1)
                data = stamp(msg, epoch=self.epoch, seq=self.seq, nonce=self.nonce,
                             echo=self.fresh.echo, key=self.key)  # fmt: skip
                path = str(peer)
                try:
                    sendto(data, _addr(peer))
                except OSError as e:  # asyncio reports most via error_received; a thread here
                    self.error_received(e)
                    continue
                n += 1
                if msg.type is not MsgType.OVERRIDES:  # those are counted by their owner
                    self._count_sent(path, 1)
        return n

    @property
    def nonce(self) -> bytes:
        """This boot's nonce (sent in every packet)."""
        return self.fresh.nonce

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
        self._ratelimited("send_error", "ha.send_error", reason=str(exc))

    def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
        now = self.clock()
        path = _path(addr)
        if _source(addr) not in self.allowed:
            self._drop("foreign", path, "the source is not one of ha.peers")
            return
        try:
            msg = decode(data, self.key)
        except PacketError as e:
            self._drop(e.reason, path, e.detail)
            return
        if msg.node == self.node:
            self._drop("self", path, "a packet carrying this node's own name")
            return
        verdict = self.fresh.check(msg.node, msg.epoch, msg.seq, msg.nonce, msg.echo)
        if verdict.kind == "replayed":
            self._drop("replayed", path, f"epoch {msg.epoch} seq {msg.seq}")
            return
        if verdict.kind == "unconfirmed":
            self.unconfirmed[msg.node] = now
            why = f"{msg.node} epoch {msg.epoch} does not echo this boot's nonce (yet)"
            self._drop("unconfirmed", path, why, level="info")
        elif msg.type is MsgType.OVERRIDES:
            self.unconfirmed.pop(msg.node, None)
            if self.on_overrides is not None:
                self.on_overrides(msg, path, now)
        else:
            self.received[path] = self.received.get(path, 0) + 1
            self.metrics.hb_received.labels(path=path).inc()
            self.unconfirmed.pop(msg.node, None)
            self.on_message(msg, path, now)
            self._note_read(path, now, msg.epoch)
        if verdict.learned and self.on_learn is not None:
            self.on_learn()  # answer now: the peer confirms us within a round trip

    def _note_read(self, path: str, now: float, epoch: int) -> None:
        if self.reads is None:
            return
        g = self.reads.read(path, now, epoch)
        if g is None:
            return
        self.metrics.ha_read_gap_max.labels(path=path).set(self.reads.paths[path].max_gap)
        if g.late:
            self._ratelimited(
                "read_late", "ha.read_late", path=path, gap=round(g.gap, 4),
                interval=self.reads.interval, lateness=round(g.lateness, 4),
                reason="the event loop read the peer's heartbeat late (or the peer sent it late)",
            )  # fmt: skip

    def watch(self, now: float) -> None:
        """A tick of the running loop: paths silent past the dead interval start afresh."""
        if self.reads is not None:
            self.reads.watch(now)

    def read_gaps(self) -> dict[str, dict[str, float | int]]:
        """The read gaps per path (``ReadGaps.status``; empty when not measured)."""
        return {} if self.reads is None else self.reads.status()

    def _drop(self, reason: str, source: str, detail: str, level: str = "warning") -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + 1
        self.metrics.hb_rejected.labels(reason=reason).inc()
        self._ratelimited(
            reason, "ha.drop", level=level, reason=reason, source=source, detail=detail
        )

    def _ratelimited(self, key: str, event: str, level: str = "warning", **fields: object) -> None:
        now = self.clock()
        last = self._last_log.get(key)
        if last is not None and now - last < self.log_every:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last_log[key] = now
        getattr(log, level)(event, suppressed=self._suppressed.pop(key, 0), **fields)
