"""Which real servers of the config each health-check target stands for, and their verdicts.

``HealthTargets`` owns the mapping between the config and the health checker: every check target
(``CheckKey``: one probe of one address, shared by every service that checks that real server the
same way) with the (service, real server) pairs it serves, the memoised key of each pair, the
last state seen per target (the "from" of ``health.change``) and the up counts per service (what
HA advertises each tick). The daemon points it at a config (``set_config``: start and reload),
asks it for a pair's health or status and for the desired-table builder of a config, and hands
it each health change (``changed``: logged as ``health.change``, under the daemon's logger name
as before, answering the services to compare again). The checker
itself (``hacontrol.health.scheduler.HealthChecker``) runs the probes.

A big table never holds the event loop (the heartbeat is sent from it): ``set_config`` compares
the new config with the one in use service by service (an unchanged service is the same object:
``hacontrol.reload.adopt`` sees to it), computing the keys of the new or changed services in
slices of about ``SLICE_PAIRS`` real servers with ``asyncio.sleep(0)`` between them; nothing is
changed meanwhile. Then it commits in one step whose work is the change's (a reload changing
1 % of 36,544 real servers touches 365 pairs, not 36,544), so no other task ever sees half a
config. Only the first config (start: 36,544 pairs, 150 ms in one go) is committed in slices
too: the checker has every target by then, nothing reads the counts before HA starts, and a
pair not registered yet is looked up the slow way (``key``).

The memo of a pair's key is keyed by the identity of the service and real server objects of
the config in use (and checked against them): the builder and the status ask for every real
server on every pass, and hit it.
"""

from __future__ import annotations

import asyncio
from typing import NamedTuple

from hacontrol import logs
from hacontrol.dataplane.desired import ConfigDesired, service_key
from hacontrol.dataplane.table import ServiceKey
from hacontrol.health.scheduler import CheckKey, HealthChecker, check_key
from hacontrol.health.state import Health, TargetStatus
from hacontrol.model import Config, RealServer, ServiceConfig
from hacontrol.reload import TargetCounts
from hacontrol.up_counts import UpCounts

Pair = tuple[ServiceConfig, RealServer]
PairId = tuple[int, int]  # (id(service), id(real server)) of the config in use
Users = dict[PairId, Pair]

SLICE_PAIRS = 1000  # real servers looked at between two yields, about

log = logs.get("hacontrol.daemon")  # health.change has always been the daemon's event


class Applied(NamedTuple):
    """What ``set_config`` changed: the target counts, the services it stopped serving (removed
    or changed: the old objects) and the ones it started (new or changed)."""

    counts: TargetCounts
    gone: tuple[ServiceConfig, ...]
    came: tuple[ServiceConfig, ...]

    def keys(self) -> set[ServiceKey]:
        """The table keys of the services changed (removed, added or different)."""
        return {service_key(svc) for svc in (*self.gone, *self.came)}


class _Plan(NamedTuple):
    names: dict[str, ServiceConfig]
    gone: list[ServiceConfig]
    came: list[tuple[ServiceConfig, list[tuple[RealServer, CheckKey]]]]


class HealthTargets:
    """The check targets of the config in use (see module doc)."""

    def __init__(self, health: HealthChecker) -> None:
        self.health = health
        self._services: dict[str, ServiceConfig] = {}  # the config in use, by name
        self._targets: dict[CheckKey, Users] = {}
        self._last_state: dict[CheckKey, Health] = {}  # for the "from" of health.change
        self._keys: dict[PairId, tuple[ServiceConfig, RealServer, CheckKey]] = {}
        self._up = UpCounts()  # what HA advertises each tick, kept by the health changes

    def __len__(self) -> int:
        return len(self._targets)

    async def set_config(self, config: Config) -> Applied:
        """Check the targets of ``config``; ValueError or TypeError when a check cannot run, and
        then nothing changed. Yields to the loop while it compares; commits at once."""
        plan = await self._plan(config)
        return await self._commit(plan, first=not self._services)

    async def _plan(self, config: Config) -> _Plan:
        old = self._services
        names: dict[str, ServiceConfig] = {}
        came: list[tuple[ServiceConfig, list[tuple[RealServer, CheckKey]]]] = []
        work = 0
        for svc in config.services:
            names[svc.name] = svc
            work += 1
            if old.get(svc.name) is not svc:
                came.append((svc, [(rs, check_key(svc, rs)) for rs in svc.real_servers]))
                work += len(svc.real_servers)
            if work >= SLICE_PAIRS:
                work = 0
                await asyncio.sleep(0)
        gone = []
        for n, (name, svc) in enumerate(old.items(), 1):
            if names.get(name) is not svc:
                gone.append(svc)
            if n % SLICE_PAIRS == 0:
                await asyncio.sleep(0)
        return _Plan(names, gone, came)

    async def _commit(self, plan: _Plan, first: bool) -> Applied:
        targets, memo = self._targets, self._keys
        leaving: dict[CheckKey, int] = {}  # users each target loses
        for svc in plan.gone:
            for rs in svc.real_servers:
                e = memo.get((id(svc), id(rs)))
                if e is not None:
                    leaving[e[2]] = leaving.get(e[2], 0) + 1
        coming = {k: None for _, pairs in plan.came for _, k in pairs}
        add = [k for k in coming if k not in targets]
        remove = [k for k, n in leaving.items() if n >= len(targets[k]) and k not in coming]
        self.health.update(add, remove)  # validates first: nothing changed when it raises
        # commit: nothing below raises
        for svc in plan.gone:
            for rs in svc.real_servers:
                e = memo.pop((id(svc), id(rs)), None)
                if e is not None and e[2] in targets:
                    targets[e[2]].pop((id(svc), id(rs)), None)
        for k in remove:
            del targets[k]
            self._last_state.pop(k, None)
        counts: list[tuple[str, int, int]] = []
        work = 0
        for svc, pairs in plan.came:
            work += len(pairs)
            if first and work >= SLICE_PAIRS:  # the first config: no one reads it yet
                work = 0
                await asyncio.sleep(0)
            up = 0
            for rs, k in pairs:
                users = targets.get(k)
                if users is None:
                    users = targets[k] = {}
                    self._last_state[k] = self.health.state(k)
                users[(id(svc), id(rs))] = (svc, rs)
                memo[(id(svc), id(rs))] = (svc, rs, k)
                up += self._last_state[k] is Health.UP
            counts.append((svc.name, up, len(pairs)))
        self._services = plan.names
        self._up.update(plan.names, (s.name for s in plan.gone), counts)
        kept = len(targets) - len(add)
        return Applied(
            TargetCounts(len(add), len(remove), kept),
            tuple(plan.gone),
            tuple(svc for svc, _ in plan.came),
        )

    def key(self, svc: ServiceConfig, rs: RealServer) -> CheckKey:
        """check_key, memoised per (service, real server) object of the config in use: the
        desired builder and the status ask for every real server on every pass."""
        e = self._keys.get((id(svc), id(rs)))
        if e is not None and e[0] is svc and e[1] is rs:
            return e[2]
        return check_key(svc, rs)

    def health_of(self, svc: ServiceConfig, rs: RealServer) -> Health:
        try:
            return self.health.state(self.key(svc, rs))
        except KeyError:  # not (or no longer) a target: never put it in the table
            return Health.UNKNOWN

    def status_of(self, svc: ServiceConfig, rs: RealServer) -> TargetStatus | None:
        try:
            return self.health.status(self.key(svc, rs))
        except KeyError:
            return None

    def builder(self, config: Config) -> ConfigDesired:
        """The desired table of ``config`` under the current verdicts, one service at a time."""
        return ConfigDesired(config.services, self.health_of)

    def changed(self, key: CheckKey, new: Health, st: TargetStatus) -> set[ServiceKey]:
        """Target ``key`` is now ``new`` (``st``: its status): log ``health.change`` and answer
        the services of its real server (only they need comparing with the kernel)."""
        old = self._last_state.get(key, Health.UNKNOWN)
        self._last_state[key] = new
        users = self._targets.get(key, {})
        self._up.change(users.values(), old, new)
        first = next(iter(users.values()), None)
        log.info(
            "health.change",
            services=sorted({svc.name for svc, _ in users.values()}),
            real_server=str(first[1].endpoint) if first is not None else key.target,
            target=key.target,
            check=key.check.type,
            **{"from": str(old), "to": str(new)},
            reason=st.last_reason,
            successes=st.successes,
            failures=st.failures,
        )
        return {service_key(svc) for svc, _ in users.values()}

    def summary(self) -> list[tuple[str, int, int]]:
        """(service, real servers up, real servers) for every service of the config, in its
        order: what HA advertises each tick, kept by the health changes (not counted again)."""
        return self._up.rows()
