"""Which virtual services the daemon owns, remembered across restarts in a small JSON file.

A service the daemon created is "owned": when it disappears from the config it is deleted, even
if that happened while the daemon was down. A service it never created is foreign and never taken
or deleted. The file lives in ``DataplaneConfig.state_dir`` and is replaced atomically
(hacontrol.fsutil.write_atomic). A missing file means "owns nothing"; an unreadable one is reported
as an OwnedStoreError (the caller logs it and starts from nothing: safe, it never takes foreign
services, at worst it leaves a stale one in place).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, get_args

from hacontrol.dataplane.table import Proto, ServiceKey
from hacontrol.fsutil import write_atomic

FILENAME = "owned-services.json"
VERSION = 1


class OwnedStoreError(Exception):
    """The ownership file could not be read or written."""


class OwnedStore:
    def __init__(self, state_dir: str | os.PathLike[str], filename: str = FILENAME) -> None:
        self.path = Path(state_dir) / filename

    def load(self) -> set[ServiceKey]:
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return set()
        except OSError as e:
            raise OwnedStoreError(f"{self.path}: {e.strerror or e}") from e
        try:
            return decode(text)
        except (ValueError, KeyError, TypeError) as e:
            raise OwnedStoreError(f"{self.path}: not a valid ownership file: {e}") from e

    def save(self, keys: Iterable[ServiceKey]) -> None:
        data = encode(keys)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(self.path, data, prefix=".owned.")
        except OSError as e:
            raise OwnedStoreError(f"{self.path}: {e.strerror or e}") from e


def encode(keys: Iterable[ServiceKey]) -> str:
    services = [
        {"protocol": k.protocol, "address": k.address, "port": k.port} for k in sorted(keys)
    ]
    return json.dumps({"version": VERSION, "services": services}, indent=1) + "\n"


def decode(text: str) -> set[ServiceKey]:
    doc: Any = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != VERSION:
        raise ValueError(f"expected version {VERSION}")
    out: set[ServiceKey] = set()
    for item in doc["services"]:
        proto, addr, port = item["protocol"], item["address"], item["port"]
        if proto not in get_args(Proto) or not isinstance(addr, str) or not isinstance(port, int):
            raise ValueError(f"bad service entry {item!r}")
        out.add(ServiceKey(proto, addr, port))
    return out
