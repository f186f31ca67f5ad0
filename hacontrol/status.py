"""The status document: what ``GET /v1/status`` and ``hacontrol status`` show.

Pure: ``build_status`` takes the config, a health lookup, the last kernel snapshot, a view of the
reconciler, the plane's per-destination counters (``hacontrol.dataplane.counters``; None where the
plane has none: connections then show as null, unknown) and ``now`` (monotonic seconds), and
returns plain JSON-able values. The daemon gathers the inputs; the API only serialises the result
(and /metrics is built from it, ``hacontrol.metrics``). No I/O, no asyncio here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hacontrol.dataplane.counters import Counters, DestCounters
from hacontrol.dataplane.desired import address_text, dest_key, service_key
from hacontrol.dataplane.table import Table
from hacontrol.health.state import Health, TargetStatus
from hacontrol.model import Config, RealServer, ServiceConfig

# (service, real server) -> its health status, None when it is not checked (yet)
HealthLookup = Callable[[ServiceConfig, RealServer], TargetStatus | None]


@dataclass(frozen=True)
class DataplaneView:
    """What the status shows about the data plane and its reconciler (times are ages, seconds)."""

    kind: str
    last_result: str | None = None  # "ok" | "error" | None (nothing applied yet)
    error: str | None = None
    consecutive_errors: int = 0
    last_apply_ago: float | None = None
    last_pass_ago: float | None = None
    applies: int = 0
    drift_repairs: int = 0
    passes: int = 0
    next_retry_in: float | None = None


@dataclass(frozen=True)
class NodeView:
    node: str
    role: str  # "standalone" until HA is configured
    version: str
    uptime: float
    config_loaded_ago: float
    dry_run: bool = False


def age(now: float, at: float | None) -> float | None:
    """Seconds since monotonic time ``at`` (ms precision, never negative); None for never."""
    return None if at is None else round(max(0.0, now - at), 3)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000.0, 3)


def counters_status(c: DestCounters | None) -> tuple[Any, Any]:
    """(connections, traffic) blocks of a real server; (None, None) when unknown."""
    if c is None:
        return None, None
    traffic = {
        "connections": c.connections,
        "packets_in": c.packets_in,
        "packets_out": c.packets_out,
        "bytes_in": c.bytes_in,
        "bytes_out": c.bytes_out,
    }
    return {"active": c.active, "inactive": c.inactive, "persistent": c.persistent}, traffic


def real_server_status(
    rs: RealServer,
    st: TargetStatus | None,
    kernel_weight: int | None,
    now: float,
    counters: DestCounters | None = None,
) -> dict[str, Any]:
    if st is None:
        st = TargetStatus(state=Health.UNKNOWN, since=now)
    connections, traffic = counters_status(counters)
    return {
        "address": address_text(rs.address),
        "port": rs.port,
        "weight": rs.weight,
        "kernel_weight": kernel_weight,
        "health": str(st.state),
        "health_since_ago": age(now, st.since),
        "last_check": {
            "ok": st.last_ok,
            "reason": st.last_reason,
            "age": age(now, st.last_at),
            "latency_ms": _ms(st.last_latency),
        },
        "successes": st.successes,
        "failures": st.failures,
        "connections": connections,
        "traffic": traffic,
    }


def service_status(
    svc: ServiceConfig,
    health: HealthLookup,
    kernel: Table | None,
    now: float,
    counters: Counters | None = None,
) -> dict[str, Any]:
    skey = service_key(svc)
    ksvc = None if kernel is None else kernel.get(skey)
    servers = []
    for rs in svc.real_servers:
        kw: int | None = None
        c: DestCounters | None = None
        if ksvc is not None:
            d = ksvc.dests.get(dest_key(rs))
            kw = None if d is None else d.weight
        if counters is not None:
            # a destination the kernel does not hold has no connections (0), not unknown ones
            c = counters.get((skey, dest_key(rs)), DestCounters(0, 0))
        servers.append(real_server_status(rs, health(svc, rs), kw, now, c))
    sorry: dict[str, Any] | None = None
    if svc.sorry_server is not None:
        configured = {dest_key(rs) for rs in svc.real_servers}
        sk = dest_key(svc.sorry_server)
        active: bool | None = None
        if kernel is not None:
            # the sorry server is active when the kernel holds it and it is not also a real server
            active = ksvc is not None and sk in ksvc.dests and sk not in configured
        sorry = {
            "address": address_text(svc.sorry_server.address),
            "port": svc.sorry_server.port,
            "active": active,
        }
    return {
        "name": svc.name,
        "key": str(service_key(svc)),
        "vip": address_text(svc.vip),
        "port": svc.port,
        "protocol": svc.protocol,
        "scheduler": svc.scheduler,
        "forwarding": svc.forwarding,
        "persistence": svc.persistence,
        "on_failure": svc.on_failure,
        "sorry_server": sorry,
        "check": {
            "type": svc.check.type,
            "interval": svc.check.interval,
            "timeout": svc.check.timeout,
            "rise": svc.check.rise,
            "fall": svc.check.fall,
        },
        "in_kernel": None if kernel is None else ksvc is not None,
        "up": sum(1 for s in servers if s["health"] == Health.UP.value),
        "real_servers": servers,
    }


def dataplane_status(dp: DataplaneView) -> dict[str, Any]:
    return {
        "kind": dp.kind,
        "last_result": dp.last_result,
        "error": dp.error,
        "consecutive_errors": dp.consecutive_errors,
        "last_apply_ago": dp.last_apply_ago,
        "last_pass_ago": dp.last_pass_ago,
        "applies": dp.applies,
        "drift_repairs": dp.drift_repairs,
        "passes": dp.passes,
        "next_retry_in": dp.next_retry_in,
    }


def build_status(
    config: Config,
    node: NodeView,
    dataplane: DataplaneView,
    health: HealthLookup,
    kernel: Table | None,
    now: float,
    ha: Mapping[str, Any] | None = None,
    counters: Counters | None = None,
) -> dict[str, Any]:
    """The whole status document (schema: ``Status`` in hacontrol/api/openapi.yaml)."""
    services = [service_status(s, health, kernel, now, counters) for s in config.services]
    return {
        "node": node.node,
        "role": node.role,
        "version": node.version,
        "uptime": round(node.uptime, 3),
        "dry_run": node.dry_run,
        "config": {
            "source": config.source,
            "digest": config.digest,
            "loaded_ago": round(node.config_loaded_ago, 3),
        },
        "dataplane": dataplane_status(dataplane),
        "ha": dict(ha) if ha is not None else None,
        "services": services,
    }


def filter_service(doc: dict[str, Any], name: str) -> dict[str, Any] | None:
    """The document with only the service called ``name``; None if there is none."""
    found = [s for s in doc["services"] if s["name"] == name]
    if not found:
        return None
    return {**doc, "services": found}
