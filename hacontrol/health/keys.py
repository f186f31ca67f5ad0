"""What the health checker checks: the dedup key of a target and the probe it runs.

``CheckKey`` is the unit of checking: identical checks (same ``CheckConfig``) of the same address
and port are one target, however many services share them. ``make_probe`` builds the probe of a
key once (request bytes, argv and TLS context are prepared here, not per check) and rejects a
check that cannot run with a ``ValueError``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hacontrol.health.exec import ExecProbe
from hacontrol.health.http import HttpProbe, HttpSpec, HttpsProbe
from hacontrol.health.state import Health, TargetStatus
from hacontrol.health.tcp import Probe, TcpProbe
from hacontrol.model import CheckConfig, RealServer, ServiceConfig, host_port

__all__ = ["CheckKey", "OnChange", "check_key", "identity", "make_probe", "validate"]


@dataclass(frozen=True)
class CheckKey:
    """Dedup key: identical checks of the same target run once."""

    check: CheckConfig  # as configured
    address: str  # canonical text
    port: int  # the port probed (check.port or the real server's port)
    # hashed once: a lookup per real server per pass would hash the whole CheckConfig each time
    _hash: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_hash", hash((self.check, self.address, self.port)))

    def __hash__(self) -> int:
        return self._hash

    @property
    def target(self) -> str:
        """``address:port`` as logged (``[v6]:port``)."""
        return host_port(self.address, self.port)


def check_key(svc: ServiceConfig, rs: RealServer) -> CheckKey:
    check = svc.check
    return CheckKey(check, str(rs.address), check.port if check.port is not None else rs.port)


OnChange = Callable[[CheckKey, Health, TargetStatus], None]


def make_probe(key: CheckKey) -> Probe | None:
    """The probe for a key (None for type "none"); ValueError for a check that cannot run."""
    c = key.check
    if c.type == "tcp":
        return TcpProbe(key.address, key.port)
    if c.type == "http":
        return HttpProbe(HttpSpec(c, key.address, key.port, tls=False), key.address, key.port)
    if c.type == "https":
        return HttpsProbe(HttpSpec(c, key.address, key.port, tls=True), c, key.address, key.port)
    if c.type == "exec":
        return ExecProbe(c.command, key.address, key.port)
    if c.type == "none":
        return None
    raise ValueError(f"unknown check type {c.type!r}")


def identity(key: CheckKey) -> CheckKey:
    """The key with the timing knobs blanked: equal identities probe the same thing."""
    c = replace(key.check, rise=1, fall=1, interval=1.0, timeout=1.0, jitter=0.0)
    return CheckKey(c, key.address, key.port)


def validate(check: CheckConfig) -> None:
    if not (check.interval > 0 and check.timeout > 0 and 0 <= check.jitter < 1):
        raise ValueError(
            f"check needs interval > 0, timeout > 0, 0 <= jitter < 1: {check.interval}, "
            f"{check.timeout}, {check.jitter}"
        )
