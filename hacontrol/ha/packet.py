"""The HA heartbeat wire format: encode/decode one packet, HMAC-SHA256, and the replay guard.

Pure: bytes in, values out; no sockets, no clock. The layout is specified in docs/ha-wire.md and
pinned by the golden vectors in tests/unit/golden/ha/. ``decode`` raises only ``PacketError`` whose
``reason`` is one of ``DECODE_REASONS``; ``ReplayGuard.check`` returns ``"replayed"`` or None.
Each packet carries the sender's boot nonce and the echo of the peer's; what they mean for
liveness is decided in hacontrol.ha.freshness. An ``overrides`` message (type 3) is the same
packet with an opaque payload after the health summary (its content: hacontrol.overrides.wire);
types 1 and 2 carry none.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from dataclasses import dataclass

MAGIC = b"HACP"
VERSION = 2  # 2: the boot nonce and its echo (freshness both ways)
MAC_LEN = 32
DIGEST_LEN = 32
NONCE_LEN = 8
NO_NONCE = bytes(NONCE_LEN)  # the echo of a node that has heard no peer in this boot
MAX_NAME = 64
MAX_SERVICES = 16
MAX_PACKET = 1400
NO_TIME = 0xFFFFFFFF  # "never" in the takeover block's millisecond fields
U32_MAX = 0xFFFFFFFF
U16_MAX = 0xFFFF

# magic, version, type, flags, role, priority, effective priority, epoch, seq, nonce, echo,
# digest, then the takeover block: detected_ago_ms, vip_added_ago_ms, announced_ago_ms,
# announce_count
_FIXED = struct.Struct(f"!4sBBBBBBQQ{NONCE_LEN}s{NONCE_LEN}s32sIIII")
_MIN_LEN = _FIXED.size + 1 + 1 + 1 + MAC_LEN  # + name len, 1-byte name, service count, MAC

DECODE_REASONS = ("truncated", "oversized", "bad_magic", "bad_version", "bad_mac", "malformed")

FLAG_BLOCKED = 0x01  # the sender has a blocking local fault: it will not take the VIPs
FLAG_YIELDING = 0x02  # the sender is active and wants the peer to take over (handover)
FLAG_VIPS_HELD = 0x04  # the sender holds the VIPs
_KNOWN_FLAGS = FLAG_BLOCKED | FLAG_YIELDING | FLAG_VIPS_HELD


class PacketError(Exception):
    """A packet that must be dropped. ``reason`` is one of DECODE_REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    HANDOVER = 2  # "I am leaving the active role: take the VIPs now" (graceful stop, drill)
    OVERRIDES = 3  # operator overrides (payload: hacontrol.overrides.wire); never fed to the FSM


class WireRole(enum.IntEnum):
    """The role as carried on the wire (mirrors hacontrol.ha.fsm.Role)."""

    STARTING = 0
    BACKUP = 1
    ACTIVE = 2
    FAULT = 3
    STOPPING = 4


_MSG_TYPES = frozenset(m.value for m in MsgType)
_WIRE_ROLES = frozenset(r.value for r in WireRole)


@dataclass(frozen=True)
class ServiceHealth:
    name: str
    healthy: int
    total: int


@dataclass(frozen=True)
class Takeover:
    """How long ago the sender's last takeover steps happened, in ms (NO_TIME = never)."""

    detected_ago_ms: int = NO_TIME
    vip_added_ago_ms: int = NO_TIME
    announced_ago_ms: int = NO_TIME
    announce_count: int = 0


@dataclass(frozen=True)
class Message:
    type: MsgType
    node: str
    role: WireRole
    priority: int
    effective_priority: int
    epoch: int
    seq: int
    nonce: bytes = NO_NONCE  # the sender's boot nonce (random, set by the transport)
    echo: bytes = NO_NONCE  # the receiver's boot nonce as the sender last heard it
    digest: bytes = bytes(DIGEST_LEN)
    flags: int = 0
    health: tuple[ServiceHealth, ...] = ()
    takeover: Takeover = Takeover()
    payload: bytes = b""  # type OVERRIDES only

    @property
    def healthy_total(self) -> int:
        return sum(s.healthy for s in self.health)


def _check(msg: Message) -> None:
    """Refuse a message that could not be decoded again (a caller bug: ValueError)."""
    name = msg.node.encode("utf-8")
    if not 1 <= len(name) <= MAX_NAME:
        raise ValueError(f"node name must be 1..{MAX_NAME} utf-8 bytes")
    if not 1 <= msg.priority <= 254 or not 0 <= msg.effective_priority <= 255:
        raise ValueError("priority must be 1..254, effective priority 0..255")
    if not (0 <= msg.epoch < 2**64 and 0 <= msg.seq < 2**64):
        raise ValueError("epoch and seq are u64")
    if len(msg.nonce) != NONCE_LEN or len(msg.echo) != NONCE_LEN:
        raise ValueError(f"nonce and echo must be {NONCE_LEN} bytes")
    if len(msg.digest) != DIGEST_LEN:
        raise ValueError(f"digest must be {DIGEST_LEN} bytes")
    if msg.flags & ~_KNOWN_FLAGS or not 0 <= msg.flags <= 255:
        raise ValueError("unknown flag bits")
    if len(msg.health) > MAX_SERVICES:
        raise ValueError(f"at most {MAX_SERVICES} services in the health summary")
    for s in msg.health:
        if not 1 <= len(s.name.encode("utf-8")) <= MAX_NAME:
            raise ValueError(f"service name must be 1..{MAX_NAME} utf-8 bytes")
        if not 0 <= s.healthy <= s.total <= U16_MAX:
            raise ValueError("service health needs 0 <= healthy <= total <= 65535")
    if msg.payload and msg.type is not MsgType.OVERRIDES:
        raise ValueError("only an overrides message carries a payload")
    if len(msg.payload) > U16_MAX:
        raise ValueError("payload over 65535 bytes")
    t = msg.takeover
    for v in (t.detected_ago_ms, t.vip_added_ago_ms, t.announced_ago_ms, t.announce_count):
        if not 0 <= v <= U32_MAX:
            raise ValueError("takeover fields are u32")


def mac(data: bytes, key: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def encode(msg: Message, key: bytes) -> bytes:
    """The packet for ``msg``, MAC'd with ``key``. ValueError if a field is out of range."""
    _check(msg)
    t = msg.takeover
    parts = [
        _FIXED.pack(
            MAGIC,
            VERSION,
            int(msg.type),
            msg.flags,
            int(msg.role),
            msg.priority,
            msg.effective_priority,
            msg.epoch,
            msg.seq,
            msg.nonce,
            msg.echo,
            msg.digest,
            t.detected_ago_ms,
            t.vip_added_ago_ms,
            t.announced_ago_ms,
            t.announce_count,
        )
    ]
    name = msg.node.encode("utf-8")
    parts.append(bytes([len(name)]) + name)
    parts.append(bytes([len(msg.health)]))
    for s in msg.health:
        sname = s.name.encode("utf-8")
        parts.append(bytes([len(sname)]) + sname + struct.pack("!HH", s.healthy, s.total))
    if msg.type is MsgType.OVERRIDES:
        parts.append(struct.pack("!H", len(msg.payload)) + msg.payload)
    body = b"".join(parts)
    out = body + mac(body, key)
    if len(out) > MAX_PACKET:  # heartbeats cannot within the field bounds; a payload can
        raise ValueError("packet exceeds MAX_PACKET")
    return out


def payload_room(node: str) -> int:
    """The largest payload an overrides message of ``node`` (no health summary) can carry."""
    return MAX_PACKET - (_FIXED.size + 1 + len(node.encode("utf-8")) + 1 + 2 + MAC_LEN)


class _Reader:
    def __init__(self, data: bytes, pos: int) -> None:
        self.data, self.pos = data, pos

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise PacketError("malformed", "field runs past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def text(self) -> str:
        n = self.u8()
        if not 1 <= n <= MAX_NAME:
            raise PacketError("malformed", f"name length {n}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise PacketError("malformed", "name is not utf-8") from None


def decode(data: bytes, key: bytes) -> Message:
    """The message in ``data`` if it is well formed and MAC'd with ``key``; else PacketError."""
    if len(data) > MAX_PACKET:
        raise PacketError("oversized", f"{len(data)} bytes")
    if len(data) < _MIN_LEN:
        raise PacketError("truncated", f"{len(data)} bytes")
    if data[:4] != MAGIC:
        raise PacketError("bad_magic")
    if data[4] != VERSION:
        raise PacketError("bad_version", f"version {data[4]}")
    body, tag = data[:-MAC_LEN], data[-MAC_LEN:]
    if not hmac.compare_digest(mac(body, key), tag):
        raise PacketError("bad_mac")
    (_, _, mtype, flags, role, prio, eff, epoch, seq, nonce, echo, digest, det, vip, ann,
     count) = _FIXED.unpack_from(body, 0)  # fmt: skip
    if mtype not in _MSG_TYPES:
        raise PacketError("malformed", f"type {mtype}")
    if role not in _WIRE_ROLES:
        raise PacketError("malformed", f"role {role}")
    if not 1 <= prio <= 254:
        raise PacketError("malformed", f"priority {prio}")
    r = _Reader(body, _FIXED.size)
    node = r.text()
    n = r.u8()
    if n > MAX_SERVICES:
        raise PacketError("malformed", f"{n} services")
    health = []
    for _ in range(n):
        sname = r.text()
        healthy, total = struct.unpack("!HH", r.take(4))
        if healthy > total:
            raise PacketError("malformed", "healthy > total")
        health.append(ServiceHealth(sname, healthy, total))
    payload = b""
    if mtype == MsgType.OVERRIDES:
        (size,) = struct.unpack("!H", r.take(2))
        payload = r.take(size)
    if r.pos != len(body):
        raise PacketError("malformed", "trailing bytes")
    return Message(
        type=MsgType(mtype),
        node=node,
        role=WireRole(role),
        priority=prio,
        effective_priority=eff,
        epoch=epoch,
        seq=seq,
        nonce=nonce,
        echo=echo,
        digest=digest,
        flags=flags & _KNOWN_FLAGS,
        health=tuple(health),
        takeover=Takeover(det, vip, ann, count),
        payload=payload,
    )


class ReplayGuard:
    """Per peer (by node name): the boot epoch may only grow; within an epoch each sequence
    number is accepted once, and only if it is newer than ``window`` behind the highest seen.

    The window (64, as in IPsec's anti-replay) lets the copies sent on different peer paths
    (each with its own sequence number) arrive in any order; a copy seen before, or one too old
    to tell, is refused. ``window=1`` gives the strict rule: seq must strictly increase.
    """

    def __init__(self, window: int = 64) -> None:
        if not 1 <= window <= 1024:
            raise ValueError("window must be 1..1024")
        self.window = window
        self._state: dict[str, tuple[int, int, int]] = {}  # peer -> (epoch, top seq, bitmap)

    def check(self, peer: str, epoch: int, seq: int) -> str | None:
        """None (and remember it) if (epoch, seq) is fresh for ``peer``; else ``"replayed"``."""
        st = self._state.get(peer)
        if st is None or epoch > st[0]:
            self._state[peer] = (epoch, seq, 1)
            return None
        cur_epoch, top, bitmap = st
        if epoch < cur_epoch:
            return "replayed"
        if seq > top:
            shift = seq - top
            mask = (1 << self.window) - 1
            bitmap = ((bitmap << shift) | 1) & mask if shift < self.window else 1
            self._state[peer] = (epoch, seq, bitmap)
            return None
        age = top - seq
        if age >= self.window or bitmap >> age & 1:
            return "replayed"
        self._state[peer] = (epoch, top, bitmap | (1 << age))
        return None

    def forget(self, peer: str) -> None:
        self._state.pop(peer, None)
