"""The HA role state machine: who holds the VIP group. Pure: events with ``now`` in, actions out.

Roles and the only legal moves are in ``TRANSITIONS``; ``Machine.move`` refuses anything else.
The runner (hacontrol.ha.runner) feeds it timer ticks, heartbeats heard, local faults, drills and
stop, and executes the returned actions. Rules (docs/ha-wire.md has the prose):

- Election (pure functions in hacontrol.ha.election): no blocking fault beats one; healthy real
  servers beat none; higher effective priority; on a tie the lexicographically LOWER node name.
- The peer is dead after ``interval x dead_after`` of silence, but never before ``listen_until``:
  the end of the start-up listen, or a fresh dead interval after this node's own loop stalled.
- Preemption (``preempt``): a backup whose effective priority is strictly higher than the active
  peer's takes over once that has held for ``preempt_delay``. Ties never preempt.
- An active node that is blocked, or degraded below a better peer, hands over (make before
  break): it sends HANDOVER, keeps the VIPs until it hears the peer active, then releases. A
  blocked active node that hears no peer at all releases (FAULT); out of FAULT, a node listens
  a fresh dead interval before it may take over (so it returns by preemption, not at once).
- Split brain (active hears an active peer): a node handing over or recovering from a stall
  loses; otherwise the election decides. The loser releases at once, the winner re-announces.
  The overlap of a handover (the peer still active while handing over to us) is not split brain.
- With a tracked gateway (``confirm_gateway``), a node takes over from a dead (or never heard)
  peer only once a fresh gateway probe has answered (hacontrol.ha.fsm_gateway).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hacontrol.ha import election
from hacontrol.ha import fsm_types as ft
from hacontrol.ha.fsm_gateway import GatewayConfirm
from hacontrol.ha.fsm_types import PeerView, Role, Transition
from hacontrol.model import dead_interval

R = Role
TRANSITIONS: dict[Role, frozenset[Role]] = {
    R.STARTING: frozenset({R.BACKUP, R.ACTIVE, R.FAULT, R.STOPPING}),
    R.BACKUP: frozenset({R.ACTIVE, R.FAULT, R.STOPPING}),
    R.ACTIVE: frozenset({R.BACKUP, R.FAULT, R.STOPPING}),
    R.FAULT: frozenset({R.BACKUP, R.STOPPING}),
    R.STOPPING: frozenset(),
}


class IllegalTransition(Exception):
    """A move not in TRANSITIONS (a bug in the caller or the machine)."""


@dataclass(frozen=True)
class Params:
    node: str
    priority: int
    interval: float
    dead_after: int = 3
    preempt: bool = True
    preempt_delay: float = 10.0
    penalty: int = 50
    stall_factor: float = 2.0  # an event later than this many intervals after the last: a stall
    handover_timeout: float = 0.0  # 0 = 2 dead intervals + 1 interval
    confirm_gateway: bool = False  # a gateway is tracked: confirm it before a takeover
    confirm_timeout: float = 1.0  # a fresh gateway probe unanswered this long has failed

    @property
    def dead_interval(self) -> float:
        return dead_interval(self.interval, self.dead_after)

    @property
    def handover_wait(self) -> float:
        return self.handover_timeout or 2 * self.dead_interval + self.interval


@dataclass
class Machine:
    p: Params
    now: float
    role: Role = Role.STARTING
    since: float = 0.0
    reason: str = "starting"
    peer: PeerView | None = None
    faults: dict[str, tuple[bool, str]] = field(default_factory=dict)  # name -> (blocking, why)
    local_healthy: int = 0
    local_total: int = 0
    history: deque[Transition] = field(default_factory=lambda: deque(maxlen=32))
    listen_until: float = 0.0
    stall_until: float | None = None  # recovering from a stall: lose any split brain until then
    handover_until: float | None = None  # handing over (drill, fault, stop) until then
    handover_reason: str = ""
    preempt_since: float | None = None
    drill_until: float | None = None
    vips_present: bool = False
    done: bool = False  # STOPPING finished: the VIPs are released
    gw: GatewayConfirm = field(init=False)  # confirming the gateway before a takeover
    _last_event: float | None = None
    _last_split_announce: float = float("-inf")

    def __post_init__(self) -> None:
        self.since = self.now
        self.listen_until = self.now + self.p.dead_interval
        self.gw = GatewayConfirm(self.p.confirm_timeout, self.p.interval)

    # -- derived views ---------------------------------------------------------------------

    @property
    def blocked(self) -> bool:
        return self.drill_until is not None or any(b for b, _ in self.faults.values())

    @property
    def silent(self) -> bool:
        """A fault drill is running: send no heartbeats (behave as dead)."""
        return self.drill_until is not None

    @property
    def yielding(self) -> bool:
        """Advertise FLAG_YIELDING: this node loses a split brain."""
        return self.handover_until is not None or self.stall_until is not None

    @property
    def handing_over(self) -> bool:
        """Send HANDOVER messages instead of heartbeats."""
        return self.handover_until is not None

    def peer_alive(self, now: float) -> bool:
        return self.peer is not None and now - self.peer.last_heard <= self.p.dead_interval

    def starved(self, now: float) -> bool:
        """No healthy real server here while the live peer has some."""
        h, t = self.local_healthy, self.local_total
        return election.starved(h, t, self.peer, self.peer_alive(now))

    def effective_priority(self, now: float) -> int:
        hits = len(self.faults) + self.starved(now)
        return election.effective_priority(self.p.priority, self.p.penalty, hits)

    def wins_against_peer(self, now: float) -> bool:
        """The election (hacontrol.ha.election.wins) against the peer, which must be known."""
        pr = self.peer
        assert pr is not None
        me = election.Standing(
            self.p.node, self.blocked, self.starved(now), self.effective_priority(now)
        )
        peer_starved = bool(self.local_healthy and not pr.healthy)
        peer = election.Standing(pr.name, pr.blocked, peer_starved, pr.effective_priority)
        return election.wins(me, peer)

    # -- the guarded setter ----------------------------------------------------------------

    def move(self, now: float, to: Role, reason: str) -> list[ft.Action]:
        if to not in TRANSITIONS[self.role]:
            raise IllegalTransition(f"{self.role.name} -> {to.name} ({reason})")
        old, self.role, self.since, self.reason = self.role, to, now, reason
        moved = Transition(now, old, to, reason)
        self.history.append(moved)
        self.preempt_since = None
        self.handover_until = None
        self.gw.reset()
        acts: list[ft.Action] = []
        if to is Role.ACTIVE:
            acts += [ft.TakeVips(adopt=self.vips_present), ft.Announce(), ft.SendHeartbeatNow()]
            self.vips_present = False
        elif to in (Role.BACKUP, Role.FAULT):
            acts.append(ft.ReleaseVips())
            self.vips_present = False
            self.stall_until = None
        return [*acts, moved, ft.Notify(to.name.lower(), reason)]

    # -- events ----------------------------------------------------------------------------

    def step(self, ev: ft.Event) -> list[ft.Action]:
        now = ev.now
        acts = self._watch_stall(now)
        if self.role is Role.STOPPING:
            return acts + self._stopping(ev)
        match ev:
            case ft.Start(vips_present=present):
                self.vips_present = present
                self.listen_until = now + self.p.dead_interval
            case ft.PeerHeard():
                acts += self._heard(ev)
            case ft.LocalFault(name=name, failed=failed, blocking=blocking, reason=why):
                if failed:
                    self.faults[name] = (blocking, why)
                else:
                    self.faults.pop(name, None)
                acts.append(ft.Log("ha.track", why, fields=(("item", name), ("failed", failed))))
            case ft.LocalHealth(healthy=h, total=t):
                self.local_healthy, self.local_total = h, t
            case ft.DrillHandover():
                acts += self._begin_handover(now, "drill: planned handover")
            case ft.DrillFault(seconds=secs):
                if self.role is not Role.ACTIVE:
                    acts.append(ft.Log("ha.drill_refused", "fault drill: this node is not active"))
                else:
                    self.drill_until = now + secs
                    acts += self.move(now, Role.FAULT, f"drill: behave as dead for {secs:g}s")
            case ft.Stop():
                return acts + self._stop(now)
            case ft.GatewayChecked(ok=ok, reason=why):
                acts += self.gw.answer(now, ok, why)
            case ft.Tick():
                if self.drill_until is not None and now >= self.drill_until:
                    self.drill_until = None
                    self.listen_until = max(self.listen_until, now + self.p.dead_interval)
                    acts.append(ft.Log("ha.drill_end", "fault drill over"))
        return acts + self._evaluate(now)

    def _watch_stall(self, now: float) -> list[ft.Action]:
        last, self._last_event = self._last_event, now
        if last is None or now - last <= self.p.stall_factor * self.p.interval:
            return []
        self.listen_until = max(self.listen_until, now + self.p.dead_interval)
        self.preempt_since = None
        if self.role is Role.ACTIVE:
            self.stall_until = self.listen_until
        gap = round(now - last, 3)
        why = f"event loop stalled {gap}s; listening a fresh dead interval"
        return [ft.Log("ha.stall", why, level="warning", fields=(("gap", gap),))]

    def _heard(self, ev: ft.PeerHeard) -> list[ft.Action]:
        acts: list[ft.Action] = []
        old = self.peer
        if old is None or old.digest_match != ev.digest_match:
            if not ev.digest_match:
                why = f"peer {ev.name} runs a different config (digest mismatch)"
                acts.append(ft.Log("ha.config_mismatch", why, level="error"))
            elif old is not None:
                why = f"peer {ev.name} config digest matches again"
                acts.append(ft.Log("ha.config_match", why))
        e = ev
        was_alive = old is not None and ev.now - old.last_heard <= self.p.dead_interval
        preempting = was_alive and self.role is Role.ACTIVE and e.role is Role.ACTIVE
        preempting = preempting and old is not None and (old.role is Role.BACKUP or old.preempting)
        self.peer = PeerView(e.name, e.role, e.priority, e.effective_priority, e.blocked,
                             e.yielding, e.healthy, e.now, e.digest_match, e.handover,
                             preempting)  # fmt: skip
        self.gw.reset(keep_answer=True)  # the peer is not dead: no takeover to confirm
        back = not was_alive or (old is not None and old.role is Role.ACTIVE)
        if self.role is Role.ACTIVE and ev.role not in (Role.ACTIVE, Role.STARTING) and back:
            # the peer may have held the VIPs while we could not hear it: re-announce
            why = f"peer {ev.name} is back as {ev.role.name.lower()}"
            acts += self._reassert(ev.now, ft.Log("ha.peer_returned", why))
        if not (ev.handover and ev.role in (Role.ACTIVE, Role.STOPPING)):
            return acts
        # the peer hands over: take at once, without waiting for the dead interval
        why = f"peer {ev.name} handed over"
        if self.role in (Role.STARTING, Role.BACKUP) and not self.blocked:
            acts += self.move(ev.now, Role.ACTIVE, why)
        elif self.role is Role.ACTIVE and self.handover_until is None:
            acts += self._reassert(ev.now, ft.Log("ha.handover_received", why))
        return acts

    def _reassert(self, now: float, log: ft.Log) -> list[ft.Action]:
        """Re-announce the VIPs (at most once per dead interval) after a peer let them go."""
        if now - self._last_split_announce < self.p.dead_interval:
            return []
        self._last_split_announce = now
        return [log, ft.Announce(), ft.SendHeartbeatNow()]

    def _evaluate(self, now: float) -> list[ft.Action]:
        acts: list[ft.Action] = []
        for _ in range(3):  # FAULT -> BACKUP -> ACTIVE may chain within one event
            more = self._evaluate_once(now)
            acts += more
            if not any(isinstance(a, Transition) for a in more):
                break
        return acts

    def _evaluate_once(self, now: float) -> list[ft.Action]:
        pr, alive = self.peer, self.peer_alive(now)
        if self.role is Role.FAULT:
            if not self.blocked:  # back from a fault: hear the peer out before taking over
                self.listen_until = max(self.listen_until, now + self.p.dead_interval)
                return self.move(now, Role.BACKUP, "recovered: no blocking fault left")
            return []
        if self.role is Role.STARTING:
            if pr and alive and pr.role is Role.ACTIVE:
                return self.move(now, Role.BACKUP, f"peer {pr.name} is active")
            if now < self.listen_until:
                return []
            if self.blocked:
                return self.move(now, Role.FAULT, self._fault_reason())
            if pr is None or not alive:  # a peer never heard is never alive
                return self._take_unheard(now, "no peer heard for the dead interval")
            if election.not_serving(pr) or self.wins_against_peer(now):
                return self.move(now, Role.ACTIVE, f"won election against {election.describe(pr)}")
            return self.move(now, Role.BACKUP, f"lost election to {election.describe(pr)}")
        if self.role is Role.BACKUP:
            return self._evaluate_backup(now)
        return self._evaluate_active(now)

    def _evaluate_backup(self, now: float) -> list[ft.Action]:
        pr, alive = self.peer, self.peer_alive(now)
        if self.blocked:
            return self.move(now, Role.FAULT, self._fault_reason())
        if pr is None or not alive:
            if now < self.listen_until:
                return []
            if pr is None:
                return self._take_unheard(now, "no peer heard for the dead interval")
            silent = round(now - pr.last_heard, 3)
            return self._take_unheard(now, f"peer {pr.name} silent for {silent}s (dead)")
        if pr.role is not Role.ACTIVE:
            self.preempt_since = None
            if election.not_serving(pr) or self.wins_against_peer(now):
                why = f"no active peer; won election against {election.describe(pr)}"
                return self.move(now, Role.ACTIVE, why)
            return []
        mine = self.effective_priority(now)
        if not self.p.preempt or mine <= pr.effective_priority:
            self.preempt_since = None
            return []
        if self.preempt_since is None:
            self.preempt_since = now
        if now - self.preempt_since >= self.p.preempt_delay:
            why = f"preempt: priority {mine} > peer {pr.name}'s {pr.effective_priority}"
            return self.move(now, Role.ACTIVE, why + f" for {self.p.preempt_delay:g}s")
        return []

    def _take_unheard(self, now: float, why: str) -> list[ft.Action]:
        """Take over from a peer that is dead or was never heard; with a tracked gateway, only
        once a fresh probe asked for after the peer's last heartbeat has answered."""
        if not self.p.confirm_gateway:
            return self.move(now, Role.ACTIVE, why)
        if self.gw.confirmed(self.peer.last_heard if self.peer else None):
            return self.move(now, Role.ACTIVE, f"{why}; gateway answered a fresh probe")
        return self.gw.ask(now, why)

    def _evaluate_active(self, now: float) -> list[ft.Action]:
        pr, alive = self.peer, self.peer_alive(now)
        acts: list[ft.Action] = []
        if self.stall_until is not None and now >= self.stall_until:
            self.stall_until = None  # nobody took over while we stalled: reassert the VIPs
            over = ft.Log("ha.stall_over", "no active peer")
            acts += [ft.TakeVips(adopt=True), ft.Announce(), over]
        if self.handover_until is not None and now >= self.handover_until:
            self.handover_until = None
            why = f"handover timed out ({self.handover_reason}); keeping the VIPs"
            acts.append(ft.Log("ha.handover_failed", why, level="warning"))
        if pr is None or not alive:
            if self.blocked:  # cut off (link down, gateway lost) and nobody heard: let go
                why = f"{self._fault_reason()}; no peer heard"
                return acts + self.move(now, Role.FAULT, why)
            return acts
        if pr.role is Role.ACTIVE:
            return acts + self._split_brain(now, pr)
        if self.handover_until is None and pr.role is Role.BACKUP and not pr.blocked:
            if self.blocked:
                acts += self._begin_handover(now, f"local fault: {self._fault_reason()}")
            elif (self.faults or self.starved(now)) and not self.wins_against_peer(now):
                why = f"degraded (priority {self.effective_priority(now)}"
                why += ", no healthy real server" * self.starved(now)
                acts += self._begin_handover(now, f"{why}); peer {election.describe(pr)} is better")
        return acts

    def _split_brain(self, now: float, pr: PeerView) -> list[ft.Action]:
        stalled, won = self.stall_until is not None, self.wins_against_peer(now)
        verdict, why = election.split_brain(self.yielding, stalled, won, pr)
        if verdict == "overlap":
            return self._reassert(now, ft.Log("ha.handover_overlap", why))
        if verdict == "lose":
            return self.move(now, Role.FAULT if self.blocked else Role.BACKUP, why)
        return self._reassert(now, ft.Log("ha.split_brain", why, level="warning"))

    def _begin_handover(self, now: float, why: str) -> list[ft.Action]:
        if self.role is not Role.ACTIVE:
            return [ft.Log("ha.handover_refused", f"{why}: this node is not active")]
        if not election.able_to_take(self.peer) or not self.peer_alive(now):
            return [ft.Log("ha.handover_refused", f"{why}: no backup peer able to take over")]
        self.handover_until, self.handover_reason = now + self.p.handover_wait, why
        return [ft.Log("ha.handover", why), ft.SendHeartbeatNow()]

    def _stop(self, now: float) -> list[ft.Action]:
        active = self.role is Role.ACTIVE
        able = election.able_to_take(self.peer) and self.peer_alive(now)  # as _begin_handover
        acts = self.move(now, Role.STOPPING, "stop requested")
        if active and able:
            self.handover_until, self.handover_reason = now + self.p.handover_wait, "stopping"
            return [*acts, ft.SendHeartbeatNow()]
        self.done = True
        return [*acts, ft.ReleaseVips()]

    def _stopping(self, ev: ft.Event) -> list[ft.Action]:
        if self.done:
            return []
        if isinstance(ev, ft.PeerHeard):
            self._heard(ev)
        pr = self.peer
        taken = pr is not None and pr.role is Role.ACTIVE and self.peer_alive(ev.now)
        expired = self.handover_until is not None and ev.now >= self.handover_until
        if not (taken or expired):
            return []
        self.done, self.handover_until = True, None
        why = "peer took over" if taken else "handover timed out; releasing anyway"
        return [ft.ReleaseVips(), ft.Log("ha.stopped", why)]

    # -- helpers ---------------------------------------------------------------------------

    def _fault_reason(self) -> str:
        if self.drill_until is not None:
            return "fault drill"
        return "; ".join(why for b, why in self.faults.values() if b) or "fault"
