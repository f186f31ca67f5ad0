"""What this node says to its peer, and who sends it: the heartbeat's content and the two ways
it leaves (split out of hacontrol.ha.runner, which feeds the role machine).

``Speaker`` owns the config digest the heartbeats carry, the health summary the last tick read,
the transport handle and the sender thread (hacontrol.ha.beat), if any. The rules of what may be
said hold for both ways: nothing before start or when the machine is silent (a fault drill) or
done, HANDOVER while handing over, and never "active" while the VIPs are being taken (make
before break); ``content`` is None then.

- Loop-driven (``mode="loop"``, the virtual-time tests): each tick sends the content, as do
  the immediate sends.
- A sender (``"thread"``: hacontrol.ha.beat; ``"process"``: hacontrol.ha.beat_proc, the daemon's):
  each tick and every machine step (``changed``) *publishes* the content with the time the
  machine last stepped; the sender sends it every interval and stops when that is older than
  ``stall_factor x interval`` (hacontrol.ha.beat_schedule). The immediate sends (a transition,
  a new peer nonce to echo, handover, overrides) still go out from the loop at once and publish
  too. Until the sender runs, or if it stops, the tick sends again.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Iterable

from hacontrol import logs
from hacontrol.clock import Clock, monotonic
from hacontrol.ha import packet as pk
from hacontrol.ha.beat import BeatThread
from hacontrol.ha.beat_proc import BeatProcess
from hacontrol.ha.beat_stamp import SharedBoard
from hacontrol.ha.fsm import Machine, Params
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.peer import to_wire
from hacontrol.ha.runner_actions import VipActions
from hacontrol.ha.timeline import TakeoverMarks
from hacontrol.ha.transport import HaTransport, digest_bytes
from hacontrol.metrics import Metrics

__all__ = ["Speaker", "Summary"]

Summary = list[tuple[str, int, int]]  # (service, healthy, total)
MODES = ("loop", "thread", "process")
log = logs.get("hacontrol.ha.beat")


def _fit(name: str) -> str:
    """A service name cut to the wire's 64 UTF-8 bytes (never empty)."""
    return name.encode()[: pk.MAX_NAME].decode("utf-8", "ignore") or "-"


class Speaker:
    """The heartbeat's content and its sending, for one runner."""

    def __init__(
        self,
        params: Params,
        digest: str,
        *,
        machine: Callable[[], Machine],
        actions: VipActions,
        marks: TakeoverMarks,
        health_summary: Callable[[], Iterable[tuple[str, int, int]]],
        clock: Clock,
        metrics: Metrics,
        mode: str = "loop",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"beat mode {mode!r}: one of {', '.join(MODES)}")
        self.params, self.machine, self.actions, self.marks = params, machine, actions, marks
        self.health_summary, self.clock, self.metrics = health_summary, clock, metrics
        self.mode = mode
        self.digest = digest_bytes(digest)
        self.transport: HaTransport | None = None
        self.sender: BeatThread[pk.Message] | BeatProcess | None = None
        self.board: SharedBoard | None = None
        self._summary: Summary = []  # the top of the last one read (a tick's, a send's)
        self._fed_at = clock()  # when the machine last stepped

    def set_digest(self, digest: str) -> None:
        self.digest = digest_bytes(digest)

    # -- lifecycle -------------------------------------------------------------------------

    def attach(self, transport: HaTransport) -> None:
        """Speak through ``transport``; start the sender thread or process of ``mode`` (when
        the transport has a socket of its own; else, or if it cannot start, the loop sends)."""
        self.transport = transport
        p = self.params
        window = p.stall_factor * p.interval
        if self.mode == "thread" and transport.threadable:
            self.sender = BeatThread(  # its own clock: not the loop's time from another thread
                transport.send_threaded, interval=p.interval, window=window,
                clock=monotonic, metrics=self.metrics,
            )  # fmt: skip
            self.sender.start()
        elif self.mode == "process" and transport.fileno is not None:
            try:
                self._start_process(transport, window)
            except OSError as e:  # as the table reader's child (an interpreter not ours to run)
                why = f"cannot start the sender process ({e}); the event loop sends the heartbeats"
                log.warning("ha.beat_fallback", reason=why, interpreter=sys.executable)
                self.metrics.ha_beat_errors.labels(reason="process").inc()
                self.sender = None

    def _start_process(self, transport: HaTransport, window: float) -> None:
        board = self.board = SharedBoard.create()
        transport.share_seq(board)
        fd = transport.fileno
        assert fd is not None
        self.sender = BeatProcess(
            key=transport.key, epoch=transport.epoch, nonce=transport.nonce,
            echo=lambda: transport.fresh.echo, paths=transport.paths(),
            count_sent=transport.count_sent, sock_fd=fd, board=board,
            interval=self.params.interval, window=window, metrics=self.metrics,
        )  # fmt: skip
        self.sender.start()

    def stop(self) -> None:
        """Stop and join the sender (idempotent); the transport stays the runner's."""
        if self.sender is not None:
            self.sender.stop()
        if self.board is not None and self.transport is not None:
            self.transport.share_seq(None)
            self.board.close()
            self.board = None

    @property
    def sending(self) -> bool:
        """The thread or process sends the periodic heartbeats (started and alive)."""
        return self.sender is not None and self.sender.alive

    def status(self) -> dict[str, object]:
        """Who sends the periodic heartbeats, and how the thread fares (the ``beat`` block of
        the HA status)."""
        t = self.sender
        if t is None:
            return {"sender": "loop"}
        doc: dict[str, object] = {"sender": self.mode}
        if isinstance(t, BeatProcess):
            t.poll()
            doc["pid"] = t.proc.pid if t.proc is not None else None
        return doc | {
            "alive": t.alive, "paused": t.paused, "sent": t.sent,
            "late_max_ms": round(t.late_max * 1000, 1), "error": t.error,
        }  # fmt: skip

    # -- what the runner tells it ----------------------------------------------------------

    def changed(self, now: float) -> None:
        """The machine stepped at ``now``: publish the content (with the last summary read)."""
        self._fed_at = now
        if self.sender is not None:  # also while it starts: its first send goes out at once
            self._publish(self.content(now, self._summary))

    def tick(self, now: float, summary: Summary | None) -> None:
        """The periodic heartbeat: published to the thread, or sent here when there is none.
        ``summary``: read this tick (None: reading it failed, read again for the message)."""
        if isinstance(self.sender, BeatProcess):
            self.sender.poll()
        if self.sending:
            self._publish(self.content(now, summary))
        else:  # no sender, or not yet (or no longer) running: this tick sends (and publishes)
            self.send_now(now, summary)

    def send_now(self, now: float, summary: Summary | None = None) -> None:
        """Send the heartbeat at once from the loop (a transition, an echo, a tick without
        thread); published to the thread too. ``summary``: else read here."""
        msg = self.content(now, summary)
        if self.sender is not None:
            self._publish(msg)
        if msg is None or self.transport is None:
            return
        self.transport.send(msg)
        m = self.machine()
        if m.role is Role.ACTIVE and self.actions.held:
            self.marks.first("hb_active", now)

    def farewell(self, now: float) -> int:
        """A clean stop's last word, ``stopping``, on every path (twice: a lost datagram must not
        make it look like a crash); the copies sent. Whatever the role was: a backup's stop
        releases nothing and hands nothing over, so without it the peer would see a stopped
        backup as a dead host and end a hand-off drain whose flows this node's kernel still
        forwards (hacontrol.ha.runner_actions ``_peer_stopped``). Not while silent (a drill)."""
        m = self.machine()
        if self.transport is None or m.silent or m.role is not Role.STOPPING:
            return 0
        msg = dataclasses.replace(self.message(now, self._summary), type=pk.MsgType.HEARTBEAT)
        return sum(self.transport.send(msg) for _ in range(2))

    def send_overrides(self, payload: bytes) -> int:
        """Send one overrides message (type 3) with ``payload`` on every path; the copies sent
        (0 before start, after stop, or while silent: a fault drill)."""
        m = self.machine()
        if self.transport is None or m.silent or m.done:
            return 0
        msg = self.message(self.clock(), ())
        return self.transport.send(
            dataclasses.replace(msg, type=pk.MsgType.OVERRIDES, payload=payload)
        )

    # -- the content -----------------------------------------------------------------------

    def content(
        self, now: float, summary: Iterable[tuple[str, int, int]] | None
    ) -> pk.Message | None:
        """The heartbeat that may be sent now, or None (see the module's rules)."""
        m = self.machine()
        if self.transport is None or m.silent or (m.done and not m.handing_over):
            return None
        if self.actions.taking and m.role is Role.ACTIVE:
            return None  # say "active" only once the VIPs are held (make before break)
        return self.message(now, summary)

    def message(
        self, now: float, summary: Iterable[tuple[str, int, int]] | None = None
    ) -> pk.Message:
        """The heartbeat for ``now`` whatever the rules; ``summary``: the health summary already
        read (else it is read here, and kept)."""
        m = self.machine()
        flags = (
            (pk.FLAG_BLOCKED if m.blocked else 0)
            | (pk.FLAG_YIELDING if m.yielding else 0)
            | (pk.FLAG_VIPS_HELD if self.actions.held else 0)
        )
        if summary is None:
            summary = [(n, int(h), int(t)) for n, h, t in self.health_summary()]
        top = sorted(summary)[: pk.MAX_SERVICES]
        self._summary = top  # what ``changed`` sends until the next read
        return pk.Message(
            type=pk.MsgType.HANDOVER if m.handing_over else pk.MsgType.HEARTBEAT,
            node=self.params.node, role=to_wire(m.role), priority=self.params.priority,
            effective_priority=min(254, m.effective_priority(now)), epoch=0, seq=0,
            digest=self.digest, flags=flags,
            health=tuple(pk.ServiceHealth(_fit(n), min(h, t, 65535), min(t, 65535))
                         for n, h, t in top),
            takeover=self.marks.takeover(now) if m.role is Role.ACTIVE else pk.Takeover(),
        )  # fmt: skip

    def _publish(self, msg: pk.Message | None) -> None:
        if self.sender is not None:
            self.sender.publish(msg, self._fed_at)
