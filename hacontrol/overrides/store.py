"""The overrides file: records and leaving destinations as JSON in ``dataplane.state_dir``.

``overrides.json`` is replaced atomically (write a temporary file in the same directory, fsync
it, rename it over the old one, fsync the directory), so a crash leaves the old file or the new
one, never half of one. A missing file is "no overrides"; an unreadable or invalid one is a
``StoreError`` (the daemon logs it and starts without overrides: the configured values apply).
``encode_records`` / ``decode_records`` are also the replication payload (hacontrol.ha).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

from hacontrol.dataplane.table import DestKey, Proto, ServiceKey, ServiceSpec
from hacontrol.fsutil import write_atomic
from hacontrol.overrides.core import MAX_RECORDS, Leaving, Override, Version, validate

FILENAME = "overrides.json"
FORMAT = 1


class StoreError(Exception):
    """The overrides file could not be read or written."""


def record_doc(o: Override) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "service": o.service,
        "server": o.server,
        "action": o.action,
        "version": [o.version.counter, o.version.node],
        "set_at": o.set_at,
    }
    if o.weight is not None:
        doc["weight"] = o.weight
    if o.deadline_at is not None:
        doc["deadline_at"] = o.deadline_at
    return doc


def _num(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ValueError(f"{what} must be a number")
    return float(v)


def record_of(doc: Any) -> Override:
    """One record from its JSON form; ValueError when it is not a valid one."""
    if not isinstance(doc, dict):
        raise ValueError("a record must be an object")
    unknown = set(doc) - {"service", "server", "action", "version", "set_at", "weight",
                          "deadline_at"}  # fmt: skip
    if unknown:
        raise ValueError(f"unknown record field(s) {sorted(unknown)}")
    ver = doc.get("version")
    if not (isinstance(ver, list) and len(ver) == 2 and type(ver[0]) is int
            and isinstance(ver[1], str)):  # fmt: skip
        raise ValueError("version must be [counter, node]")
    service, server, action = doc.get("service"), doc.get("server"), doc.get("action")
    if not isinstance(service, str) or not isinstance(server, str) or not isinstance(action, str):
        raise ValueError("service, server and action must be strings")
    weight = doc.get("weight")
    if weight is not None and type(weight) is not int:
        raise ValueError("weight must be an integer")
    deadline = doc.get("deadline_at")
    o = Override(
        service=service,
        server=server,
        action=action,  # type: ignore[arg-type]  # checked by validate
        version=Version(ver[0], ver[1]),
        set_at=_num(doc.get("set_at"), "set_at"),
        weight=weight,
        deadline_at=None if deadline is None else _num(deadline, "deadline_at"),
    )
    validate(o)
    return o


def encode_records(records: Iterable[Override]) -> list[dict[str, Any]]:
    return [record_doc(o) for o in sorted(records, key=lambda o: (o.key, o.version))]


def decode_records(items: Any) -> list[Override]:
    if not isinstance(items, list) or len(items) > MAX_RECORDS:
        raise ValueError(f"records must be a list of at most {MAX_RECORDS}")
    return [record_of(item) for item in items]


def _leaving_doc(lv: Leaving) -> dict[str, Any]:
    return {
        "service": [lv.service.protocol, lv.service.address, lv.service.port],
        "dest": [lv.dest.address, lv.dest.port],
        "forwarding": lv.forwarding,
        "scheduler": lv.spec.scheduler,
        "persistence": lv.spec.persistence,
        "since": lv.since,
        "deadline_at": lv.deadline_at,
    }


def _leaving_of(doc: Any) -> Leaving:
    proto, addr, port = doc["service"]
    daddr, dport = doc["dest"]
    if proto not in get_args(Proto) or not all(isinstance(x, str) for x in (addr, daddr)):
        raise ValueError(f"bad leaving entry {doc!r}")
    if not all(type(x) is int for x in (port, dport, doc["persistence"])):
        raise ValueError(f"bad leaving entry {doc!r}")
    return Leaving(
        service=ServiceKey(proto, addr, port),
        dest=DestKey(daddr, dport),
        forwarding=str(doc["forwarding"]),
        spec=ServiceSpec(str(doc["scheduler"]), doc["persistence"]),
        since=_num(doc["since"], "since"),
        deadline_at=_num(doc["deadline_at"], "deadline_at"),
    )


Ended = set[tuple[str, str, int, str]]  # drains over here: (service, server, counter, node)


def encode(
    counter: int, records: Iterable[Override], leaving: Iterable[Leaving], ended: Ended
) -> str:
    doc = {
        "format": FORMAT,
        "counter": counter,
        "overrides": encode_records(records),
        "leaving": [_leaving_doc(lv) for lv in leaving],
        "ended": sorted(list(e) for e in ended),
    }
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


Loaded = tuple[int, list[Override], list[Leaving], Ended]


def decode(text: str) -> Loaded:
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ValueError(f"expected format {FORMAT}")
    counter = doc.get("counter")
    if type(counter) is not int or counter < 0:
        raise ValueError("counter must be a non-negative integer")
    leaving = doc.get("leaving", [])
    if not isinstance(leaving, list) or len(leaving) > MAX_RECORDS:
        raise ValueError("leaving must be a list")
    ended: Ended = set()
    for e in doc.get("ended", []):
        if not (isinstance(e, list) and len(e) == 4 and type(e[2]) is int
                and all(isinstance(x, str) for x in (e[0], e[1], e[3]))):  # fmt: skip
            raise ValueError(f"bad ended entry {e!r}")
        ended.add((e[0], e[1], e[2], e[3]))
    records = decode_records(doc.get("overrides", []))
    return counter, records, [_leaving_of(x) for x in leaving], ended


class OverrideStore:
    """``overrides.json`` in ``state_dir``."""

    def __init__(self, state_dir: str | os.PathLike[str], filename: str = FILENAME) -> None:
        self.path = Path(state_dir) / filename

    def load(self) -> Loaded:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return 0, [], [], set()
        except OSError as e:
            raise StoreError(f"{self.path}: {e.strerror or e}") from e
        try:
            return decode(text)
        except (ValueError, KeyError, TypeError, IndexError) as e:
            raise StoreError(f"{self.path}: not a valid overrides file: {e}") from e

    def save(
        self,
        counter: int,
        records: Iterable[Override],
        leaving: Iterable[Leaving],
        ended: Ended | None = None,
    ) -> None:
        data = encode(counter, records, leaving, ended or set())
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data, prefix=".overrides.")
        except OSError as e:
            raise StoreError(f"{self.path}: {e.strerror or e}") from e
