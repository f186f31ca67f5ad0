"""The daemon's HA seam: what ``hacontrol.daemon.Daemon`` does with its HA pair member.

With an ``ha:`` section the daemon runs one ``hacontrol.ha.runner.HaRunner`` over a ``VipGroup``,
a ``LocalTracker`` and a ``CommandNotifier`` (with ``ha.protocol: vrrp3`` a
``hacontrol.ha.vrrp_runner.VrrpRunner`` over the same three instead: VRRPv3, to pair with
keepalived). This module builds it from the config
(``build_ha``; none in a dry run), stops it (``stop_ha``: hand over, release the VIPs, close the
VIP group), hands it what a reload may change live (``apply_ha_live``, through the runner's
``reconfigure``: notify command, config digest, hand-off services; never the VIPs), adds the
config digest comparison to its status (``ha_status``) and forwards drills (``run_drill``).
The kernel table is programmed on both directors; only the VIPs move. With the nftables data plane
the runner also gets a ``Handoff`` (hacontrol.ha.handoff): connections in flight at a planned move
stay with the director that NATed them. With the IPVS plane and ``ha.sync`` the IPVS connection
sync daemons do that instead (``start_sync``: hacontrol.dataplane.ipvs_sync; on another plane the
option is ignored with a warning). The runner runs inside a ``GuardedHa``: a small nftables table
drops what reaches the heartbeat port from other sources than ``ha.peers`` (hacontrol.ha.guard).
Events keep the daemon's logger name (``hacontrol.daemon``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.dataplane.base import Dataplane
from hacontrol.dataplane.ipvs_sync import SyncDaemons
from hacontrol.ha.guard import GuardedHa, HeartbeatGuard
from hacontrol.ha.handoff import Handoff, services_of
from hacontrol.ha.handoff_rules import HandoffRules
from hacontrol.ha.interfaces import VipManager
from hacontrol.ha.notify import CommandNotifier
from hacontrol.ha.runner import DrillError, HaRunner, HealthSummary
from hacontrol.ha.track import LocalTracker
from hacontrol.ha.transport import load_key
from hacontrol.ha.vip import VipGroup
from hacontrol.ha.vrrp_runner import VrrpRunner
from hacontrol.metrics import Metrics
from hacontrol.model import Config
from hacontrol.process import HaComponent, StartError

__all__ = [
    "DrillUnavailable",
    "apply_ha_live",
    "build_ha",
    "ha_status",
    "run_drill",
    "start_sync",
    "stop_ha",
]

log = logs.get("hacontrol.daemon")


class DrillUnavailable(DrillError):
    """A drill was asked of a daemon that runs no HA pair (no ``ha:`` section, or a dry run)."""


def build_ha(
    cfg: Config,
    *,
    plane: str,
    dry_run: bool,
    clock: Clock,
    metrics: Metrics,
    health_summary: HealthSummary,
    follow_vips: Callable[[VipManager], VipManager] = lambda vips: vips,
) -> tuple[HaComponent | None, VipGroup | None]:
    """The HA runner for ``cfg.ha`` and its VIP group ((None, None) without one, or in a dry
    run: no VIPs, no heartbeats) on the opened ``plane`` kind. ``follow_vips`` wraps the group
    the runner moves (what must move with it: the SNAT table). Reads the key; StartError when it
    is unusable."""
    ha = cfg.ha
    if ha is None:
        return None, None
    if dry_run:
        log.warning("ha.disabled", reason="dry run: no heartbeats, no VIPs; role standalone")
        return None, None
    if ha.protocol == "vrrp3":
        vips = VipGroup.from_config(ha, metrics, clock=clock)
        vrrp = VrrpRunner(ha, cfg.node_name, clock=clock, metrics=metrics, vips=follow_vips(vips),
                          notifier=CommandNotifier.from_config(ha, cfg.node_name),
                          tracker=LocalTracker.from_config(ha))  # fmt: skip
        return vrrp, vips
    if ha.secret_file is None:  # the loader requires it with the own protocol
        raise StartError("ha.secret_file is required by the own protocol")
    try:
        key = load_key(ha.secret_file)
    except ValueError as exc:
        raise StartError(str(exc)) from None
    vips = VipGroup.from_config(ha, metrics, clock=clock)
    handoff = None
    if plane == "nftables":  # IPVS: its connection sync daemons instead
        svc, rs = services_of(cfg)
        rules = HandoffRules.of(f"{cfg.dataplane.nft_table}_handoff", svc, rs)
        handoff = Handoff(rules, [str(p.address) for p in ha.peers])
    runner = HaRunner(
        ha,
        cfg.node_name,
        key,
        clock=clock,
        metrics=metrics,
        vips=follow_vips(vips),
        notifier=CommandNotifier.from_config(ha, cfg.node_name),
        health_summary=health_summary,
        digest=cfg.digest,
        state_dir=cfg.dataplane.state_dir,
        tracker=LocalTracker.from_config(ha),
        handoff=handoff,
        beat="process",  # big work in this interpreter never delays a heartbeat (beat_proc)
    )
    # the kernel sheds heartbeat-port junk from non-peers (hacontrol.ha.guard)
    guard = HeartbeatGuard(f"{cfg.dataplane.nft_table}_hb", runner.bind, list(ha.peers))
    return GuardedHa(runner, guard, cfg.dataplane.resync_interval), vips


async def start_sync(cfg: Config, dp: Dataplane, clock: Clock) -> SyncDaemons | None:
    """Start the IPVS connection sync daemons ``ha.sync`` asks for (reconciled against what
    runs, then re-checked every resync interval); None without ``ha.sync`` or on a plane that
    is not IPVS (logged: ``dataplane.sync_unsupported``). Failures do not stop the daemon:
    they are logged and shown in the status, and retried."""
    want = cfg.ha.sync if cfg.ha is not None else None
    if want is None:
        return None
    requests = dp.ipvs_requests()
    if requests is None:
        kind = dp.kind
        why = (
            "nftables plane: in-flight connections are kept by the connection hand-off"
            if kind == "nftables"
            else f"{kind} plane: no kernel IPVS connections to synchronise"
        )
        log.warning("dataplane.sync_unsupported", plane=kind, interface=want.interface, reason=why)
        return None
    sync = SyncDaemons(requests, want, clock=clock)
    await sync.reconcile("start")
    sync.start(cfg.dataplane.resync_interval)
    return sync


async def stop_ha(ha: HaComponent | None, vips: VipGroup | None, graceful: bool) -> None:
    """Hand over (graceful) and release the VIPs, then close the VIP group's sockets."""
    if ha is None:
        return
    t0 = time.monotonic()
    try:
        await ha.stop(graceful)
    except Exception as exc:  # a bug there must not keep the daemon from stopping
        log.error("ha.stop", result="error", reason=repr(exc))
    if vips is not None:
        with contextlib.suppress(Exception):
            await vips.close()
    log.info(
        "ha.stopped",
        graceful=graceful,
        duration_ms=round((time.monotonic() - t0) * 1000, 1),
        reason="handed over and released the VIPs" if graceful else "VIPs left to the lease",
    )


def apply_ha_live(ha: HaComponent | None, old: Config, new: Config, live: list[str]) -> None:
    """Hand the running pair member what a reload may change (``HaRunner.reconfigure``): the
    notify command, the config digest it advertises and the services its connection hand-off
    covers (from its next drain; nftables plane). Never touches the VIPs."""
    if ha is None or new.ha is None:
        return
    ha.reconfigure(
        notifier=CommandNotifier.from_config(new.ha, new.node_name) if live else None,
        digest=new.digest if new.digest != old.digest else None,
        handoff_services=services_of(new),
    )


def ha_status(ha: HaComponent | None, digest: str) -> dict[str, Any] | None:
    """The runner's status plus the config digest comparison (a mismatch is loud)."""
    if ha is None:
        return None
    doc = dict(ha.status())
    peer = doc.get("peer")
    match = peer.get("config_match") if isinstance(peer, dict) else None
    doc["config"] = {"digest": digest, "peer_match": match}
    if match is False:
        doc["config"]["warning"] = (
            "CONFIG DIGEST MISMATCH: the peer runs different services or VIPs"
        )
    return doc


async def run_drill(
    ha: HaComponent | None, config: Config, running: bool, kind: str, seconds: float | None
) -> dict[str, Any]:
    """Run a drill on the HA runner: "handover" or "fault" (``seconds``). Raises
    DrillUnavailable without HA, DrillError when the runner refuses (not active, no peer),
    ValueError for bad ``seconds``."""
    if ha is None or not running:
        why = "no ha: section" if config.ha is None else "HA is not running"
        raise DrillUnavailable(f"{why} on this daemon: nothing to drill")
    if kind == "handover":
        return await ha.drill_handover()
    if kind != "fault":
        raise ValueError(f"unknown drill {kind!r}")
    cfg = config.ha
    assert cfg is not None
    dead = cfg.dead_interval
    if seconds is None or not dead < seconds <= 600:
        raise ValueError(f"seconds must exceed the dead interval ({dead:g}s) and be <= 600")
    return await ha.drill_fault(seconds)


def ha_start_error(cfg: Config, exc: OSError | ValueError) -> str:
    """Why the HA member could not start, named by the setting it failed on: the own protocol's
    ``ha.bind`` or VRRP's ``ha.vrrp.interface`` (whose own message already names it)."""
    detail = getattr(exc, "strerror", None) or str(exc)
    ha = cfg.ha
    if ha is not None and ha.protocol == "vrrp3":
        return detail if detail.startswith("ha.vrrp") else f"ha.vrrp: {detail}"
    return f"ha.bind {ha.bind if ha is not None else '-'}: {detail}"
