"""The VRRPv3 router state machine (RFC 5798 §6.4), pure: events in, actions out.

It owns the state (``State``: INITIALIZE, BACKUP, MASTER, FAULT), the two timers of the RFC as
deadlines (``Master_Down_Timer`` in BACKUP, ``Adver_Timer`` in MASTER; the runner wakes it at
``deadline``), the learned ``Master_Adver_Interval`` and the derived times (centiseconds on the
wire, seconds here)::

    Skew_Time            = ((256 - Priority) * Master_Adver_Interval) / 256
    Master_Down_Interval = 3 * Master_Adver_Interval + Skew_Time

                 Start                 Master_Down_Timer / higher-priority advert ignored (preempt)
    INITIALIZE ---------> BACKUP ---------------------------------------------> MASTER
         ^                  ^  <---------------------------------------------   |
         |                  |   advert: higher priority, or equal and higher   |
         |                  |   primary address                                 |
         +-- Stop ----------+------------------ Stop (advert, priority 0) ------+
    FAULT: a blocking local fault (tracked interface down); left for BACKUP when it clears.

Preemption as keepalived does it: in BACKUP, an advertisement of a lower priority is ignored
(``preempt``), so the Master_Down_Timer runs out and this router takes over; with
``preempt_delay`` such advertisements are still accepted for that long after start. Priority 0 (a
master that stops) sets the Master_Down_Timer to Skew_Time. A router never owns the addresses
(priority 255 is not configurable), so INITIALIZE always goes to BACKUP.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass, field

from hacontrol.ha.fsm_types import Log, Start, Stop, Tick

__all__ = [
    "TRANSITIONS",
    "Advertised",
    "Fault",
    "Log",
    "Machine",
    "Params",
    "Received",
    "Release",
    "Send",
    "Start",
    "State",
    "Stop",
    "Take",
    "Tick",
    "Transition",
    "skew_cs",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


class State(enum.IntEnum):
    INITIALIZE = 0
    BACKUP = 1
    MASTER = 2
    FAULT = 3


TRANSITIONS: frozenset[tuple[State, State]] = frozenset({
    (State.INITIALIZE, State.BACKUP),
    (State.INITIALIZE, State.FAULT),
    (State.BACKUP, State.MASTER),
    (State.BACKUP, State.INITIALIZE),
    (State.BACKUP, State.FAULT),
    (State.MASTER, State.BACKUP),
    (State.MASTER, State.INITIALIZE),
    (State.MASTER, State.FAULT),
    (State.FAULT, State.BACKUP),
    (State.FAULT, State.INITIALIZE),
})  # fmt: skip


def skew_cs(priority: int, adver_cs: int) -> float:
    """Skew_Time in centiseconds (RFC 5798 §6.1)."""
    return (256 - priority) * adver_cs / 256


@dataclass(frozen=True)
class Params:
    priority: int  # 1..254
    adver_cs: int  # this router's Advertisement_Interval, centiseconds
    address: Address  # this router's primary address (the tie-break of equal priorities)
    preempt: bool = True
    preempt_delay: float = 0.0  # s after start during which a lower-priority master is accepted


# -- events ----------------------------------------------------------------------------------
# Start, Tick (the runner's wake-up at or after ``Machine.deadline``) and Stop are the HA
# machine's own (hacontrol.ha.fsm_types); Start's ``vips_present`` is not read here (the runner
# releases VIPs found at start itself). Likewise the ``Log`` action (event, reason).


@dataclass(frozen=True)
class Received:
    """A valid advertisement of our virtual router from ``source``."""

    now: float
    source: Address
    priority: int
    max_adver_cs: int


@dataclass(frozen=True)
class Fault:
    """A blocking local fault appeared (``failed``) or cleared."""

    now: float
    failed: bool
    reason: str


Event = Start | Tick | Received | Fault | Stop

# -- actions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """Send one advertisement with ``priority`` (0: this master stops)."""

    priority: int


@dataclass(frozen=True)
class Take:
    """Add the VIPs and announce them (gratuitous ARP / unsolicited NA)."""

    reason: str


@dataclass(frozen=True)
class Release:
    reason: str


@dataclass(frozen=True)
class Transition:
    from_state: State
    to_state: State
    reason: str


Action = Send | Take | Release | Transition | Log


@dataclass(frozen=True)
class Advertised:
    """The last advertisement heard: for status."""

    source: Address
    priority: int
    max_adver_cs: int
    at: float


@dataclass
class Machine:
    params: Params
    state: State = State.INITIALIZE
    master_adver_cs: int = 0  # learned from the master's advertisements
    deadline: float | None = None  # when the runner must Tick us
    started: float = 0.0
    last: Advertised | None = None
    faulted: bool = False
    preempting: int | None = None  # the lower priority ignored since the timer was last reset
    out: list[Action] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.master_adver_cs = self.params.adver_cs

    # -- derived times (seconds) -----------------------------------------------------------

    @property
    def skew(self) -> float:
        return skew_cs(self.params.priority, self.master_adver_cs) / 100

    @property
    def master_down(self) -> float:
        return 3 * self.master_adver_cs / 100 + self.skew

    @property
    def adver(self) -> float:
        return self.params.adver_cs / 100

    # -- the machine -----------------------------------------------------------------------

    def step(self, ev: Event) -> list[Action]:
        self.out = []
        if isinstance(ev, Start):
            self._start(ev.now)
        elif isinstance(ev, Tick):
            self._tick(ev.now)
        elif isinstance(ev, Received):
            self._received(ev)
        elif isinstance(ev, Fault):
            self._fault(ev)
        else:
            self._stop(ev.now)
        return self.out

    def _go(self, to: State, reason: str) -> None:
        if (self.state, to) not in TRANSITIONS:
            raise ValueError(f"illegal VRRP transition {self.state.name} -> {to.name}")
        self.out.append(Transition(self.state, to, reason))
        self.state = to

    def _backup(self, now: float, down: float, reason: str) -> None:
        was_master, self.preempting = self.state is State.MASTER, None
        self._go(State.BACKUP, reason)
        self.deadline = now + down
        if was_master:
            self.out.append(Release(reason))

    def _master(self, now: float, reason: str) -> None:
        self._go(State.MASTER, reason)
        self.out += [Send(self.params.priority), Take(reason)]
        self.deadline = now + self.adver

    def _start(self, now: float) -> None:
        if self.state is not State.INITIALIZE:
            return
        self.started = now
        self.master_adver_cs = self.params.adver_cs
        if self.faulted:
            self._go(State.FAULT, "a blocking local fault at start")
            return
        self._backup(now, self.master_down, "start: listen for a master for Master_Down_Interval")

    def _tick(self, now: float) -> None:
        if self.deadline is None or now < self.deadline:
            return
        if self.state is State.BACKUP:
            if self.preempting is not None:
                why = (f"preempt: the master's priority {self.preempting} is lower than ours "
                       f"({self.params.priority}); its advertisements ignored for "
                       f"{self.master_down:.2f}s (Master_Down_Interval)")
            elif self.last is not None and self.last.priority == 0:
                why = f"the master stopped (priority 0) and {self.skew:.3f}s skew passed"
            else:
                why = f"no advertisement for {self.master_down:.2f}s (Master_Down_Interval)"
            self._master(now, why)
        elif self.state is State.MASTER:
            self.out.append(Send(self.params.priority))
            self.deadline = max(self.deadline + self.adver, now + self.adver / 10)

    def _received(self, ev: Received) -> None:
        self.last = Advertised(ev.source, ev.priority, ev.max_adver_cs, ev.now)
        p = self.params
        if self.state is State.BACKUP:
            if ev.priority == 0:
                self.deadline, self.preempting = ev.now + self.skew, None
                self.out.append(Log("vrrp.master_stopped", "priority 0: take over after skew"))
            elif (not p.preempt or ev.priority >= p.priority
                  or ev.now < self.started + p.preempt_delay):
                self.master_adver_cs = ev.max_adver_cs or p.adver_cs
                self.deadline, self.preempting = ev.now + self.master_down, None
            else:
                self.preempting = ev.priority
        elif self.state is State.MASTER:
            if ev.priority == 0:
                self.out.append(Send(p.priority))
                self.deadline = ev.now + self.adver
            elif ev.priority > p.priority or (
                ev.priority == p.priority and int(ev.source) > int(p.address)
            ):
                self.master_adver_cs = ev.max_adver_cs or p.adver_cs
                why = ("a higher priority" if ev.priority > p.priority
                       else "the same priority and a higher primary address")
                self._backup(ev.now, self.master_down,
                             f"advertisement from {ev.source} with {why} ({ev.priority})")

    def _fault(self, ev: Fault) -> None:
        self.faulted = ev.failed
        if ev.failed and self.state in (State.BACKUP, State.MASTER):
            if self.state is State.MASTER:
                self.out += [Send(0), Release(ev.reason)]
            self._go(State.FAULT, ev.reason)
            self.deadline = None
        elif not ev.failed and self.state is State.FAULT:
            self.master_adver_cs = self.params.adver_cs
            self._backup(ev.now, self.master_down, f"fault cleared: {ev.reason}")

    def _stop(self, now: float) -> None:
        del now
        if self.state is State.MASTER:
            self.out += [Send(0), Release("stop: priority 0 sent, the backup takes over")]
        if self.state is not State.INITIALIZE:
            self._go(State.INITIALIZE, "stop")
        self.deadline = None
