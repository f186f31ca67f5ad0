"""The daemon's side of systemd: the notification socket, the watchdog and the STATUS= line.

``notify`` sends one datagram to ``$NOTIFY_SOCKET`` (READY=1, RELOADING=1, STOPPING=1,
WATCHDOG=1, STATUS=...); without the variable (run outside systemd) it does nothing.
``watchdog_period`` reads ``$WATCHDOG_USEC``/``$WATCHDOG_PID`` (pure): the watchdog is meant for
this process when the PID matches or is unset.

``SystemdLink`` runs two tasks on the daemon's event loop. The watchdog sends ``WATCHDOG=1`` every
half period from the loop itself: a loop blocked in a callback (or a stopped process) sends
nothing, and systemd kills and restarts the daemon after ``WatchdogSec``. A ping from a thread
would keep a hung loop alive, so there is none. The status task reads the line
(``status_line``: role, owned services and destinations in the kernel table, consecutive apply
errors) once per ``status_period`` and sends ``STATUS=`` only when it changed: a role
transition or an apply shows within that period, and systemd hears at most one STATUS= per
period however often the table changes. Both sleep through the loop (the one clock).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Protocol

from hacontrol import logs
from hacontrol.tasks import cancel_and_wait

if TYPE_CHECKING:
    from hacontrol.dataplane.reconciler import Reconciler

__all__ = [
    "STATUS_PERIOD",
    "StatusSource",
    "SystemdLink",
    "notify",
    "owned_size",
    "status_line",
    "watchdog_period",
]

log = logs.get("hacontrol.daemon")

STATUS_PERIOD = 1.0  # seconds between looks at the STATUS= line (at most one send per period)

Send = Callable[[str], bool]


def notify(message: str, env: Mapping[str, str] | None = None) -> bool:
    """Send ``message`` to systemd's notification socket; False without one or on error."""
    addr = (os.environ if env is None else env).get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):  # the abstract namespace
        addr = "\0" + addr[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(message.encode(), addr)
    except OSError:
        return False
    return True


def watchdog_period(env: Mapping[str, str], pid: int) -> float | None:
    """The watchdog period in seconds systemd asks of process ``pid`` (``WatchdogSec=``), or None:
    no ``WATCHDOG_USEC``, a value that is not a positive integer, or ``WATCHDOG_PID`` naming
    another process (the variables were inherited)."""
    usec = env.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = env.get("WATCHDOG_PID")
    if owner is not None and owner != str(pid):
        return None
    return int(usec) / 1_000_000


class StatusSource(Protocol):
    """What the STATUS= line reads of the daemon."""

    @property
    def reconciler(self) -> Reconciler | None: ...

    def role(self) -> str: ...


def owned_size(rec: Reconciler | None) -> tuple[int, int, int]:
    """(services, destinations, consecutive apply errors) of the daemon's own part of the
    kernel table as last read; zeros before the reconciler exists."""
    if rec is None:
        return 0, 0, 0
    kernel = rec.kernel
    mine = [kernel[k] for k in rec.owned if k in kernel]
    return len(mine), sum(len(s.dests) for s in mine), rec.status().consecutive_errors


def status_line(role: str, services: int, destinations: int, errors: int) -> str:
    """The STATUS= text ``systemctl status`` shows: "active, 3 services, 9 destinations, 0 apply
    errors" (plural forms always: one format to parse)."""
    return f"{role}, {services} services, {destinations} destinations, {errors} apply errors"


def current_line(src: StatusSource) -> str:
    return status_line(src.role(), *owned_size(src.reconciler))


class SystemdLink:
    """The watchdog and STATUS= tasks of one daemon (nothing runs without ``NOTIFY_SOCKET``)."""

    def __init__(
        self,
        line: Callable[[], str],
        *,
        watchdog: float | None,
        send: Send | None = None,
        status_period: float = STATUS_PERIOD,
    ) -> None:
        """``watchdog``: systemd's period (None: no pings); ``send``: None = no socket."""
        self.line = line
        self.watchdog = watchdog
        self.send = send
        self.status_period = status_period
        self.last_status: str | None = None
        self.pings = 0
        self._tasks: list[asyncio.Task[None]] = []

    @classmethod
    def from_env(cls, src: StatusSource, env: Mapping[str, str] | None = None) -> SystemdLink:
        env = os.environ if env is None else env
        if not env.get("NOTIFY_SOCKET"):
            return cls(lambda: current_line(src), watchdog=None)
        frozen = dict(env)  # the socket is the one systemd gave at start
        return cls(
            lambda: current_line(src),
            watchdog=watchdog_period(env, os.getpid()),
            send=lambda message: notify(message, frozen),
        )

    def ready(self) -> None:
        """READY=1 with the first STATUS= line (the daemon has started), then ``start``."""
        self._send_status(prefix="READY=1\n")
        self.start()

    def start(self) -> None:
        """Start the tasks on the running loop."""
        if self.send is None or self._tasks:
            return
        loop = asyncio.get_running_loop()
        if self.watchdog is not None:
            log.info("systemd.watchdog", period=self.watchdog, reason="WATCHDOG_USEC set")
            self._tasks.append(loop.create_task(self._ping(self.watchdog / 2), name="watchdog"))
        self._tasks.append(loop.create_task(self._status(), name="systemd-status"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        await cancel_and_wait(*tasks)

    def _send_status(self, prefix: str = "") -> None:
        line = self.line()
        if self.send is not None and (prefix or line != self.last_status):
            self.send(f"{prefix}STATUS={line}")
        self.last_status = line

    async def _ping(self, every: float) -> None:
        assert self.send is not None
        while True:
            self.send("WATCHDOG=1")
            self.pings += 1
            await asyncio.sleep(every)

    async def _status(self) -> None:
        while True:
            await asyncio.sleep(self.status_period)
            self._send_status()
