"""Override replication to the HA peer: push at once, anti-entropy by digest, bounded and paced.

``Replicator`` sits between the ``OverrideManager`` (hacontrol.overrides.manager) and the HA
runner's overrides messages (type 3 of hacontrol.ha.packet, which carry the same key, MAC, boot
nonce echo and replay window as the heartbeats; the section inside is hacontrol.overrides.wire):

- **Push**: every record a command makes here (``changed``, the manager's ``on_change``) is
  queued and sent at once.
- **Anti-entropy**: every ``summary_every`` seconds (and at the end of every send: the ``LAST``
  packet) the peer is told the digest of our whole set, its size and our Lamport counter. A
  ``LAST`` packet whose digest differs from ours (after merging what it carried) queues our
  whole set for the peer, at most once every ``full_gap`` seconds and not while a send of ours
  is still under way; the peer does the same, so the union (last writer wins) is reached.
- **Bounds**: at most ``wire.MAX_PER_PACKET`` records and one safe UDP payload per packet, and
  at most ``rate`` packets per second (a token bucket of ``burst``): a 20,000-record set takes
  about 20 s, and a heartbeat tick never waits for it (sending is this task's work, receiving is
  one bounded decode and merge). A queued record is sent as it is when its turn comes (the
  newest version), once, however often it was queued.
- **Receive** (``received``, called from the heartbeat socket's callback): a section that does
  not decode is refused whole, counted by reason and logged (``override.sync_refused``, at most
  once per reason every 5 s); valid records are merged (newer wins, our counter moves past
  theirs); the file is written at most every ``save_gap`` seconds by this task. Records for
  services or servers our config does not list are kept (they take effect once it does).
  Nothing raised here reaches the heartbeat path.

``status`` and ``families`` show whether the peer's digest agrees with ours, when it last did,
and the counts. Log events: ``override.sync`` (agreement gained or lost, a full send),
``override.sync_refused``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric

from hacontrol import logs
from hacontrol.clock import Clock
from hacontrol.ha.packet import Message, payload_room
from hacontrol.overrides import wire
from hacontrol.overrides.core import Override, OverrideKey
from hacontrol.overrides.manager import OverrideManager

log = logs.get("hacontrol.overrides")

REFUSE_REASONS = (*wire.REASONS, "full", "error")
Send = Callable[[bytes], int]  # payload -> copies sent (0: not now)


class Replicator:
    def __init__(
        self,
        manager: OverrideManager,
        send: Send,
        *,
        node: str,
        clock: Clock,
        summary_every: float = 1.0,
        full_gap: float = 2.0,
        save_gap: float = 0.5,
        rate: float = 50.0,
        burst: int = 10,
        log_every: float = 5.0,
    ) -> None:
        self.manager, self.send, self.clock = manager, send, clock
        self.summary_every, self.full_gap, self.save_gap = summary_every, full_gap, save_gap
        self.rate, self.burst, self.log_every = rate, burst, log_every
        self.budget = payload_room(node)
        self.queue: dict[OverrideKey, None] = {}  # ordered: sent oldest first
        self.full_wanted = False
        self.last_full: float | None = None
        self.next_summary = 0.0
        self.peer: str | None = None
        self.peer_digest: bytes | None = None
        self.peer_total = 0
        self.last_heard: float | None = None
        self.last_agree: float | None = None
        self.agree: bool | None = None
        self.packets = {"sent": 0, "received": 0}
        self.records = {"sent": 0, "received": 0, "taken": 0}
        self.refused: dict[str, int] = dict.fromkeys(REFUSE_REASONS, 0)
        self._tokens = float(burst)
        self._tokens_at = clock()
        self._unsaved = False
        self._saved_at = -save_gap
        self._sum = wire.DigestSum(manager.records.values())
        self._gen = manager.generation
        self._logged: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- what the manager and the peer say ----------------------------------------------------

    def digest(self) -> bytes:
        """The digest of our record set: kept per change (``wire.DigestSum``); recomputed
        whole only when the set changed by a way this class did not see."""
        if self.manager.generation != self._gen:
            self._sum = wire.DigestSum(self.manager.records.values())
            self._gen = self.manager.generation
        return self._sum.digest()

    def _seen(self, records: Iterable[Override]) -> None:
        """``records`` may hold their keys now: the digest follows those that do."""
        gen = self.manager.generation
        if gen == self._gen:
            return
        if gen != self._gen + 1:  # another change came between: the next digest() rehashes
            self._gen = -1
            return
        held = self.manager.records
        for o in records:
            if held.get(o.key) is o:
                self._sum.put(o)
        self._gen = gen

    def changed(self, made: list[Override]) -> None:
        """Records made here by a command: push them now."""
        self._seen(made)
        for o in made:
            self.queue.setdefault(o.key)
        self._wake.set()

    def received(self, msg: Message, path: str, now: float) -> None:
        """An overrides message that passed the heartbeat checks (never raises)."""
        try:
            self._received(msg, now)
        except Exception as e:  # a bug must not reach the heartbeat socket's callback
            self._refuse("error", msg.node, path, f"{type(e).__name__}: {e}")

    def _received(self, msg: Message, now: float) -> None:
        try:
            sec = wire.decode_section(msg.payload)
        except wire.WireError as e:
            self._refuse(e.reason, msg.node, "", e.detail)
            return
        self.packets["received"] += 1
        self.peer, self.last_heard = msg.node, now
        before = self.manager.counter
        self.manager.observe(sec.counter)
        if self.manager.counter > before:  # kept across a restart too
            self._unsaved = True
        if sec.records:
            self.records["received"] += len(sec.records)
            taken, full = self.manager.merge_remote(sec.records, msg.node, save=False)
            self._seen(sec.records)
            self.records["taken"] += taken
            if full:
                self._refuse("full", msg.node, "", f"{full} records past the set's bound")
            if taken:
                self._unsaved = True
                self._wake.set()
        if sec.last:
            self.peer_digest, self.peer_total = sec.digest, sec.total
            self._judge(now)

    def _judge(self, now: float) -> None:
        """Compare the peer's digest (as of its last LAST packet) with ours."""
        agree = self.peer_digest == self.digest()
        if agree:
            self.last_agree = now
        elif not self.queue:  # while we send, its view is still catching up
            self.full_wanted = True
            self._wake.set()
        if agree != self.agree:
            self.agree = agree
            log.info("override.sync", peer=self.peer, agree=agree, records=len(
                self.manager.records), peer_records=self.peer_total,
                reason="the peer's override set matches ours" if agree
                else "the peer's override set differs from ours")  # fmt: skip

    def _refuse(self, reason: str, peer: str, path: str, detail: str) -> None:
        self.refused[reason] = self.refused.get(reason, 0) + 1
        now = self.clock()
        last = self._logged.get(reason)
        if last is None or now - last >= self.log_every:
            self._logged[reason] = now
            log.warning("override.sync_refused", reason=reason, peer=peer, path=path or None,
                        detail=detail)  # fmt: skip

    # -- sending (the task) -------------------------------------------------------------------

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.burst), self._tokens + (now - self._tokens_at) * self.rate)
        self._tokens_at = now

    def _packet(self) -> wire.Section:
        """The next packet of the queue (its records leave the queue)."""
        recs = self.manager.records
        keys = [k for k in list(self.queue)[: wire.MAX_PER_PACKET] if k in recs]
        chunk = wire.pack([recs[k] for k in keys], self.budget)[0] if keys else []
        for o in chunk:
            self.queue.pop(o.key, None)
        if not chunk:  # only keys without a record (cannot happen: records are never removed)
            self.queue.clear()
        return wire.Section(self.digest(), len(recs), self.manager.counter,
                            last=not self.queue, records=tuple(chunk))  # fmt: skip

    def _emit(self, sec: wire.Section, now: float) -> None:
        self._tokens -= 1
        self.next_summary = now + self.summary_every
        if self.send(wire.encode_section(sec)) > 0:
            self.packets["sent"] += 1
            self.records["sent"] += len(sec.records)

    def step(self, now: float) -> float:
        """Do what is due at ``now``; seconds until something may be due again."""
        self._refill(now)
        if self._unsaved and now - self._saved_at >= self.save_gap:
            self._unsaved, self._saved_at = False, now
            self.manager.save()
        if self.full_wanted and not self.queue and (
            self.last_full is None or now - self.last_full >= self.full_gap
        ):
            self.full_wanted, self.last_full = False, now
            self.queue.update(dict.fromkeys(sorted(self.manager.records)))
            log.info("override.sync", peer=self.peer, records=len(self.queue),
                     reason="the peer's set differs: sending ours")  # fmt: skip
        while self._tokens >= 1 and (self.queue or now >= self.next_summary):
            self._emit(self._packet() if self.queue else wire.Section(
                self.digest(), len(self.manager.records), self.manager.counter), now)  # fmt: skip
        waits = [self.next_summary - now]
        if self.queue:
            waits.append((1 - self._tokens) / self.rate)
        if self._unsaved:
            waits.append(self._saved_at + self.save_gap - now)
        if self.full_wanted and self.last_full is not None:
            waits.append(self.last_full + self.full_gap - now)
        return max(0.001, min(waits))

    async def run(self) -> None:
        """The sender: until cancelled (the file is written a last time then)."""
        try:
            while True:
                self._wake.clear()
                delay = self.step(self.clock())
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
        finally:
            if self._unsaved:
                self.manager.save()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="hacontrol-override-sync")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- status and metrics -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = self.clock()

        def ago(t: float | None) -> float | None:
            return None if t is None else round(now - t, 3)

        return {
            "peer": self.peer,
            "agree": None if self.peer_digest is None else self.peer_digest == self.digest(),
            "digest": self.digest().hex(),
            "peer_digest": None if self.peer_digest is None else self.peer_digest.hex(),
            "records": len(self.manager.records),
            "peer_records": self.peer_total if self.peer_digest is not None else None,
            "last_sync_ago": ago(self.last_agree),
            "last_heard_ago": ago(self.last_heard),
            "queued": len(self.queue),
            "packets": dict(self.packets),
            "records_moved": dict(self.records),
            "refused": {k: v for k, v in self.refused.items() if v},
        }

    def families(self) -> list[Metric]:
        doc = self.status()
        agree = GaugeMetricFamily("hacontrol_override_sync_agree", "1 when the HA peer's "
                                  "override set digest equals ours (absent before it is known)")
        if doc["agree"] is not None:
            agree.add_metric([], 1.0 if doc["agree"] else 0.0)
        last = GaugeMetricFamily("hacontrol_override_sync_last_seconds",
                                 "Seconds since the HA peer's override set last agreed with ours")
        if doc["last_sync_ago"] is not None:
            last.add_metric([], doc["last_sync_ago"])
        packets = CounterMetricFamily("hacontrol_override_sync_packets",
                                      "Override sync packets", labels=["direction"])
        for k, v in self.packets.items():
            packets.add_metric([k], float(v))
        records = CounterMetricFamily("hacontrol_override_sync_records", "Override records "
                                      "sent, received and taken (newer)", labels=["result"])
        for k, v in self.records.items():
            records.add_metric([k], float(v))
        refused = CounterMetricFamily("hacontrol_override_sync_refused",
                                      "Override sync packets or records refused", labels=["reason"])
        for k, v in self.refused.items():
            refused.add_metric([k], float(v))
        return [agree, last, packets, records, refused]
