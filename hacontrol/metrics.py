"""Prometheus metrics: one registry per daemon, with every series the daemon exports.

Components receive the ``Metrics`` object and increment its pre-declared series; the API renders
``registry`` at ``GET /metrics``. Series names are stable (``hacontrol_<area>_<what>``).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # health checks
        self.checks = Counter(
            "hacontrol_health_checks",
            "Probes run, by check type and result (ok|fail)",
            ["type", "result"],
            registry=r,
        )
        self.check_latency = Histogram(
            "hacontrol_health_check_latency_seconds",
            "Probe latency",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=r,
        )
        self.health_changes = Counter(
            "hacontrol_health_state_changes",
            "Real-server health state changes, by new state",
            ["state"],
            registry=r,
        )
        self.targets = Gauge(
            "hacontrol_health_targets", "Checked targets by state", ["state"], registry=r
        )
        # data plane
        self.applies = Counter(
            "hacontrol_dataplane_applies",
            "Reconcile passes that changed the kernel, by result",
            ["result"],
            registry=r,
        )
        self.apply_errors = Counter(
            "hacontrol_dataplane_apply_errors", "Failed applies or snapshots", registry=r
        )
        self.apply_latency = Histogram(
            "hacontrol_dataplane_apply_seconds",
            "Time to apply a change to the kernel",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.actions = Counter(
            "hacontrol_dataplane_actions", "Table changes applied, by operation", ["op"], registry=r
        )
        self.resyncs = Counter("hacontrol_dataplane_resyncs", "Periodic resyncs run", registry=r)
        self.drift_repairs = Counter(
            "hacontrol_dataplane_drift_repairs",
            "Resyncs that found the kernel differing from the desired table",
            registry=r,
        )
        self.table_services = Gauge(
            "hacontrol_dataplane_services",
            "Virtual services in the kernel table (owned)",
            registry=r,
        )
        self.table_dests = Gauge(
            "hacontrol_dataplane_destinations",
            "Destinations in the kernel table (owned)",
            registry=r,
        )
        # config
        self.reloads = Counter(
            "hacontrol_config_reloads",
            "Config reloads, by result (ok|error)",
            ["result"],
            registry=r,
        )
        # HA (issue 3)
        self.hb_sent = Counter(
            "hacontrol_ha_heartbeats_sent", "Heartbeats sent, by peer path", ["path"], registry=r
        )
        self.hb_received = Counter(
            "hacontrol_ha_heartbeats_received",
            "Valid heartbeats received, by peer path",
            ["path"],
            registry=r,
        )
        self.hb_rejected = Counter(
            "hacontrol_ha_heartbeats_rejected",
            "Heartbeats dropped, by reason",
            ["reason"],
            registry=r,
        )
        self.ha_transitions = Counter(
            "hacontrol_ha_transitions", "HA role transitions", ["from_role", "to_role"], registry=r
        )
        self.ha_role = Gauge("hacontrol_ha_role", "1 for the current HA role", ["role"], registry=r)
        self.announcements = Counter(
            "hacontrol_ha_announcements",
            "Gratuitous ARP / unsolicited NA packets sent",
            ["family"],
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
