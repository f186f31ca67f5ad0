"""Process-level helpers of the daemon: systemd notification, the event loop choice, the API
token file, which config fields a reload cannot change (they need a restart; ``ha`` included),
and the ``HaComponent`` protocol the daemon drives.

Small and free of daemon state, so the composition root (hacontrol.daemon) stays about wiring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
from collections.abc import Callable
from operator import attrgetter
from typing import Any, Protocol

from hacontrol import systemd
from hacontrol.config import secrets
from hacontrol.config.digest import compute_digest
from hacontrol.ha.handoff_rules import Triple
from hacontrol.ha.interfaces import Notifier
from hacontrol.model import Config, HAConfig

# fields that need a restart to change; a reload keeps the running values and says so
RESTART_ONLY = (
    "api.listen",
    "api.group",
    "dataplane.kind",
    "dataplane.nft_table",
    "dataplane.state_dir",
    "dataplane.resync_interval",
    "node_name",
)

# ha fields a reload applies to the running pair member; any other ha change needs a restart
# (the runner fixes its timers, election parameters, sockets and VIP group at start)
HA_LIVE = ("notify", "notify_timeout")


class HaComponent(Protocol):
    """What the daemon needs from the HA pair member (``hacontrol.ha.runner.HaRunner``)."""

    @property
    def role(self) -> str: ...

    def reconfigure(
        self,
        *,
        notifier: Notifier | None = None,
        digest: str | None = None,
        handoff_services: tuple[list[Triple], list[Triple]] | None = None,
    ) -> None:
        """What a reload may change live (notify command, config digest, hand-off services)."""

    async def start(self) -> None: ...

    async def stop(self, graceful: bool = True) -> None: ...

    def status(self) -> dict[str, Any]: ...

    async def drill_handover(self) -> dict[str, Any]: ...

    async def drill_fault(self, seconds: float) -> dict[str, Any]: ...


class StartError(Exception):
    """The daemon cannot start (bad token file, data plane unavailable, API address in use)."""


def read_token(path: str | None) -> str | None:
    """The API token from ``api.token_file``, by the rule ``hacontrol check`` applies too
    (``hacontrol.config.secrets.read_token``); raises StartError when it is unusable."""
    if path is None:
        return None
    try:
        return secrets.read_token(path)
    except secrets.SecretError as exc:
        raise StartError(f"api.token_file {path}: {exc}") from None


def sd_notify(message: str) -> bool:
    """Tell systemd (Type=notify) about READY/RELOADING/STOPPING; no-op without NOTIFY_SOCKET
    (``hacontrol.systemd.notify``)."""
    return systemd.notify(message)


def _ha_fields(ha: HAConfig) -> list[str]:
    return [f.name for f in dataclasses.fields(ha)]


def restart_only_changes(old: Config, new: Config) -> list[str]:
    out = [f for f in RESTART_ONLY if attrgetter(f)(old) != attrgetter(f)(new)]
    if (old.ha is None) != (new.ha is None):
        out.append("ha")
    elif old.ha is not None and new.ha is not None:
        out += [
            f"ha.{f}"
            for f in _ha_fields(old.ha)
            if f not in HA_LIVE and getattr(old.ha, f) != getattr(new.ha, f)
        ]
    return out


def live_ha_changes(old: Config, new: Config) -> list[str]:
    """The ha fields a reload applies to the running pair member (``HA_LIVE``)."""
    if old.ha is None or new.ha is None:
        return []
    return [f"ha.{f}" for f in HA_LIVE if getattr(old.ha, f) != getattr(new.ha, f)]


def keep_restart_only(old: Config, new: Config) -> Config:
    """``new`` with the running values of the fields a reload cannot change (the ``ha`` section
    keeps all but ``HA_LIVE``); the digest recomputed for what then runs."""
    ha = old.ha
    if old.ha is not None and new.ha is not None:
        ha = dataclasses.replace(old.ha, **{f: getattr(new.ha, f) for f in HA_LIVE})
    digest = compute_digest(new.services, ha) if ha != new.ha else new.digest
    return dataclasses.replace(
        new,
        ha=ha,
        digest=digest,
        node_name=old.node_name,
        api=dataclasses.replace(new.api, listen=old.api.listen, group=old.api.group),
        dataplane=dataclasses.replace(
            new.dataplane,
            kind=old.dataplane.kind,
            nft_table=old.dataplane.nft_table,
            state_dir=old.dataplane.state_dir,
            resync_interval=old.dataplane.resync_interval,
        ),
    )


def local_listener(bound: str) -> bool:
    """True for a unix socket or a loopback TCP listener ("unix:/p", "127.0.0.1:80", "[::1]:80")."""
    if bound.startswith("unix:"):
        return True
    host = bound.rpartition(":")[0].strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def choose_loop(
    config: Config, dry_run: bool
) -> tuple[Callable[[], asyncio.AbstractEventLoop] | None, str]:
    """The event loop factory (None: the stock asyncio loop) and why. The one place this is
    decided; the daemon logs the reason in ``daemon.start``.

    uvloop when importable: every component in use runs on it. pyroute2's AsyncIPRoute and
    AsyncIPVS do not (uvloop refuses their AF_NETLINK endpoints), so the HA VIP group and tracker
    use the sync IPRoute on a worker thread, the IPVS plane resolves its family with the sync
    IPVS on a thread and talks netlink through its own socket, and the nftables plane feeds nft
    through a memfd (not a pipe). ``config`` and ``dry_run`` stay in the signature for a policy
    that depends on them."""
    del config, dry_run
    try:
        import uvloop
    except ImportError:
        return None, "asyncio: uvloop is not installed"
    return uvloop.new_event_loop, "uvloop: every component runs on it (netlink on threads)"
