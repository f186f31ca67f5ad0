"""Prometheus metrics: one registry per daemon, with every series the daemon exports.

Two kinds. Events are counted where they happen: components receive the ``Metrics`` object and
increment its pre-declared series (checks run, applies, heartbeats, transitions). State is read
at scrape time: ``status_families`` turns the status document (``hacontrol.status``: health,
weights, connections and traffic per real server, the HA block) into gauge and counter families,
so nothing is updated on a hot path and a service or real server that leaves the config leaves
/metrics with it (cardinality: a few series per configured real server, none per connection).
``Metrics.render`` writes both; the API serves it at ``GET /metrics``. Series names are stable
(``hacontrol_<area>_<what>``); docs/api.md lists them.
"""

from __future__ import annotations

import platform
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    InfoMetricFamily,
    Metric,
)

from hacontrol import __version__
from hacontrol.model import host_port

HEALTH_STATES = ("up", "down", "unknown")
SVC, RS = ["service"], ["service", "real_server"]


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
        self.foreign_changes = Counter(
            "hacontrol_dataplane_foreign_changes",
            "Changes to the kernel table by someone else, seen as they happen (nftables)",
            registry=r,
        )
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
        self.loop_lag_max = Gauge(
            "hacontrol_loop_lag_max_seconds",
            "Largest lateness of the event loop since start (what a heartbeat send waited)",
            registry=r,
        )
        self.loop_lag = Histogram(
            "hacontrol_loop_lag_seconds",
            "Lateness of the event loop, sampled every 20 ms",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
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
        # the read side (hacontrol.ha.read_gap, issue 8): the event loop reads the heartbeats
        self.ha_read_gap_max = Gauge(
            "hacontrol_ha_read_gap_max_seconds",
            "Largest gap between two heartbeats read from the peer, by path (since start)",
            ["path"],
            registry=r,
        )
        # the heartbeat sender thread (hacontrol.ha.beat, issue 8)
        self.ha_beat_pauses = Counter(
            "hacontrol_ha_beat_pauses",
            "Times the heartbeat sender thread paused: the event loop stopped publishing",
            ["reason"],
            registry=r,
        )
        self.ha_beat_errors = Counter(
            "hacontrol_ha_beat_errors",
            "Heartbeat sender thread errors (send: a failed send; thread: it stopped)",
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

    def render(self, status: Mapping[str, Any] | None = None, plane: str = "-") -> bytes:
        """The text exposition: the event series, plus the state series of ``status`` (a
        status document) when given, with ``hacontrol_build_info`` naming ``plane``."""
        if status is None:
            return generate_latest(self.registry)
        return generate_latest(_Scrape(self.registry, status_families(status, plane)))

    def render_head(self, status: Mapping[str, Any], plane: str = "-") -> bytes:
        """The start of a scrape: the event series and the node's state series of ``status``
        (its services and HA block follow: ``family_parts``, ``ha_families``)."""
        return generate_latest(_Scrape(self.registry, head_families(status, plane)))


def render_families(families: list[Metric]) -> bytes:
    """The text exposition of ``families`` alone (series other parts of the daemon add)."""
    return generate_latest(_Scrape(CollectorRegistry(), families))


class _Scrape:
    """The registry's series followed by one scrape's state families (a collector for
    ``generate_latest``, made per scrape: nothing of a past scrape lingers)."""

    def __init__(self, registry: CollectorRegistry, families: list[Metric]) -> None:
        self.registry, self.families = registry, families

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()
        yield from self.families


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=labels)


def _flag(v: Any) -> float | None:
    return None if v is None else (1.0 if v else 0.0)


def _add(m: GaugeMetricFamily | CounterMetricFamily, labels: list[str], v: Any) -> None:
    """One sample, unless the value is unknown (None): an absent series, never a made-up 0."""
    if v is not None:
        m.add_metric(labels, float(v))


def status_families(doc: Mapping[str, Any], plane: str = "-") -> list[Metric]:
    """The state series of one status document (see docs/api.md for each)."""
    return [*head_families(doc, plane), *service_families(doc["services"]),
            *ha_families(doc.get("ha"))]  # fmt: skip


def head_families(doc: Mapping[str, Any], plane: str = "-") -> list[Metric]:
    """The node's state series of a status document (build, config, uptime, data plane)."""
    build = InfoMetricFamily(
        "hacontrol_build", "Version, Python and data plane of this daemon",
        labels=["version", "python", "plane"],
    )  # fmt: skip
    build.add_metric([__version__, platform.python_version(), plane], {})
    config = InfoMetricFamily("hacontrol_config", "Digest of the config in use", labels=["digest"])
    config.add_metric([str(doc["config"]["digest"])], {})
    uptime = _gauge("hacontrol_uptime_seconds", "Seconds since the daemon started", [])
    uptime.add_metric([], float(doc["uptime"]))
    dp = doc["dataplane"]
    dp_ok = _gauge(
        "hacontrol_dataplane_last_apply_ok",
        "1 when the last reconcile pass succeeded, 0 when it failed (absent before the first)",
        [],
    )
    _add(dp_ok, [], None if dp["last_result"] is None else dp["last_result"] == "ok")
    dp_err = _gauge(
        "hacontrol_dataplane_consecutive_errors", "Reconcile passes failed in a row", []
    )
    dp_err.add_metric([], float(dp["consecutive_errors"]))
    return [build, config, uptime, dp_ok, dp_err]


def family_parts(families: list[Metric]) -> list[tuple[bytes, bytes]]:
    """The text exposition of ``families`` cut per family: (its ``# HELP``/``# TYPE`` lines,
    its samples). A big scrape renders its per-service families a slice of services at a time
    and joins the samples of each family: the same text as one ``generate_latest``."""
    out = []
    for block in (b"\n" + render_families(families)).split(b"\n# HELP ")[1:]:
        help_, _, rest = block.partition(b"\n")
        type_, _, samples = rest.partition(b"\n")
        samples = samples.rstrip(b"\n")
        head = b"# HELP " + help_ + b"\n" + type_ + b"\n"
        out.append((head, samples + b"\n" if samples else b""))
    return out


def service_families(services: Iterable[Mapping[str, Any]]) -> list[Metric]:
    """Per configured service and real server: health, weights, connections, traffic."""
    info = InfoMetricFamily(
        "hacontrol_service", "A configured virtual service",
        labels=["service", "vip", "port", "protocol", "scheduler", "forwarding"],
    )  # fmt: skip
    total = _gauge("hacontrol_service_real_servers", "Real servers configured", SVC)
    up = _gauge("hacontrol_service_real_servers_up", "Real servers healthy", SVC)
    in_kernel = _gauge("hacontrol_service_in_kernel", "1 when the kernel holds the service", SVC)
    sorry = _gauge(
        "hacontrol_service_sorry_active", "1 when the sorry server takes the traffic", SVC
    )
    health = _gauge(
        "hacontrol_real_server_health", "1 for the real server's health state (up, down, unknown)",
        [*RS, "state"],
    )  # fmt: skip
    since = _gauge(
        "hacontrol_real_server_health_seconds", "Seconds in the current health state", RS
    )
    weight = _gauge("hacontrol_real_server_weight", "Configured weight", RS)
    kweight = _gauge(
        "hacontrol_real_server_kernel_weight", "Weight in the kernel (absent: not in it)", RS
    )
    conns = _gauge(
        "hacontrol_real_server_connections",
        "Connections now, by state (active, inactive); absent where the plane has no counters",
        [*RS, "state"],
    )
    scheduled = CounterMetricFamily(
        "hacontrol_real_server_scheduled_connections",
        "Connections scheduled to it (kernel counter)",
        labels=RS,
    )
    packets = CounterMetricFamily(
        "hacontrol_real_server_packets", "Packets (kernel counter), by direction (in, out)",
        labels=[*RS, "direction"],
    )  # fmt: skip
    octets = CounterMetricFamily(
        "hacontrol_real_server_bytes", "Bytes (kernel counter), by direction (in, out)",
        labels=[*RS, "direction"],
    )  # fmt: skip
    for svc in services:
        name = str(svc["name"])
        info.add_metric(
            [name, svc["vip"], str(svc["port"]), svc["protocol"], svc["scheduler"],
             svc["forwarding"]], {},
        )  # fmt: skip
        total.add_metric([name], float(len(svc["real_servers"])))
        up.add_metric([name], float(svc["up"]))
        _add(in_kernel, [name], _flag(svc["in_kernel"]))
        if svc["sorry_server"] is not None:
            _add(sorry, [name], _flag(svc["sorry_server"]["active"]))
        for rs in svc["real_servers"]:
            lab = [name, host_port(rs["address"], rs["port"])]
            for state in HEALTH_STATES:
                health.add_metric([*lab, state], 1.0 if rs["health"] == state else 0.0)
            _add(since, lab, rs.get("health_since_ago"))
            weight.add_metric(lab, float(rs["weight"]))
            _add(kweight, lab, rs["kernel_weight"])
            c, t = rs.get("connections"), rs.get("traffic")
            if c is not None:
                conns.add_metric([*lab, "active"], float(c["active"]))
                conns.add_metric([*lab, "inactive"], float(c["inactive"]))
            if t is not None:
                scheduled.add_metric(lab, float(t["connections"]))
                for way in ("in", "out"):
                    packets.add_metric([*lab, way], float(t[f"packets_{way}"]))
                    octets.add_metric([*lab, way], float(t[f"bytes_{way}"]))
    return [info, total, up, in_kernel, sorry, health, since, weight, kweight, conns,
            scheduled, packets, octets]  # fmt: skip


def ha_families(ha: Mapping[str, Any] | None) -> list[Metric]:
    """The HA pair member's state (none without ``ha:``; the role is ``hacontrol_ha_role``)."""
    if ha is None:
        return []
    peer = ha.get("peer")
    alive = _gauge("hacontrol_ha_peer_alive", "1 while the peer's heartbeats arrive", [])
    alive.add_metric([], 1.0 if peer is not None and peer.get("alive") else 0.0)
    match = _gauge(
        "hacontrol_ha_peer_config_match",
        "1 when the peer runs the same config digest, 0 when not (absent: no peer heard)",
        [],
    )
    _add(match, [], _flag((ha.get("config") or {}).get("peer_match")))
    held = _gauge("hacontrol_ha_vips_held", "1 while this node holds (should hold) the VIPs", [])
    held.add_metric([], 1.0 if ha.get("vips_held") else 0.0)
    vips = ha.get("vips") or []
    present = _gauge("hacontrol_ha_vips_present", "VIPs present on this node's interfaces", [])
    present.add_metric([], float(sum(1 for v in vips if v.get("present"))))
    configured = _gauge("hacontrol_ha_vips_configured", "VIPs configured", [])
    configured.add_metric([], float(len(vips)))
    since = _gauge(
        "hacontrol_ha_seconds_since_transition",
        "Seconds since the last role transition (monotonic clock)",
        [],
    )
    _add(since, [], ha.get("since_ago"))
    return [alive, match, held, present, configured, since, *beat_families(ha.get("beat"))]


def beat_families(beat: Mapping[str, Any] | None) -> list[Metric]:
    """The heartbeat sender's state (hacontrol.ha.beat, beat_proc; none when the loop sends)."""
    if not beat or beat.get("sender") not in ("thread", "process"):
        return []
    late = _gauge(
        "hacontrol_ha_beat_late_max_seconds",
        "Largest lateness of a heartbeat sent by the sender thread behind its schedule",
        [],
    )
    _add(late, [], (beat.get("late_max_ms") or 0.0) / 1000)
    paused = _gauge(
        "hacontrol_ha_beat_paused",
        "1 while the heartbeat sender thread is paused (the event loop stopped publishing)",
        [],
    )
    paused.add_metric([], 1.0 if beat.get("paused") else 0.0)
    alive = _gauge(
        "hacontrol_ha_beat_alive", "1 while the heartbeat sender thread runs (0: it failed)", []
    )
    alive.add_metric([], 1.0 if beat.get("alive") else 0.0)
    return [late, paused, alive]
