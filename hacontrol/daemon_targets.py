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
"""

from __future__ import annotations

from hacontrol import logs
from hacontrol.dataplane.desired import ConfigDesired, service_key
from hacontrol.dataplane.table import ServiceKey
from hacontrol.health.scheduler import CheckKey, HealthChecker, check_key
from hacontrol.health.state import Health, TargetStatus
from hacontrol.model import Config, RealServer, ServiceConfig
from hacontrol.reload import TargetCounts
from hacontrol.up_counts import UpCounts

Users = list[tuple[ServiceConfig, RealServer]]

log = logs.get("hacontrol.daemon")  # health.change has always been the daemon's event


class HealthTargets:
    """The check targets of the config in use (see module doc)."""

    def __init__(self, health: HealthChecker) -> None:
        self.health = health
        self._targets: dict[CheckKey, Users] = {}
        self._last_state: dict[CheckKey, Health] = {}  # for the "from" of health.change
        self._keys: dict[tuple[str, RealServer], CheckKey] = {}
        self._up = UpCounts()  # what HA advertises each tick, kept by the health changes

    def __len__(self) -> int:
        return len(self._targets)

    def set_config(self, config: Config) -> TargetCounts:
        """Check the targets of ``config``; ValueError or TypeError when a check cannot run, and
        then nothing changed. Counts the targets added, removed and kept."""
        targets: dict[CheckKey, Users] = {}
        for pair in ((svc, rs) for svc in config.services for rs in svc.real_servers):
            targets.setdefault(check_key(*pair), []).append(pair)
        old = set(self._targets)
        new = set(targets)
        self.health.set_targets(list(targets))  # validates everything before changing anything
        self._targets = targets
        self._keys = {(svc.name, rs): k for k, users in targets.items() for svc, rs in users}
        self._last_state = {k: self.health.state(k) for k in targets}
        self._up.reset(config.services, targets, self._last_state.__getitem__)
        return TargetCounts(len(new - old), len(old - new), len(new & old))

    def key(self, svc: ServiceConfig, rs: RealServer) -> CheckKey:
        """check_key, memoised per (service name, real server) for the current config: the
        desired builder and the status ask for every real server on every pass."""
        key = self._keys.get((svc.name, rs))
        if key is None or key.check is not svc.check:
            key = check_key(svc, rs)
        return key

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
        users = self._targets.get(key, [])
        self._up.change(users, old, new)
        log.info(
            "health.change",
            services=sorted({svc.name for svc, _ in users}),
            real_server=str(users[0][1].endpoint) if users else key.target,
            target=key.target,
            check=key.check.type,
            **{"from": str(old), "to": str(new)},
            reason=st.last_reason,
            successes=st.successes,
            failures=st.failures,
        )
        return {service_key(svc) for svc, _ in users}

    def summary(self) -> list[tuple[str, int, int]]:
        """(service, real servers up, real servers) for every service of the config, in its
        order: what HA advertises each tick, kept by the health changes (not counted again)."""
        return self._up.rows()
