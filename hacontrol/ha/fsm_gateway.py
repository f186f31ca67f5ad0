"""Confirming the tracked gateway before a takeover from a silent peer (part of the pure machine).

``GatewayConfirm`` is the role machine's (hacontrol.ha.fsm) memory of one question: "is my
gateway reachable now?". A node whose peer fell silent may be the one cut off; when a gateway is
tracked it asks for one fresh probe (action ``ProbeGateway``), sent after the peer's last
heartbeat, and takes over only on its answer (event ``GatewayChecked``). The periodic gateway
check (hacontrol.ha.track, ``gateway_interval`` x ``gateway_fall``) is usually slower than the
dead interval, so without this a node that lost its gateway and the heartbeats at once would
take and announce the VIPs before finding out. Pure: ``now`` in, actions out, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hacontrol.ha import fsm_types as ft


@dataclass
class GatewayConfirm:
    timeout: float  # a fresh probe unanswered this long has failed
    retry: float  # after a failed probe, ask again this much later (one interval)
    wait: float | None = None  # a probe asked for at, its answer pending
    ok_at: float | None = None  # a probe answered at (cleared on every role move)
    retry_at: float = float("-inf")
    logged: set[str] = field(default_factory=set)  # once per silent-peer episode

    def reset(self, keep_answer: bool = False) -> None:
        """Nothing to confirm any more (the peer was heard, or the role moved)."""
        self.wait = None
        self.logged.clear()
        if not keep_answer:
            self.ok_at = None

    def confirmed(self, last_heard: float | None) -> bool:
        """A probe answered after the peer's last heartbeat (``None``: never heard)."""
        ok = self.ok_at
        return ok is not None and (last_heard is None or ok > last_heard)

    def ask(self, now: float, why: str) -> list[ft.Action]:
        """Not confirmed yet: ask for a probe unless one is pending or a retry is not due."""
        acts: list[ft.Action] = []
        if self.wait is not None:
            if now - self.wait < self.timeout:
                return []  # the answer is pending
            acts += self.answer(now, False, "the fresh gateway probe timed out")
        if now < self.retry_at:
            return acts
        self.wait = now
        if "asked" not in self.logged:
            self.logged.add("asked")
            acts.append(ft.Log("ha.gateway_confirm", f"{why}; confirming the gateway first"))
        return [*acts, ft.ProbeGateway()]

    def answer(self, now: float, ok: bool, why: str) -> list[ft.Action]:
        """A probe's answer; ignored unless one is pending."""
        if self.wait is None:
            return []
        self.wait = None
        if ok:
            self.ok_at = now
            return []
        self.retry_at = now + self.retry
        if "held" in self.logged:
            return []
        self.logged.add("held")
        why = f"no peer heard but {why or 'the gateway did not answer'}: not taking over"
        return [ft.Log("ha.takeover_held", why, level="warning")]
