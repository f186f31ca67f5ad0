"""The status document of a running daemon (``GET /v1/status``).

It gathers the inputs of the pure ``hacontrol.status.build_status`` through ``DaemonView``, the
small read-only surface ``hacontrol.daemon.Daemon`` offers: the node block (role, version,
uptime, config age from the ``RunningConfig``), the data plane block (``dataplane_view``, from
the reconciler's status), each real server's health, the kernel table as last read, the plane's
per-destination counters as last read and the HA block (``hacontrol.daemon_ha.ha_status``). It
reads and changes nothing else.

At a big table (36,544 real servers) the whole document took 0.4-0.7 s of the event loop and a
/metrics scrape 1.9-3 s (16 MB): heartbeats due meanwhile were that late, a Prometheus scrape
every 15 s a false failover. ``status_json`` and ``metrics_text`` (what the API serves) build,
serialise and render the services a slice of about ``STATUS_SLICE`` real servers at a time
and yield to the loop between slices; the text is the same as in one go.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

from hacontrol import __version__
from hacontrol.clock import Clock
from hacontrol.daemon_ha import ha_status
from hacontrol.dataplane.counters import PlaneCounters
from hacontrol.dataplane.reconciler import Reconciler, ReconcileStatus
from hacontrol.health.state import TargetStatus
from hacontrol.metrics import Metrics, family_parts, ha_families, render_families, service_families
from hacontrol.model import RealServer, ServiceConfig
from hacontrol.process import HaComponent
from hacontrol.running_config import RunningConfig
from hacontrol.status import DataplaneView, NodeView, age, build_status, service_status

__all__ = [
    "DaemonView", "PlaneCounters", "daemon_status", "dataplane_view", "metrics_text",
    "service_slices", "status_json",
]  # fmt: skip


class DaemonView(Protocol):
    """What the status reads of the daemon."""

    @property
    def clock(self) -> Clock: ...

    @property
    def running(self) -> RunningConfig: ...

    @property
    def dry_run(self) -> bool: ...

    @property
    def reconciler(self) -> Reconciler | None: ...

    @property
    def ha(self) -> HaComponent | None: ...

    def role(self) -> str: ...

    def dataplane_kind(self) -> str: ...

    def target_status(self, svc: ServiceConfig, rs: RealServer) -> TargetStatus | None:
        """The health of one real server of a service; None when it is not checked."""

    @property
    def counters(self) -> PlaneCounters:
        """The per-destination counters as last read (``latest``: None when unknown)."""


def dataplane_view(st: ReconcileStatus, now: float) -> DataplaneView:
    """The status's data plane block from the reconciler's status (times become ages)."""
    return DataplaneView(
        kind=st.kind,
        last_result=None if st.passes == 0 else ("ok" if st.ok else "error"),
        error=st.error,
        consecutive_errors=st.consecutive_errors,
        last_apply_ago=age(now, st.last_apply_at),
        last_pass_ago=age(now, st.last_pass_at),
        applies=st.applies,
        drift_repairs=st.drift_repairs,
        passes=st.passes,
        next_retry_in=None if st.next_retry_in is None else round(st.next_retry_in, 3),
    )


def daemon_status(d: DaemonView, head_only: bool = False) -> dict[str, Any]:
    """The whole status document of daemon ``d`` (schema: ``Status`` in openapi.yaml);
    ``head_only``: without its services (``status_json`` and ``metrics_text`` add them)."""
    now = d.clock()
    running = d.running
    cfg = running.config
    if head_only:
        cfg = dataclasses.replace(cfg, services=())
    node = NodeView(
        node=cfg.node_name,
        role=d.role(),
        version=__version__,
        uptime=now - running.started_at,
        config_loaded_ago=now - running.loaded_at,
        dry_run=d.dry_run,
    )
    rec = d.reconciler
    if rec is None:
        dataplane = DataplaneView(kind=d.dataplane_kind())
    else:
        dataplane = dataplane_view(rec.status(), now)
    kernel = rec.kernel if rec is not None else None
    ha = ha_status(d.ha, cfg.digest)
    counters = d.counters.latest
    return build_status(
        cfg, node, dataplane, d.target_status, kernel, now, ha=ha, counters=counters
    )


# ---- the same, sliced: a big table's status or scrape never holds the loop -----------------

STATUS_SLICE = 300  # real servers a slice of a status or a scrape shows, about
Annotate = Callable[[dict[str, Any]], None]


async def service_slices(
    d: DaemonView, services: Sequence[ServiceConfig]
) -> AsyncIterator[list[dict[str, Any]]]:
    """The status of ``services``, a slice of about ``STATUS_SLICE`` real servers at a time,
    with ``asyncio.sleep(0)`` between slices (the heartbeat goes out meanwhile). Health and
    counters are read as each slice is built: a slice is exact, the whole a near snapshot."""
    rec = d.reconciler
    kernel = rec.kernel if rec is not None else None
    counters = d.counters.latest
    chunk: list[dict[str, Any]] = []
    work = 0
    for svc in services:
        chunk.append(service_status(svc, d.target_status, kernel, d.clock(), counters))
        work += 1 + len(svc.real_servers)
        if work >= STATUS_SLICE:
            yield chunk
            chunk, work = [], 0
            await asyncio.sleep(0)
    if chunk:
        yield chunk


async def status_json(
    d: DaemonView, head: dict[str, Any], annotate: Annotate, service: str | None = None
) -> list[bytes] | None:
    """The status document as JSON, in pieces to send one after the other (never joined: 12 MB
    at the big table), built and serialised in slices; ``head``: the document without its
    services; only the service named ``service`` when given (None: there is none)."""
    services = d.running.config.services
    if service is not None:
        services = tuple(s for s in services if s.name == service)
        if not services:
            return None
    text = json.dumps({k: v for k, v in head.items() if k != "services"})
    out = [f'{text[:-1]}, "services": ['.encode()]
    async for docs in service_slices(d, services):
        annotate({"services": docs})
        out.append(((", " if len(out) > 1 else "") + json.dumps(docs)[1:-1]).encode())
    out.append(b"]}")
    return out


async def metrics_text(
    d: DaemonView, head: dict[str, Any], metrics: Metrics, plane: str, tail: bytes
) -> list[bytes]:
    """The /metrics text in pieces to send one after the other (never joined: 16-20 MB at the
    big table): the event and node series, then each per-service family rendered a slice of
    services at a time, then the HA block's and ``tail`` (more series)."""
    headers: list[bytes] = []
    samples: list[list[bytes]] = []
    async for docs in service_slices(d, d.running.config.services):
        parts = family_parts(service_families(docs))
        if not headers:
            headers = [h for h, _ in parts]
            samples = [[] for _ in parts]
        for i, (_, lines) in enumerate(parts):
            samples[i].append(lines)
    if not headers:  # no services: the families' headers alone
        headers = [h for h, _ in family_parts(service_families([]))]
        samples = [[] for _ in headers]
    out = [metrics.render_head(head, plane)]
    for h, family in zip(headers, samples, strict=True):
        out.append(h)
        out.extend(family)
    out += [render_families(ha_families(head.get("ha"))), tail]
    return out
