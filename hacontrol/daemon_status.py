"""The status document of a running daemon (``GET /v1/status``).

It gathers the inputs of the pure ``hacontrol.status.build_status`` through ``DaemonView``, the
small read-only surface ``hacontrol.daemon.Daemon`` offers: the node block (role, version,
uptime, config age from the ``RunningConfig``), the data plane block (``dataplane_view``, from
the reconciler's status), each real server's health, the kernel table as last read, the plane's
per-destination counters as last read and the HA block (``hacontrol.daemon_ha.ha_status``). It
reads and changes nothing else.
"""

from __future__ import annotations

from typing import Any, Protocol

from hacontrol import __version__
from hacontrol.clock import Clock
from hacontrol.daemon_ha import ha_status
from hacontrol.dataplane.counters import PlaneCounters
from hacontrol.dataplane.reconciler import Reconciler, ReconcileStatus
from hacontrol.health.state import TargetStatus
from hacontrol.model import RealServer, ServiceConfig
from hacontrol.process import HaComponent
from hacontrol.running_config import RunningConfig
from hacontrol.status import DataplaneView, NodeView, age, build_status

__all__ = ["DaemonView", "PlaneCounters", "daemon_status", "dataplane_view"]


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


def daemon_status(d: DaemonView) -> dict[str, Any]:
    """The whole status document of daemon ``d`` (schema: ``Status`` in openapi.yaml)."""
    now = d.clock()
    running = d.running
    cfg = running.config
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
