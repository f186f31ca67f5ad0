"""Process-level helpers of the daemon: systemd notification, the event loop choice, the API
token file, and which config fields a reload cannot change (they need a restart).

Small and free of daemon state, so the composition root (hacontrol.daemon) stays about wiring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
from collections.abc import Callable
from operator import attrgetter

from hacontrol.dataplane.select import resolve_kind
from hacontrol.model import Config

# fields that need a restart to change; a reload keeps the running values and says so
RESTART_ONLY = (
    "api.listen",
    "dataplane.kind",
    "dataplane.nft_table",
    "dataplane.state_dir",
    "dataplane.resync_interval",
    "node_name",
)


class StartError(Exception):
    """The daemon cannot start (bad token file, data plane unavailable, API address in use)."""


def read_token(path: str | None) -> str | None:
    """The API token from ``api.token_file``; raises StartError when unreadable or empty."""
    if path is None:
        return None
    try:
        with open(path) as f:
            token = f.read().strip()
    except OSError as exc:
        raise StartError(f"api.token_file {path}: {exc.strerror or exc}") from None
    if not token:
        raise StartError(f"api.token_file {path}: the file is empty")
    return token


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about READY/RELOADING/STOPPING; no-op without NOTIFY_SOCKET."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        return False
    return True


def restart_only_changes(old: Config, new: Config) -> list[str]:
    return [f for f in RESTART_ONLY if attrgetter(f)(old) != attrgetter(f)(new)]


def keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with the running values of the fields a reload cannot change."""
    return dataclasses.replace(
        new,
        node_name=old.node_name,
        api=dataclasses.replace(new.api, listen=old.api.listen),
        dataplane=dataclasses.replace(
            new.dataplane,
            kind=old.dataplane.kind,
            nft_table=old.dataplane.nft_table,
            state_dir=old.dataplane.state_dir,
            resync_interval=old.dataplane.resync_interval,
        ),
    )


def choose_loop(
    config: Config, dry_run: bool
) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop factory (None: the stock asyncio loop) and why.

    uvloop when importable, EXCEPT for the nftables plane: it feeds its batch to ``nft -f -`` on
    stdin, and uvloop's subprocess pipes are socketpairs, which nft cannot open as /dev/stdin
    (ENXIO: every apply fails). The stock loop gives real pipes."""
    try:
        import uvloop
    except ImportError:
        return None, "asyncio: uvloop is not installed"
    if not dry_run and resolve_kind(config.dataplane) == "nftables":
        return None, "asyncio: the nftables plane needs real pipes for nft -f - (uvloop: sockets)"
    return uvloop.new_event_loop, "uvloop"
