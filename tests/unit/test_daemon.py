"""The daemon end to end in one process: MemoryDataplane, real TCP checks on loopback, short
intervals. Start -> health UP -> table applied; reload keeps health (no flap); an invalid reload
keeps the old config; stop keeps or removes the table; signals; sd_notify; the served API."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import pytest
import yaml
from structlog.testing import capture_logs

from hacontrol.api.app import ApiServer, create_app, openapi_text
from hacontrol.config import load
from hacontrol.config.digest import compute_digest
from hacontrol.daemon import Daemon, DrillError, DrillUnavailable
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.table import ServiceKey
from hacontrol.health.state import Health
from hacontrol.process import StartError, choose_loop, local_listener, sd_notify

WEB = ServiceKey("tcp", "192.0.2.10", 80)
TIMEOUT = 10.0  # generous: the machine is shared


async def wait_for(cond: Callable[[], bool], what: str, limit: float = TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def more_checks(d: Daemon, rounds: int) -> None:
    """Wait until every target was checked ``rounds`` more times (on average)."""
    want = d.health.checks_run + rounds * len(d.health.keys())
    await wait_for(lambda: d.health.checks_run >= want, f"{rounds} more rounds of checks")


class Backend:
    """A loopback TCP server that accepts and closes; ``close()`` makes checks fail (refused)."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> Backend:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        self.server = await asyncio.start_server(handle, "127.0.0.1", port, reuse_address=True)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
            self.server = None


def config_text(tmp: Path, ports: list[int], weights: list[int], **extra: Any) -> str:
    rs = "\n".join(
        f"      - {{address: 127.0.0.1, port: {p}, weight: {w}}}"
        for p, w in zip(ports, weights, strict=True)
    )
    keep = str(extra.get("keep_on_stop", True)).lower()
    api = extra.get("api", "")
    drain = extra.get("drain_removed", "5m")
    return f"""
node: {{name: unit}}
{api}
dataplane: {{kind: memory, state_dir: {tmp}/state, resync_interval: 30s, keep_on_stop: {keep},
  drain_removed: {drain}}}
services:
  - name: web
    vip: 192.0.2.10
    port: 80
    check: {{type: tcp, interval: 100ms, timeout: 80ms, rise: 1, fall: 2}}
    real_servers:
{rs}
"""


@pytest.fixture
async def backends() -> AsyncIterator[list[Backend]]:
    bs = [await Backend().start(), await Backend().start()]
    try:
        yield bs
    finally:
        for b in bs:
            await b.close()


DaemonFactory = Callable[..., Awaitable[tuple[Daemon, MemoryDataplane, Path]]]


@pytest.fixture
async def make_daemon(tmp_path: Path) -> AsyncIterator[DaemonFactory]:
    made: list[Daemon] = []

    async def make(text: str, serve_api: bool = False) -> tuple[Daemon, MemoryDataplane, Path]:
        path = tmp_path / "hacontrol.yaml"
        path.write_text(text)
        dp = MemoryDataplane()
        d = Daemon(load(str(path)), dataplane=dp, serve_api=serve_api)
        await d.start()
        made.append(d)
        return d, dp, path

    yield make
    for d in made:
        await d.stop("test teardown")


def weights(dp: MemoryDataplane) -> dict[int, int]:
    svc = dp.table.get(WEB)
    return {} if svc is None else {k.port: v.weight for k, v in svc.dests.items()}


async def test_start_health_up_table_applied(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, dp, _ = await make_daemon(config_text(tmp_path, ports, [3, 1]))
    await wait_for(lambda: weights(dp) == {ports[0]: 3, ports[1]: 1}, "both dests in the table")
    doc = d.status()
    assert doc["role"] == "standalone" and doc["node"] == "unit"
    rss = doc["services"][0]["real_servers"]
    await wait_for(
        lambda: d.status()["services"][0]["real_servers"][0]["kernel_weight"] == 3,
        "kernel weight in status",
    )
    assert [r["health"] for r in rss] == ["up", "up"]
    assert doc["dataplane"]["kind"] == "memory" and doc["dataplane"]["last_result"] == "ok"
    # the document matches the Status schema of the OpenAPI description
    spec = yaml.safe_load(openapi_text())
    schema = {"$ref": "#/components/schemas/Status", "components": spec["components"]}
    jsonschema.Draft202012Validator(schema).validate(d.status())


async def test_server_down_is_removed_and_logged(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, dp, _ = await make_daemon(config_text(tmp_path, ports, [1, 1]))
    await wait_for(lambda: len(weights(dp)) == 2, "both up")
    with capture_logs() as logs:
        await backends[1].close()
        await wait_for(lambda: set(weights(dp)) == {ports[0]}, "the dead server removed")
    changes = [e for e in logs if e["event"] == "health.change"]
    assert len(changes) == 1, "one event per change: the daemon's, with the services"
    ev = changes[0]
    assert ev["services"] == ["web"] and ev["real_server"] == f"127.0.0.1:{ports[1]}"
    assert (ev["from"], ev["to"]) == ("up", "down")
    assert "refused" in ev["reason"]
    rs = d.status()["services"][0]["real_servers"][1]
    assert rs["health"] == "down" and rs["kernel_weight"] is None and rs["failures"] >= 2


async def test_reload_keeps_health_and_applies_weight(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, dp, path = await make_daemon(config_text(tmp_path, ports, [1, 1]))
    await wait_for(lambda: len(weights(dp)) == 2, "both up")
    with capture_logs() as logs:
        path.write_text(config_text(tmp_path, ports, [5, 1]))
        result = await d.reload("test")
        assert result["result"] == "ok" and result["changed"] is True
        assert (result["targets_kept"], result["targets_added"], result["targets_removed"]) == (
            2,
            0,
            0,
        )
        # states right after the reload: still up, no reset to unknown
        assert [d.health.state(k) for k in list(d.health.keys())] == [Health.UP, Health.UP]
        await wait_for(lambda: weights(dp) == {ports[0]: 5, ports[1]: 1}, "new weight applied")
        await more_checks(d, 3)  # a flap would show up here
    assert [e for e in logs if e["event"] == "health.change"] == []
    reloads = [e for e in logs if e["event"] == "config.reload"]
    assert len(reloads) == 1 and reloads[0]["result"] == "ok" and reloads[0]["reason"] == "test"
    assert d.config.services[0].real_servers[0].weight == 5


async def test_invalid_reload_keeps_old_config(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, dp, path = await make_daemon(config_text(tmp_path, ports, [2, 1]))
    await wait_for(lambda: len(weights(dp)) == 2, "both up")
    old = d.config
    bad = config_text(tmp_path, ports, [2, 1]).replace("port: 80", "port: http")
    bad = bad.replace(f"port: {ports[1]}", "port: 70000")
    path.write_text(bad)
    with capture_logs() as logs:
        result = await d.reload("SIGHUP")
    assert result["result"] == "error"
    assert len(result["errors"]) == 2
    assert all(e.startswith(f"{path}:") for e in result["errors"])
    assert d.config is old
    ev = [e for e in logs if e["event"] == "config.reload"]
    assert len(ev) == 1 and ev[0]["result"] == "error" and ev[0]["errors"] == result["errors"]
    assert ev[0]["log_level"] == "error" and "SIGHUP" in ev[0]["reason"]
    await more_checks(d, 2)
    assert weights(dp) == {ports[0]: 2, ports[1]: 1}
    metrics = b"".join(await d.metrics_text()).decode()
    assert 'hacontrol_config_reloads_total{result="error"} 1.0' in metrics


async def test_reload_adds_and_removes_targets(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, dp, path = await make_daemon(config_text(tmp_path, ports[:1], [1], drain_removed=0))
    await wait_for(lambda: weights(dp) == {ports[0]: 1}, "first up")
    path.write_text(config_text(tmp_path, ports[1:], [4], drain_removed=0))
    result = await d.reload("swap")
    assert (result["targets_added"], result["targets_removed"], result["targets_kept"]) == (1, 1, 0)
    await wait_for(lambda: weights(dp) == {ports[1]: 4}, "swapped")


async def test_reload_drains_a_removed_real_server(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    """Dropped from the config: weight 0 (no new flows) until it drains; the memory plane
    counts no connections, so only the deadline would end it."""
    ports = [b.port for b in backends]
    d, dp, path = await make_daemon(config_text(tmp_path, ports[:1], [1]))
    await wait_for(lambda: weights(dp) == {ports[0]: 1}, "first up")
    path.write_text(config_text(tmp_path, ports[1:], [4]))
    await d.reload("swap")
    await wait_for(lambda: weights(dp) == {ports[0]: 0, ports[1]: 4}, "draining beside the new")
    leaving = d.override_status()["leaving"]
    assert [lv["real_server"] for lv in leaving] == [f"127.0.0.1:{ports[0]}"]
    assert leaving[0]["connections"] is None  # unknown on this plane, not a made-up 0


@pytest.mark.parametrize(("keep", "expected_left"), [(True, 1), (False, 0)])
async def test_stop_keeps_or_removes_table(
    tmp_path: Path, backends: list[Backend], keep: bool, expected_left: int
) -> None:
    ports = [b.port for b in backends]
    path = tmp_path / "c.yaml"
    path.write_text(config_text(tmp_path, ports, [1, 1], keep_on_stop=keep))
    dp = MemoryDataplane()
    d = Daemon(load(str(path)), dataplane=dp, serve_api=False)
    await d.start()
    try:
        await wait_for(lambda: len(weights(dp)) == 2, "both up")
    finally:
        await d.stop("test")
    assert len(dp.table) == expected_left
    assert dp.closed


async def test_run_signals_reload_and_stop(tmp_path: Path, backends: list[Backend]) -> None:
    ports = [b.port for b in backends]
    path = tmp_path / "c.yaml"
    path.write_text(config_text(tmp_path, ports, [1, 1]))
    dp = MemoryDataplane()
    d = Daemon(load(str(path)), dataplane=dp, serve_api=False)
    with capture_logs() as logs:
        task = asyncio.create_task(d.run())
        await wait_for(lambda: len(weights(dp)) == 2, "both up")
        path.write_text(config_text(tmp_path, ports, [7, 1]))
        os.kill(os.getpid(), signal.SIGHUP)
        await wait_for(lambda: weights(dp).get(ports[0]) == 7, "SIGHUP reload applied")
        t0 = asyncio.get_running_loop().time()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(task, TIMEOUT)
        assert asyncio.get_running_loop().time() - t0 < 1.0
    events = [e["event"] for e in logs if e["event"].startswith(("daemon.", "config."))]
    assert events == ["daemon.start", "config.reload", "daemon.stop"]
    stop = next(e for e in logs if e["event"] == "daemon.stop")
    assert stop["reason"] == "SIGTERM" and stop["kernel_table"] == "kept"
    assert len(dp.table) == 1  # kept in place


async def test_served_api_status_and_reload_token(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    token = tmp_path / "token"
    token.write_text("t0ken\n")
    sock = tmp_path / "run" / "api.sock"
    api = f'api: {{listen: "unix:{sock}", token_file: {token}}}'
    _d, dp, _ = await make_daemon(config_text(tmp_path, ports, [1, 1], api=api), serve_api=True)
    await wait_for(lambda: len(weights(dp)) == 2, "both up")
    conn = aiohttp.UnixConnector(path=str(sock))
    async with aiohttp.ClientSession(connector=conn) as s:
        async with s.get("http://d/v1/status") as r:
            doc = await r.json()
            assert r.status == 200 and doc["services"][0]["name"] == "web"
        async with s.post("http://d/v1/reload") as r:
            assert r.status == 401 and (await r.json())["status"] == 401
        async with s.post("http://d/v1/reload", headers={"Authorization": "Bearer t0ken"}) as r:
            body = await r.json()
            assert r.status == 200 and body["result"] == "ok" and body["changed"] is False
        async with s.get("http://d/metrics") as r:
            assert "hacontrol_health_targets" in await r.text()


async def test_start_refuses_unreadable_token(tmp_path: Path, backends: list[Backend]) -> None:
    token = tmp_path / "token"
    token.write_text("")
    path = tmp_path / "c.yaml"
    api = f'api: {{listen: "unix:{tmp_path}/api.sock", token_file: {token}}}'
    path.write_text(config_text(tmp_path, [backends[0].port], [1], api=api))
    # check_files=False: load refuses it too (as `check` does); here the daemon's own check
    d = Daemon(load(str(path), check_files=False), dataplane=MemoryDataplane())
    with pytest.raises(StartError, match="empty"):
        await d.start()


async def test_start_refuses_api_address_in_use(tmp_path: Path, backends: list[Backend]) -> None:
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        path = tmp_path / "c.yaml"
        api = f"api: {{listen: 127.0.0.1:{busy.getsockname()[1]}}}"
        path.write_text(config_text(tmp_path, [backends[0].port], [1], api=api))
        dp = MemoryDataplane()
        d = Daemon(load(str(path)), dataplane=dp)
        with pytest.raises(StartError, match=r"api\.listen"):
            await d.start()
        assert dp.closed
    finally:
        busy.close()


def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify("READY=1") is False
    path = str(tmp_path / "notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(path)
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sd_notify("READY=1") is True
        assert s.recv(100) == b"READY=1"


async def test_dry_run_prints_and_survives_a_busy_api(
    tmp_path: Path, backends: list[Backend]
) -> None:
    sock = tmp_path / "api.sock"
    real = Daemon(load(str(_write(tmp_path, backends, sock))), dataplane=MemoryDataplane())
    busy = ApiServer(create_app(real), f"unix:{sock}")  # "the real daemon" holds the socket
    await busy.start()
    out = io.StringIO()
    d = Daemon(load(str(_write(tmp_path, backends, sock))), dry_run=True, out=out)
    try:
        with capture_logs() as logs:
            await d.start()
        assert d.api is None
        assert any(e["event"] == "api.disabled" for e in logs)
        await wait_for(lambda: out.getvalue().count("would apply: add_dest") == 2, "printed")
        assert "would apply: add_service tcp/192.0.2.10:80" in out.getvalue()
        assert d.status()["dry_run"] is True
        assert not (tmp_path / "state").exists()  # a dry run writes no ownership file
    finally:
        await d.stop("test")
        await busy.stop()


def _write(tmp: Path, backends: list[Backend], sock: Path) -> Path:
    path = tmp / "dry.yaml"
    text = config_text(
        tmp, [b.port for b in backends], [1, 1], api=f'api: {{listen: "unix:{sock}"}}'
    )
    path.write_text(text)
    return path


async def test_shared_target_checked_once_logged_per_services(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    port = backends[0].port
    text = config_text(tmp_path, [port], [1])
    second = (
        text[text.index("  - name: web") :]
        .replace("name: web", "name: api")
        .replace("port: 80", "port: 81")
    )
    d, dp, _ = await make_daemon(text + second)
    api_key = ServiceKey("tcp", "192.0.2.10", 81)
    await wait_for(
        lambda: api_key in dp.table and len(dp.table[api_key].dests) == 1 and len(weights(dp)) == 1,
        "both services have the shared server",
    )
    assert len(d.health.keys()) == 1  # one probe for both services
    with capture_logs() as logs:
        await backends[0].close()
        await wait_for(lambda: not weights(dp) and not dp.table[api_key].dests, "removed twice")
    ev = [e for e in logs if e["event"] == "health.change" and "services" in e]
    assert len(ev) == 1 and ev[0]["services"] == ["api", "web"]
    assert d.health_summary() == [("web", 0, 1), ("api", 0, 1)]


# -- HA wiring (a fake runner: the real one is tested in test_ha_runner / integration) ----------


class FakeRunner:
    """Stands in for hacontrol.ha.runner.HaRunner: records calls, serves a realistic status."""

    def __init__(self, role: str = "active", peer_match: bool = True) -> None:
        self.role = role
        self.peer_match = peer_match
        self.notifier: Any = None
        self.digest = ""
        self.calls: list[str] = []

    def reconfigure(
        self, *, notifier: Any = None, digest: str | None = None, handoff_services: Any = None
    ) -> None:
        self.notifier = notifier if notifier is not None else self.notifier
        self.digest = digest if digest is not None else self.digest

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self, graceful: bool = True) -> None:
        self.calls.append(f"stop graceful={graceful}")

    def status(self) -> dict[str, Any]:
        return {
            "node": "unit", "role": self.role, "reason": "peer b is backup; we win",
            "since": "2026-01-01T00:00:00Z", "since_ago": 5.0, "priority": 150,
            "effective_priority": 150, "blocked": False, "handing_over": False, "faults": [],
            "peer": {"name": "b", "role": "backup", "priority": 100, "effective_priority": 100,
                     "alive": True, "last_heard_ago": 0.1, "config_match": self.peer_match,
                     "blocked": False, "healthy": 2,
                     "paths": {"192.0.2.12:5405": {"last_heard_ago": 0.1}}},
            "peers_configured": ["192.0.2.12:5405"],
            "vips": [{"address": "198.51.100.10/24", "interface": "eth0", "present": True,
                      "lease_left": 2.5}],
            "vips_held": True, "lease": 3.0, "epoch": 7, "last_takeover": {"detected": 5.0},
            "heartbeats": {"sent": {"192.0.2.12:5405": 3}, "received": {}, "rejected": {}},
            "transitions": [{"ago": 5.0, "from": "starting", "to": "active",
                             "reason": "no peer heard"}],
        }  # fmt: skip

    async def drill_handover(self) -> dict[str, Any]:
        self.calls.append("handover")
        if self.role != "active":
            raise DrillError(f"this node is {self.role}, not active")
        return {"drill": "handover", "ok": True, "handover_sent": 0.0, "vip_added": 0.004,
                "released_here": 0.006, "overlap": 0.002, "gap": 0.0}  # fmt: skip

    async def drill_fault(self, seconds: float) -> dict[str, Any]:
        self.calls.append(f"fault {seconds}")
        return {"drill": "fault", "ok": True, "seconds": seconds, "fault": 0.0, "gap": 0.61}


def ha_text(tmp: Path, priority: int = 150, notify: str = '["/bin/echo", "{role}"]') -> str:
    key = tmp / "ha.key"
    key.write_text("k" * 32)
    key.chmod(0o600)
    return f"""
ha:
  bind: 192.0.2.11:5405
  peers: [192.0.2.12:5405]
  priority: {priority}
  interval: 100ms
  secret_file: {key}
  vips: [{{address: 198.51.100.10/24, interface: eth0}}]
  notify: {notify}
"""


async def ha_daemon(tmp: Path, ports: list[int], runner: FakeRunner) -> tuple[Daemon, Path]:
    path = tmp / "ha.yaml"
    path.write_text(config_text(tmp, ports, [1, 1]) + ha_text(tmp))
    d = Daemon(load(str(path)), dataplane=MemoryDataplane(), serve_api=False, ha=runner)
    await d.start()
    return d, path


async def test_ha_runner_started_last_stopped_first_and_in_status(
    tmp_path: Path, backends: list[Backend]
) -> None:
    runner = FakeRunner()
    d, _ = await ha_daemon(tmp_path, [b.port for b in backends], runner)
    try:
        assert runner.calls == ["start"] and d.reconciler is not None
        doc = d.status()
        assert doc["role"] == "active"
        assert doc["ha"]["peer"]["name"] == "b"
        assert doc["ha"]["config"] == {"digest": d.config.digest, "peer_match": True}
        spec = yaml.safe_load(openapi_text())
        schema = {"$ref": "#/components/schemas/Status", "components": spec["components"]}
        jsonschema.Draft202012Validator(schema).validate(doc)
        # what the runner advertises in heartbeats: healthy real servers per service
        await wait_for(lambda: d.health_summary() == [("web", 2, 2)], "both up in the summary")
    finally:
        with capture_logs() as logs:
            await d.stop("test")
    assert runner.calls == ["start", "stop graceful=True"]
    events = [e["event"] for e in logs]
    assert events.index("ha.stopped") < events.index("daemon.stop")


async def test_ha_digest_mismatch_is_loud_in_status(
    tmp_path: Path, backends: list[Backend]
) -> None:
    d, _ = await ha_daemon(tmp_path, [b.port for b in backends], FakeRunner(peer_match=False))
    try:
        cfg = d.status()["ha"]["config"]
        assert cfg["peer_match"] is False and "MISMATCH" in cfg["warning"]
    finally:
        await d.stop("test")


async def test_drills_forwarded_and_validated(tmp_path: Path, backends: list[Backend]) -> None:
    runner = FakeRunner()
    d, _ = await ha_daemon(tmp_path, [b.port for b in backends], runner)
    try:
        assert (await d.drill("handover"))["gap"] == 0.0
        assert (await d.drill("fault", 1.5))["seconds"] == 1.5
        with pytest.raises(ValueError, match="dead interval"):
            await d.drill("fault", 0.2)  # 100ms x 3 = 0.3 s
        runner.role = "backup"
        with pytest.raises(DrillError, match="not active"):
            await d.drill("handover")
        assert runner.calls[1:] == ["handover", "fault 1.5", "handover"]
    finally:
        await d.stop("test")


async def test_drill_without_ha_is_unavailable(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    d, _, _ = await make_daemon(config_text(tmp_path, [b.port for b in backends], [1, 1]))
    assert d.ha is None and d.status()["ha"] is None and d.role() == "standalone"
    with pytest.raises(DrillUnavailable, match="no ha: section"):
        await d.drill("handover")


async def test_reload_ha_priority_needs_restart_notify_live(
    tmp_path: Path, backends: list[Backend]
) -> None:
    ports = [b.port for b in backends]
    runner = FakeRunner()
    d, path = await ha_daemon(tmp_path, ports, runner)
    try:
        old_ha = d.config.ha
        text = config_text(tmp_path, ports, [4, 1]) + ha_text(
            tmp_path, priority=10, notify='["/bin/true", "{role}"]'
        )
        path.write_text(text)
        result = await d.reload("test")
        assert result["result"] == "ok"
        assert result["needs_restart"] == ["ha.priority"]
        assert result["applied_live"] == ["ha.notify"]
        assert d.config.ha is not None and old_ha is not None
        assert d.config.ha.priority == old_ha.priority == 150  # kept until a restart
        assert d.config.ha.notify == ("/bin/true", "{role}")
        assert runner.notifier is not None and runner.notifier.argv == ("/bin/true", "{role}")
        # the services changed: the advertised digest follows; the runner was not restarted
        assert runner.digest == d.config.digest
        assert runner.calls == ["start"]
        assert d.config.digest == compute_digest(d.config.services, d.config.ha)
    finally:
        await d.stop("test")


async def test_reload_adding_ha_needs_restart(
    tmp_path: Path, backends: list[Backend], make_daemon: DaemonFactory
) -> None:
    ports = [b.port for b in backends]
    d, _, path = await make_daemon(config_text(tmp_path, ports, [1, 1]))
    path.write_text(config_text(tmp_path, ports, [1, 1]) + ha_text(tmp_path))
    result = await d.reload("test")
    assert result["needs_restart"] == ["ha"] and d.config.ha is None and d.ha is None
    assert d.config.digest == compute_digest(d.config.services, None)


async def test_start_refuses_a_bad_ha_key(tmp_path: Path, backends: list[Backend]) -> None:
    path = tmp_path / "ha.yaml"
    path.write_text(config_text(tmp_path, [backends[0].port], [1]) + ha_text(tmp_path))
    (tmp_path / "ha.key").write_text("short")
    dp = MemoryDataplane()
    d = Daemon(load(str(path), check_files=False), dataplane=dp, serve_api=False)
    with pytest.raises(StartError, match="at least 16 bytes"):
        await d.start()
    assert not dp.table  # refused before the kernel was touched


def test_choose_loop_is_uvloop_for_every_plane(tmp_path: Path) -> None:
    for kind in ("nftables", "memory"):
        text = config_text(tmp_path, [1], [1]).replace("kind: memory", f"kind: {kind}")
        path = tmp_path / f"{kind}.yaml"
        path.write_text(text)
        factory, reason = choose_loop(load(str(path)), dry_run=False)
        assert factory is not None and reason.startswith("uvloop")


@pytest.mark.parametrize(
    ("bound", "local"),
    [("unix:/run/x.sock", True), ("127.0.0.1:9480", True), ("[::1]:9480", True),
     ("0.0.0.0:9480", False), ("192.0.2.1:9480", False), ("[2001:db8::1]:1", False)],
)  # fmt: skip
def test_local_listener(bound: str, local: bool) -> None:
    assert local_listener(bound) is local


async def test_dry_run_with_ha_runs_no_pair(tmp_path: Path, backends: list[Backend]) -> None:
    path = tmp_path / "ha.yaml"
    path.write_text(config_text(tmp_path, [backends[0].port], [1]) + ha_text(tmp_path))
    d = Daemon(load(str(path)), dataplane=MemoryDataplane(), serve_api=False, dry_run=True)
    with capture_logs() as logs:
        await d.start()
    try:
        assert d.ha is None and d.role() == "standalone" and d.status()["ha"] is None
        assert any(e["event"] == "ha.disabled" and "dry run" in e["reason"] for e in logs)
        with pytest.raises(DrillUnavailable, match="HA is not running"):
            await d.drill("handover")
    finally:
        await d.stop("test")
