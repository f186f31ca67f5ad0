"""A big table's reload, status and scrape are done in slices that give the loop back, and give
the same answer as in one go (the heartbeat is sent from the same loop: hacontrol.daemon_targets,
hacontrol.reload.adopt, hacontrol.reload_parse.ChildParser, hacontrol.daemon_status).

Structural, not timed: how often the loop ran meanwhile is counted by a task that yields in a
loop, and the sliced answers are compared with the whole ones. Real child processes for the
parser; a daemon object on the in-memory plane with a fixed clock (nothing started).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator, Awaitable
from ipaddress import ip_address
from pathlib import Path
from typing import TypeVar

import pytest

from hacontrol import daemon_status
from hacontrol.config import load
from hacontrol.daemon import Daemon
from hacontrol.daemon_targets import HealthTargets
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.health.scheduler import HealthChecker
from hacontrol.health.state import Health
from hacontrol.metrics import render_families
from hacontrol.model import CheckConfig, Config, RealServer, ServiceConfig
from hacontrol.reload import adopt
from hacontrol.reload_parse import ChildParser

T = TypeVar("T")
NOW = 1000.0


def service(i: int, n_rs: int = 5, weight: int = 1, check: str = "none") -> ServiceConfig:
    rs = tuple(
        RealServer(ip_address(f"192.0.2.{j + 1}"), 8080, weight if j == 0 else 1)
        for j in range(n_rs)
    )
    return ServiceConfig(
        name=f"s{i}", vip=ip_address(f"203.0.113.{1 + i // 200}"), port=1000 + i % 200,
        check=CheckConfig(type=check), real_servers=rs,  # type: ignore[arg-type]
    )  # fmt: skip


def config(services: list[ServiceConfig]) -> Config:
    return Config(node_name="big", services=tuple(services))


async def yields_during(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result and how many times another task ran while it was done."""
    ran = 0
    done = False

    async def other() -> None:
        nonlocal ran
        while not done:
            await asyncio.sleep(0)
            ran += 1

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    ran = 0
    try:
        return await work, ran
    finally:
        done = True
        await task


def targets_view(t: HealthTargets, cfg: Config) -> tuple[object, ...]:
    """What the rest of the daemon sees of ``t`` for ``cfg``."""
    health = [(s.name, str(rs.address), t.health_of(s, rs)) for s in cfg.services
              for rs in s.real_servers]  # fmt: skip
    return len(t), t.summary(), health


async def test_a_reload_touches_only_the_services_it_changes() -> None:
    mixed = [service(i, check="none" if i % 3 else "tcp") for i in range(300)]
    old = config(mixed)
    targets = HealthTargets(HealthChecker(lambda: NOW))
    (first, ran) = await yields_during(targets.set_config(old))
    assert first.counts.added == len(targets) and ran >= 300 * 6 // 1000
    assert {s.name for s in first.came} == {s.name for s in mixed} and first.gone == ()
    # a re-parse (equal, other objects), with s1 re-weighted, s2 gone, s300 new, s4 probing 81
    parsed = [dataclasses.replace(s) for s in mixed if s.name != "s2"]
    parsed[1] = service(1, weight=7)
    parsed[3] = dataclasses.replace(parsed[3], check=CheckConfig(type="tcp", port=81))
    parsed.append(service(300, n_rs=3))
    new = await adopt(old, config(parsed))
    kept = [s for s in new.services if s.name not in ("s1", "s4", "s300")]
    assert all(s is old.services[int(s.name[1:])] for s in kept)
    done = await targets.set_config(new)
    assert sorted(s.name for s in done.gone) == ["s1", "s2", "s4"]
    assert sorted(s.name for s in done.came) == ["s1", "s300", "s4"]
    assert done.counts.removed == 0 and done.counts.added == 5  # tcp to port 81: 5 new probes
    fresh = HealthTargets(HealthChecker(lambda: NOW))
    await fresh.set_config(new)
    assert targets_view(targets, new) == targets_view(fresh, new)
    s = new.services[0]
    assert targets.key(s, s.real_servers[0]) is targets.key(s, s.real_servers[0])  # memo hit
    assert targets.health_of(s, s.real_servers[0]) is Health.UNKNOWN  # s0: tcp, not started


async def test_a_check_that_cannot_run_changes_nothing() -> None:
    cfg = config([service(i) for i in range(20)])
    targets = HealthTargets(HealthChecker(lambda: NOW))
    await targets.set_config(cfg)
    before = targets_view(targets, cfg)
    bad = dataclasses.replace(cfg.services[5], check=CheckConfig(type="tcp", interval=0))
    with pytest.raises(ValueError):
        await targets.set_config(config([*cfg.services[:5], bad, *cfg.services[6:]]))
    assert targets_view(targets, cfg) == before


@pytest.fixture
async def daemon() -> AsyncIterator[Daemon]:
    services = [service(i, check="none" if i % 2 else "tcp") for i in range(60)]
    d = Daemon(config(services), dataplane=MemoryDataplane(), serve_api=False, clock=lambda: NOW)
    await d.apply_config(d.config)
    yield d


async def test_status_in_slices_is_the_whole_status(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_status, "STATUS_SLICE", 13)
    parts, ran = await yields_during(daemon.status_json())
    assert parts is not None and json.loads(b"".join(parts)) == daemon.status()
    assert ran >= 60 // 3 - 1  # 3 services (18 units) a slice: the loop ran between slices
    one = await daemon.status_json("s7")
    assert one is not None and [s["name"] for s in json.loads(b"".join(one))["services"]] == ["s7"]
    assert await daemon.status_json("nope") is None


async def test_metrics_in_slices_are_the_whole_text(
    daemon: Daemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(daemon_status, "STATUS_SLICE", 13)
    whole = daemon.metrics.render(daemon.status(), plane=daemon.dataplane_kind())
    whole += render_families(daemon.overrides.families())
    parts, ran = await yields_during(daemon.metrics_text())
    text = b"".join(parts)
    assert text == whole
    assert ran >= 60 // 3 - 1
    assert text.count(b'hacontrol_real_server_weight{real_server="192.0.2.1:8080"') == 60


async def test_metrics_without_services_keep_every_family() -> None:
    d = Daemon(config([]), dataplane=MemoryDataplane(), serve_api=False, clock=lambda: NOW)
    whole = d.metrics.render(d.status(), plane=d.dataplane_kind())
    assert b"".join(await d.metrics_text()) == whole + render_families(d.overrides.families())


async def test_the_child_parser_answers_unchanged_services_as_the_same_objects(
    tmp_path: Path,
) -> None:
    def write(weight: int) -> None:
        lines = ["node: {name: p}", "dataplane: {kind: memory}", "services:"]
        for i in range(40):
            w = weight if i == 3 else 1
            rs = f"{{address: 192.0.2.1, port: 80, weight: {w}}}"
            lines.append(f"  - {{name: s{i}, vip: 203.0.113.1, port: {1000 + i}, "
                         f"real_servers: [{rs}]}}")  # fmt: skip
        path.write_text("\n".join(lines) + "\n")

    path = tmp_path / "c.yaml"
    write(1)
    parse = ChildParser()
    first = await parse(str(path))
    assert isinstance(first, Config) and first == load(str(path))
    write(5)
    second = await parse(str(path))
    assert isinstance(second, Config) and second == load(str(path))
    same = [a is b for a, b in zip(first.services, second.services, strict=True)]
    assert same == [i != 3 for i in range(40)]
