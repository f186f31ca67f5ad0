"""The HealthChecker: keys and dedup, reload semantics, jitter, timeouts, stop, logs, metrics.

Scheduling tests use a fake probe (monkeypatched ``make_probe``) so they count launches without
I/O, and run on a ``VirtualTimeLoop`` (``@virtual``): the checker's clock is the loop's, so their
intervals, jitter and timeouts take no real time and are exact. End-to-end tests probe real
servers on loopback in this process, on the real loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from hacontrol.clock import virtual
from hacontrol.health import scheduler as sched
from hacontrol.health.scheduler import CheckKey, HealthChecker, check_key
from hacontrol.health.state import Health, TargetStatus
from hacontrol.health.tcp import Done, Poller
from hacontrol.metrics import Metrics
from hacontrol.model import CheckConfig, RealServer, ServiceConfig


async def eventually(pred: Callable[[], bool], limit: float = 10.0) -> bool:
    for _ in range(int(limit / 0.01)):
        if pred():
            return True
        await asyncio.sleep(0.01)
    return pred()


class FakeProbe:
    """Answers ``results[i]`` on each launch (cycling), or never when the result is None."""

    kind = "tcp"
    task = None  # never a Task of its own

    def __init__(self, results: list[bool | None]) -> None:
        self.results = results
        self.starts: list[float] = []
        self.cancels = 0

    def start(self, poller: Poller, done: Done) -> None:
        r = self.results[len(self.starts) % len(self.results)]
        self.starts.append(poller.loop.time())
        if r is not None:
            poller.loop.call_soon(done, r, "connected" if r else "connection refused")

    def cancel(self) -> str:
        self.cancels += 1
        return "connecting"


class Fakes(dict[CheckKey, FakeProbe]):
    """The fake probes made, by key; ``results[port]`` scripts the answers of that port."""

    def __init__(self) -> None:
        super().__init__()
        self.results: dict[int, list[bool | None]] = {}


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Fakes:
    made = Fakes()
    results = made.results

    def make(key: CheckKey) -> FakeProbe | None:
        if key.check.type == "none":
            return None
        made[key] = FakeProbe(results.get(key.port, [True]))
        return made[key]

    monkeypatch.setattr(sched, "make_probe", make)
    return made


def key(port: int = 80, addr: str = "192.0.2.10", **kw: object) -> CheckKey:
    return CheckKey(CheckConfig(**kw), addr, port)  # type: ignore[arg-type]


def test_check_key_and_dedup() -> None:
    chk = CheckConfig(type="http", path="/h")
    a = ServiceConfig("a", ipaddress.ip_address("203.0.113.1"), 80, check=chk)
    b = ServiceConfig("b", ipaddress.ip_address("203.0.113.2"), 443, check=chk)
    rs = RealServer(ipaddress.ip_address("2001:db8:0:0::5"), 8080)
    assert check_key(a, rs) == check_key(b, rs) == CheckKey(chk, "2001:db8::5", 8080)
    c = replace(a, check=replace(chk, port=9000))
    assert check_key(c, rs).port == 9000
    assert check_key(a, rs).target == "[2001:db8::5]:8080"
    hc = HealthChecker()
    hc.set_targets([check_key(a, rs), check_key(b, rs)])
    assert hc.keys() == [check_key(a, rs)]


def test_none_is_up_at_once_and_logged() -> None:
    seen: list[tuple[CheckKey, Health, TargetStatus]] = []
    m = Metrics()
    hc = HealthChecker(on_change=lambda k, h, s: seen.append((k, h, s)), metrics=m)
    k, t = key(type="none"), key(81)
    with capture_logs() as logs:
        hc.set_targets([k, t])
    assert hc.state(k) is Health.UP and hc.state(t) is Health.UNKNOWN
    assert [(s[0], s[1]) for s in seen] == [(k, Health.UP)]
    ev = [e for e in logs if e["event"] == "health.change"]
    assert len(ev) == 1 and ev[0]["to"] == "up" and ev[0]["from"] == "unknown"
    assert ev[0]["target"] == "192.0.2.10:80" and ev[0]["reason"]
    assert m.registry.get_sample_value("hacontrol_health_targets", {"state": "up"}) == 1
    assert m.registry.get_sample_value("hacontrol_health_targets", {"state": "unknown"}) == 1


@pytest.mark.parametrize(
    "bad",
    [
        CheckKey(CheckConfig(type="bogus"), "192.0.2.1", 80),  # type: ignore[arg-type]
        CheckKey(CheckConfig(interval=0), "192.0.2.1", 80),
        CheckKey(CheckConfig(rise=0), "192.0.2.1", 80),
        CheckKey(CheckConfig(), "not-an-ip", 80),
        CheckKey(CheckConfig(type="exec"), "192.0.2.1", 80),  # empty command
        CheckKey(CheckConfig(type="http", path="/x y\r\n"), "192.0.2.1", 80),
    ],
)
def test_bad_input_changes_nothing(bad: CheckKey) -> None:
    hc = HealthChecker()
    good = key(type="none")
    hc.set_targets([good])
    with pytest.raises(ValueError):
        hc.set_targets([key(82), bad])
    assert hc.keys() == [good] and hc.state(good) is Health.UP


@virtual
async def test_reload_keeps_state(fakes: Fakes) -> None:
    seen: list[tuple[CheckKey, Health]] = []
    hc = HealthChecker(on_change=lambda k, h, s: seen.append((k, h)))
    a, b = key(80, interval=0.05, jitter=0.0), key(81, interval=0.05, jitter=0.0)
    hc.set_targets([a, b])
    await hc.start()
    try:
        assert await eventually(lambda: hc.state(a) is Health.UP and hc.state(b) is Health.UP)
        probe_a = fakes[a]
        # same key kept; rise/fall/interval change of b is the same probe: no reset, no flap
        b2 = replace(b, check=replace(b.check, rise=5, fall=7, interval=0.06))
        c = key(82, interval=0.05)
        seen.clear()
        hc.set_targets([a, b2, c])
        assert hc.state(a) is Health.UP and hc.state(b2) is Health.UP
        assert hc.state(c) is Health.UNKNOWN
        assert fakes[a] is probe_a and b2 not in fakes  # no new probe for the re-timed key
        with pytest.raises(KeyError):
            hc.status(b)
        st = hc.status(b2)
        assert st.state is Health.UP and st.successes >= 1
        n = len(fakes[b].starts)
        assert await eventually(lambda: len(fakes[b].starts) > n + 2)  # still probed
        assert await eventually(lambda: hc.state(c) is Health.UP)
        assert seen == [(c, Health.UP)]
        # a changed probe (other path) is a new target
        hc.set_targets([replace(a, check=replace(a.check, port=1))])
        assert len(hc.keys()) == 1 and hc.state(hc.keys()[0]) is Health.UNKNOWN
    finally:
        await hc.stop()


@virtual
async def test_rise_fall_through_scheduler(fakes: Fakes) -> None:
    fakes.results[90] = [True, False, False, False, True, True]
    seen: list[tuple[Health, int, int]] = []
    hc = HealthChecker(on_change=lambda k, h, s: seen.append((h, s.successes, s.failures)))
    k = key(90, interval=0.02, jitter=0.0, rise=2, fall=3)
    hc.set_targets([k])
    await hc.start()
    try:
        assert await eventually(lambda: len(seen) >= 3)
    finally:
        await hc.stop()
    assert seen[:3] == [(Health.UP, 1, 0), (Health.DOWN, 0, 3), (Health.UP, 2, 0)]


@virtual
async def test_jitter_spreads_first_probes_and_periods(fakes: Fakes) -> None:
    interval, jitter = 0.4, 0.25
    keys = [key(1000 + i, interval=interval, jitter=jitter) for i in range(200)]
    hc = HealthChecker()
    hc.set_targets(keys)
    t0 = asyncio.get_running_loop().time()
    await hc.start()
    try:
        assert await eventually(lambda: all(len(fakes[k].starts) >= 3 for k in keys), 20)
    finally:
        await hc.stop()
    first = sorted(fakes[k].starts[0] - t0 for k in keys)
    assert first[0] < 0.1 * interval and first[-1] > 0.8 * interval  # spread, not a burst
    assert first[-1] < interval + 0.1
    buckets = {int(f / (interval / 4)) for f in first}
    assert len(buckets) >= 4
    gaps = [b - a for k in keys for a, b in zip(fakes[k].starts, fakes[k].starts[1:], strict=False)]
    assert min(gaps) >= interval * (1 - jitter) - 0.001
    assert max(gaps) <= interval * (1 + jitter) + 0.1  # a tick of slack, generous under load
    assert max(gaps) - min(gaps) > interval * jitter  # periods really vary


@virtual
async def test_timeout_fires_and_cancels(fakes: Fakes) -> None:
    fakes.results[91] = [None]
    hc = HealthChecker()
    k = key(91, interval=0.3, timeout=0.15, fall=1)
    hc.set_targets([k])
    await hc.start()
    try:
        assert await eventually(lambda: hc.state(k) is Health.DOWN)
    finally:
        await hc.stop()
    st = hc.status(k)
    assert st.last_reason == "timeout after 0.15s (connecting)"
    assert st.last_latency is not None and 0.15 <= st.last_latency < 0.15 + 0.2
    assert fakes[k].cancels >= 1


@pytest.fixture
async def servers() -> AsyncIterator[tuple[int, int, list[asyncio.StreamWriter]]]:
    stuck: list[asyncio.StreamWriter] = []

    async def ok(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await r.readuntil(b"\r\n\r\n")
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
            await w.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # a tcp check, or a client that left after the status line
        w.close()

    async def hang(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        stuck.append(w)

    s1 = await asyncio.start_server(ok, "127.0.0.1", 0)
    s2 = await asyncio.start_server(hang, "127.0.0.1", 0)
    try:
        yield s1.sockets[0].getsockname()[1], s2.sockets[0].getsockname()[1], stuck
    finally:
        for w in stuck:
            w.close()
        s1.close()
        s2.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_end_to_end_loopback(servers: tuple[int, int, list[asyncio.StreamWriter]]) -> None:
    ok_port, hang_port, stuck = servers
    m = Metrics()
    fast = {"interval": 0.1, "timeout": 0.2, "fall": 2, "rise": 2}
    up_tcp = CheckKey(CheckConfig(type="tcp", **fast), "127.0.0.1", ok_port)  # type: ignore[arg-type]
    up_http = CheckKey(CheckConfig(type="http", expect_body="ok", **fast), "127.0.0.1", ok_port)  # type: ignore[arg-type]
    refused = CheckKey(CheckConfig(type="tcp", **fast), "127.0.0.1", closed_port())  # type: ignore[arg-type]
    hung = CheckKey(CheckConfig(type="http", **fast), "127.0.0.1", hang_port)  # type: ignore[arg-type]
    sleeper = CheckKey(CheckConfig(type="exec", command=("sleep", "30"), **fast), "127.0.0.1", 1)  # type: ignore[arg-type]
    hc = HealthChecker(metrics=m)
    hc.set_targets([up_tcp, up_http, refused, hung, sleeper])
    fds = len(os.listdir("/proc/self/fd"))
    with capture_logs() as logs:
        await hc.start()
        try:
            assert await eventually(
                lambda: (
                    hc.state(up_tcp) is Health.UP
                    and hc.state(up_http) is Health.UP
                    and hc.state(refused) is Health.DOWN
                    and hc.state(hung) is Health.DOWN
                    and hc.state(sleeper) is Health.DOWN
                )
            )
            assert await eventually(lambda: hc.status(sleeper).failures >= 2)
        finally:
            t = time.monotonic()
            await hc.stop()
            assert time.monotonic() - t < 1.0
    assert hc.status(refused).last_reason == "connection refused"
    assert hc.status(hung).last_reason == "timeout after 0.2s (no response)"
    assert hc.status(sleeper).last_reason.startswith("timeout after 0.2s")
    assert hc.status(up_http).last_reason == "status 200, body matched"
    changes = {(e["target"], e["check"], e["to"]): e for e in logs if e["event"] == "health.change"}
    e = changes[(refused.target, "tcp", "down")]
    assert (e["from"], e["reason"], e["failures"], e["successes"]) == (
        "unknown",
        "connection refused",
        2,
        0,
    )
    sample = m.registry.get_sample_value
    assert (sample("hacontrol_health_checks_total", {"type": "tcp", "result": "fail"}) or 0) >= 2
    assert (sample("hacontrol_health_checks_total", {"type": "http", "result": "ok"}) or 0) >= 1
    assert sample("hacontrol_health_state_changes_total", {"state": "down"}) == 3
    assert sample("hacontrol_health_targets", {"state": "up"}) == 2
    assert (sample("hacontrol_health_check_latency_seconds_count") or 0) >= 5

    def fds_back() -> bool:
        for w in stuck:  # the hung server's side of the connections lives in this process too
            w.close()  # (and connections still in its backlog get accepted late)
        return len(os.listdir("/proc/self/fd")) <= fds

    assert await eventually(fds_back, 5)  # the checker's sockets and pipes are closed
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_our_sleep(int(p))]


def _is_our_sleep(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read()
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
        return False
    return cmd == b"sleep\x0030\x00" and ppid == os.getpid()


@virtual
async def test_on_change_error_is_logged_not_raised(fakes: Fakes) -> None:
    def boom(k: CheckKey, h: Health, s: TargetStatus) -> None:
        raise RuntimeError("consumer bug")

    hc = HealthChecker(on_change=boom)
    k = key(92, interval=0.05)
    with capture_logs() as logs:
        hc.set_targets([k])
        await hc.start()
        try:
            assert await eventually(lambda: len(fakes[k].starts) >= 3)
        finally:
            await hc.stop()
    assert hc.state(k) is Health.UP
    assert any(e["event"] == "health.on_change_error" for e in logs)
