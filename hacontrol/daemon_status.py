"""The status document of a running ``hacontrol.daemon.Daemon`` (``GET /v1/status``).

It gathers the inputs of the pure ``hacontrol.status.build_status`` from the daemon: the node
block (role, version, uptime, config age), the data plane block (``dataplane_view``, from the
reconciler's status), each real server's health, the kernel table as last read and the HA block
(``hacontrol.daemon_ha.ha_status``). It reads and changes nothing else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hacontrol import __version__
from hacontrol.daemon_ha import ha_status
from hacontrol.dataplane.reconciler import ReconcileStatus
from hacontrol.health.state import TargetStatus
from hacontrol.model import RealServer, ServiceConfig
from hacontrol.status import DataplaneView, NodeView, age, build_status

if TYPE_CHECKING:
    from hacontrol.daemon import Daemon

__all__ = ["daemon_status", "dataplane_view"]


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


def daemon_status(d: Daemon) -> dict[str, Any]:
    """The whole status document of daemon ``d`` (schema: ``Status`` in openapi.yaml)."""
    now = d.clock()
    cfg = d.config
    node = NodeView(
        node=cfg.node_name,
        role=d.role(),
        version=__version__,
        uptime=now - d._started_at,
        config_loaded_ago=now - d._config_loaded_at,
        dry_run=d.dry_run,
    )
    if d.reconciler is None:
        dataplane = DataplaneView(kind=str(getattr(d.dataplane, "kind", "-")))
    else:
        dataplane = dataplane_view(d.reconciler.status(), now)
    kernel = d.reconciler.kernel if d.reconciler is not None else None

    def health(svc: ServiceConfig, rs: RealServer) -> TargetStatus | None:
        try:
            return d.health.status(d._key(svc, rs))
        except KeyError:
            return None

    ha = ha_status(d.ha, cfg.digest)
    return build_status(cfg, node, dataplane, health, kernel, now, ha=ha)
