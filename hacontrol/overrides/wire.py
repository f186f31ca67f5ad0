"""The override section of an HA ``overrides`` message (type 3): codec, set digest, chunking (pure).

An overrides message is a heartbeat-format packet (hacontrol.ha.packet: same header, key, MAC,
boot nonce echo and replay rules) whose payload is one ``Section``: the sender's digest of its
whole override set, how many records that set holds, its Lamport counter, a ``LAST`` flag (this
packet ends a send: the receiver may compare digests now) and 0..``MAX_PER_PACKET`` records.
The layout is in docs/ha-wire.md ("The overrides message"), pinned by golden vectors.

``decode_section`` is strict and bounded: it raises only ``WireError`` whose ``reason`` is one of
``REASONS``, never reads past the payload, and refuses trailing bytes. A record that decodes is
one ``hacontrol.overrides.core.validate`` accepts, with a canonical ``address:port`` server.
Records for services or servers this node's config does not list are *kept* (the two directors
may be between reloads); only the set size is bounded (``core.MAX_RECORDS``, by the receiver).

``set_digest`` is over each record's identity (service, server, Lamport version): two sets that
hold the same winners have the same digest, whatever the float fields; it is a sum of per-record
hashes, so ``DigestSum`` keeps it current in O(1) per change (no rehash of 20,000 records on the
heartbeat path). ``pack`` splits records into packets that fit a byte budget and
``MAX_PER_PACKET``. No I/O.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from hacontrol.overrides.core import (
    ACTIONS,
    MAX_RECORDS,
    CommandError,
    Override,
    Version,
    canonical_server,
    validate,
)

FORMAT = 1
SET_DIGEST_LEN = 16
MAX_PER_PACKET = 32
MAX_COUNTER = 2**62  # far above any real count; keeps a hostile peer from wrapping ours
MAX_SERVICE_BYTES = 255
MAX_SHORT_BYTES = 64  # server and version node
DIGEST_MOD = 2**256
FLAG_LAST = 0x01
_KNOWN_FLAGS = FLAG_LAST

# format, flags, set digest, total records, Lamport counter, record count
_HEAD = struct.Struct(f"!BB{SET_DIGEST_LEN}sIQB")
# action, counter, set_at; then weight (u32) for action weight, deadline (f64) for action drain
_REC = struct.Struct("!BQd")
_ACTION_CODE = {a: i + 1 for i, a in enumerate(ACTIONS)}  # drain 1 disable 2 enable 3 ...
_CODE_ACTION = {i: a for a, i in _ACTION_CODE.items()}

REASONS = ("format", "malformed", "too_many", "bad_record")


class WireError(Exception):
    """A section that must be refused whole. ``reason`` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Section:
    digest: bytes  # set_digest of the sender's whole set
    total: int  # records in the sender's set
    counter: int  # the sender's Lamport counter
    last: bool = True  # this packet ends a send (a summary has no records and is last)
    records: tuple[Override, ...] = ()


def record_hash(o: Override) -> int:
    """SHA-256 of one record's identity (service, server, node, counter) as an integer."""
    h = hashlib.sha256()
    for text in (o.service, o.server, o.version.node):
        raw = text.encode("utf-8")
        h.update(struct.pack("!H", len(raw)) + raw)
    h.update(struct.pack("!Q", o.version.counter))
    return int.from_bytes(h.digest(), "big")


def digest_of(total: int) -> bytes:
    """The set digest for the sum of its records' ``record_hash`` (any order; mod 2**256)."""
    return (total % DIGEST_MOD).to_bytes(32, "big")[:SET_DIGEST_LEN]


def set_digest(records: Iterable[Override]) -> bytes:
    """16 bytes over every record's identity, independent of order: the sum of the records'
    ``record_hash`` mod 2**256, its first 16 bytes (a record replaced by a newer version is a
    subtraction and an addition: ``DigestSum``)."""
    return digest_of(sum(record_hash(o) for o in records))


class DigestSum:
    """``set_digest`` kept up to date one record at a time (O(1) per change)."""

    def __init__(self, records: Iterable[Override] = ()) -> None:
        self.parts: dict[tuple[str, str], int] = {o.key: record_hash(o) for o in records}
        self.total = sum(self.parts.values())

    def put(self, o: Override) -> None:
        """``o`` now holds its key (replacing whatever held it)."""
        h = record_hash(o)
        self.total += h - self.parts.get(o.key, 0)
        self.parts[o.key] = h

    def digest(self) -> bytes:
        return digest_of(self.total)


def canonical(server: str) -> bool:
    """True when ``server`` is ``address:port`` exactly as the status writes it."""
    try:
        return canonical_server(server) == server
    except CommandError:
        return False


def _text(raw: str, most: int, what: str) -> bytes:
    data = raw.encode("utf-8")
    if not 1 <= len(data) <= most:
        raise ValueError(f"{what} must be 1..{most} utf-8 bytes")
    return bytes([len(data)]) + data


def encode_record(o: Override) -> bytes:
    """One record's bytes; ValueError for a record the wire cannot carry."""
    validate(o)
    if not canonical(o.server) or not 1 <= o.version.counter < MAX_COUNTER:
        raise ValueError("server must be canonical address:port, counter 1..2**62-1")
    if not (math.isfinite(o.set_at) and o.set_at >= 0):
        raise ValueError("set_at must be a finite non-negative number")
    out = [_text(o.service, MAX_SERVICE_BYTES, "service"), _text(o.server, MAX_SHORT_BYTES,
           "server"), _text(o.version.node, MAX_SHORT_BYTES, "node"),
           _REC.pack(_ACTION_CODE[o.action], o.version.counter, o.set_at)]  # fmt: skip
    if o.weight is not None:
        out.append(struct.pack("!I", o.weight))
    if o.deadline_at is not None:
        if not math.isfinite(o.deadline_at):
            raise ValueError("deadline_at must be finite")
        out.append(struct.pack("!d", o.deadline_at))
    return b"".join(out)


def encode_section(s: Section) -> bytes:
    if len(s.digest) != SET_DIGEST_LEN or not 0 <= s.total <= MAX_RECORDS:
        raise ValueError("bad digest length or total")
    if not 0 <= s.counter < MAX_COUNTER or len(s.records) > MAX_PER_PACKET:
        raise ValueError(f"counter 0..2**62-1, at most {MAX_PER_PACKET} records")
    head = _HEAD.pack(FORMAT, FLAG_LAST if s.last else 0, s.digest, s.total, s.counter,
                      len(s.records))  # fmt: skip
    return head + b"".join(encode_record(o) for o in s.records)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise WireError("malformed", "field runs past the end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def text(self, most: int, what: str) -> str:
        n = self.take(1)[0]
        if not 1 <= n <= most:
            raise WireError("malformed", f"{what} length {n}")
        try:
            return self.take(n).decode("utf-8")
        except UnicodeDecodeError:
            raise WireError("malformed", f"{what} is not utf-8") from None

    def double(self, what: str) -> float:
        (v,) = struct.unpack("!d", self.take(8))
        if not math.isfinite(v) or v < 0:
            raise WireError("bad_record", f"{what} {v}")
        return float(v)


def _record(r: _Reader) -> Override:
    service = r.text(MAX_SERVICE_BYTES, "service")
    server = r.text(MAX_SHORT_BYTES, "server")
    node = r.text(MAX_SHORT_BYTES, "node")
    code, counter, set_at = _REC.unpack(r.take(_REC.size))
    if not math.isfinite(set_at) or set_at < 0:
        raise WireError("bad_record", f"set_at {set_at}")
    action = _CODE_ACTION.get(code)
    if action is None:
        raise WireError("bad_record", f"action {code}")
    if not 1 <= counter < MAX_COUNTER:
        raise WireError("bad_record", f"counter {counter}")
    if not canonical(server):
        raise WireError("bad_record", f"server {server!r} is not a canonical address:port")
    weight = struct.unpack("!I", r.take(4))[0] if action == "weight" else None
    deadline = r.double("deadline_at") if action == "drain" else None
    o = Override(service, server, action, Version(counter, node), set_at, weight,  # type: ignore[arg-type]
                 deadline)  # fmt: skip
    try:
        validate(o)
    except ValueError as e:
        raise WireError("bad_record", str(e)) from None
    return o


def decode_section(data: bytes) -> Section:
    """The section in ``data``; WireError (reason in REASONS) when it is not a valid one."""
    if len(data) < _HEAD.size:
        raise WireError("malformed", f"{len(data)} bytes")
    fmt, flags, digest, total, counter, n = _HEAD.unpack_from(data, 0)
    if fmt != FORMAT:
        raise WireError("format", f"section format {fmt}")
    if flags & ~_KNOWN_FLAGS:
        raise WireError("malformed", f"flags {flags:#x}")
    if total > MAX_RECORDS or counter >= MAX_COUNTER:
        raise WireError("malformed", f"total {total} counter {counter}")
    if n > MAX_PER_PACKET:
        raise WireError("too_many", f"{n} records")
    r = _Reader(data)
    r.pos = _HEAD.size
    records = tuple(_record(r) for _ in range(n))
    if r.pos != len(data):
        raise WireError("malformed", "trailing bytes")
    if len({o.key for o in records}) != len(records):
        raise WireError("malformed", "a server twice in one packet")
    return Section(digest, total, counter, bool(flags & FLAG_LAST), records)


def pack(records: Sequence[Override], budget: int) -> list[list[Override]]:
    """``records`` in order, split into packets: each at most MAX_PER_PACKET records and at
    most ``budget`` bytes of section. ValueError when one record alone does not fit."""
    out: list[list[Override]] = []
    cur: list[Override] = []
    size = _HEAD.size
    for o in records:
        n = len(encode_record(o))
        if _HEAD.size + n > budget:
            raise ValueError(f"record {o.key} needs {n} bytes, over the budget {budget}")
        if cur and (size + n > budget or len(cur) == MAX_PER_PACKET):
            out.append(cur)
            cur, size = [], _HEAD.size
        cur.append(o)
        size += n
    if cur:
        out.append(cur)
    return out
