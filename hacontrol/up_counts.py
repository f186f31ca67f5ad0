"""Real servers up per service, kept by the health changes: what HA advertises every tick.

The HA runner reads ``(service, up, total)`` for every service on each tick (every 200 ms by
default) to put it in the heartbeat. Counting it from the verdicts each time costs one lookup
per real server: 160 ms of the event loop per tick at 36,544 real servers, most of the interval.
``UpCounts`` counts once per config (``reset``: one health lookup per check target, the rest
additions; or ``update`` with a reload's delta: only the services it changed) and then follows
each health change (``change``: one step per service using the real server), so a tick reads a
cached list. Pure; the daemon feeds it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TypeVar

from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig

K = TypeVar("K")
Users = Iterable[tuple[ServiceConfig, RealServer]]


class UpCounts:
    def __init__(self) -> None:
        self._order: list[str] = []
        self._total: dict[str, int] = {}
        self._up: dict[str, int] = {}
        self._rows: list[tuple[str, int, int]] | None = []

    def reset(
        self,
        services: Iterable[ServiceConfig],
        targets: Mapping[K, Users],
        state: Callable[[K], Health],
    ) -> None:
        """Count from scratch: ``targets`` maps each check target to the (service, real server)
        pairs using it, ``state`` gives a target's verdict (asked once per target)."""
        self._order = []
        self._total, self._up = {}, {}
        for svc in services:
            self._order.append(svc.name)
            self._total[svc.name] = len(svc.real_servers)
            self._up[svc.name] = 0
        for key, users in targets.items():
            if state(key) is Health.UP:
                for svc, _ in users:
                    if svc.name in self._up:
                        self._up[svc.name] += 1
        self._rows = None

    def update(
        self, order: Iterable[str], gone: Iterable[str], came: Iterable[tuple[str, int, int]]
    ) -> None:
        """A config's delta: the services ``gone`` (names) are counted no more, those that
        ``came`` as (name, up, total) are; ``order``: every service's name, in config order."""
        for name in gone:
            self._total.pop(name, None)
            self._up.pop(name, None)
        for name, up, total in came:
            self._up[name], self._total[name] = up, total
        self._order = list(order)
        self._rows = None

    def change(self, users: Users, old: Health, new: Health) -> None:
        """A target went from ``old`` to ``new``; ``users``: its (service, real server) pairs."""
        if (old is Health.UP) == (new is Health.UP):
            return
        step = 1 if new is Health.UP else -1
        for svc, _ in users:
            if svc.name in self._up:
                self._up[svc.name] += step
        self._rows = None

    def rows(self) -> list[tuple[str, int, int]]:
        """(service, real servers up, real servers), in config order (cached until a change)."""
        if self._rows is None:
            self._rows = [(n, self._up[n], self._total[n]) for n in self._order]
        return self._rows
