"""The overrides of a running daemon: commands, the effect on the desired table, the drain watcher.

``OverrideManager`` owns the record set (hacontrol.overrides.core), the destinations leaving the
config, and which drains are over. Commands (``command``) make new local records (a Lamport
counter above everything seen, this node's name), save the file (hacontrol.overrides.store) and
mark the services touched dirty on the reconciler, so the change reaches the kernel in one
change pass, and hand the records made to ``on_change`` (replication: hacontrol.overrides.
replicate). The peer's records come in through ``merge_remote`` (last writer wins; the counter
then moves past theirs, Lamport); ``generation`` grows at every change of the record set.

The drain watcher (``run``) wakes at most every ``poll`` seconds while a drain is in progress,
reads the connections of the draining destinations from the kernel (``ConnReader``:
hacontrol.overrides.conns) and ends each drain whose count reached 0 or whose deadline passed
(``core.drain_step``); that service is marked dirty and the destination leaves the table. Before
the reconciler has read the kernel (start) or after its error, nothing is ended but by deadline:
"not in the kernel" is only believed of a kernel view that is known.

Log events: ``override.set`` (a command or the peer), ``override.drained``, ``override.error``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.desired import dest_key, service_key
from hacontrol.dataplane.table import DestKey, ServiceKey, Table
from hacontrol.model import Config, ServiceConfig
from hacontrol.overrides.core import (
    MAX_DEADLINE,
    MAX_RECORDS,
    MAX_WEIGHT,
    Action,
    CommandError,
    Leaving,
    Override,
    OverrideKey,
    Version,
    canonical_server,
    dest_of,
    drain_step,
    holds,
    merge,
    next_counter,
)
from hacontrol.overrides.desired import KEEP, Effect
from hacontrol.overrides.plan import removed_pairs
from hacontrol.overrides.store import OverrideStore, StoreError

log = logs.get("hacontrol.overrides")

Pair = tuple[ServiceKey, DestKey]
ConnReader = Callable[[list[Pair]], Awaitable[dict[Pair, int] | None]]
DEFAULT_DEADLINE = 300.0


@dataclass
class Progress:
    """What the watcher knows of one drain (records and leaving destinations alike)."""

    connections: int | None = None
    done: str | None = None  # why it ended: drained, deadline, not in kernel
    done_at: float | None = None


class OverrideManager:
    def __init__(
        self,
        node: str,
        config: Callable[[], Config],
        *,
        store: OverrideStore | None,
        mark_dirty: Callable[[Iterable[ServiceKey]], None],
        kernel: Callable[[], Table | None],
        conns: ConnReader,
        wall: Callable[[], float] = time.time,
        poll: float = 1.0,
        on_change: Callable[[list[Override]], None] | None = None,
    ) -> None:
        self.node = node
        self._config = config
        self._store = store
        self._mark_dirty = mark_dirty
        self._kernel = kernel  # None while the kernel view is unknown
        self._conns = conns
        self._wall = wall
        self._poll = poll
        self.on_change = on_change  # local records changed: replication sends them
        self.counter = 0
        self.generation = 0
        self.records: dict[OverrideKey, Override] = {}
        self.leaving: dict[Pair, Leaving] = {}
        self._progress: dict[Any, Progress] = {}  # (key, version) or Pair -> progress
        self._wake = asyncio.Event()

    # -- loading and saving -----------------------------------------------------------------

    def load(self, store: OverrideStore) -> None:
        """Use ``store`` from now on and take what it holds."""
        self._store = store
        try:
            self.counter, records, leaving, ended = self._store.load()
        except StoreError as e:
            log.error("override.error", reason=f"load: {e} (starting without overrides)")
            return
        self.records = {o.key: o for o in records}
        self.leaving = {(lv.service, lv.dest): lv for lv in leaving}
        for service, server, counter, node in ended:  # drains that were over: stay over
            o = self.records.get((service, server))
            if o is not None and o.version == Version(counter, node):
                self._progress[(o.key, o.version)] = Progress(done="drained before a restart")
        self.generation += 1
        self._wake.set()

    def _save(self) -> None:
        if self._store is None:
            return
        try:
            ended = {
                (o.service, o.server, o.version.counter, o.version.node)
                for o in self.records.values()
                if o.action == "drain" and self._is_done((o.key, o.version))
            }
            self._store.save(self.counter, self.records.values(), self.leaving.values(), ended)
        except StoreError as e:  # the kernel follows anyway; only the restart memory is lost
            log.error("override.error", reason=f"save: {e}")

    # -- commands ---------------------------------------------------------------------------

    def _service(self, name: str) -> ServiceConfig:
        for svc in self._config().services:
            if svc.name == name:
                return svc
        raise CommandError(f"no service named {name!r}")

    def command(
        self,
        action: Action,
        service: str,
        server: str | None = None,
        *,
        weight: int | None = None,
        deadline: float | None = None,
    ) -> list[Override]:
        """Set ``action`` on one real server (``server`` "address:port") or on every real server
        of ``service``; the records made. CommandError when nothing can be done."""
        svc = self._service(service)
        names = [str(dest_key(rs)) for rs in svc.real_servers]
        if server is not None:
            server = canonical_server(server)
            if server not in names and server not in {o.server for o in self._of(service)}:
                raise CommandError(f"service {service!r} has no real server {server!r}")
            names = [server]
        if action == "weight" and (weight is None or not 0 <= weight <= MAX_WEIGHT):
            raise CommandError(f"weight: an integer 0..{MAX_WEIGHT} is required")
        if action != "weight" and weight is not None:
            raise CommandError("weight goes only with action weight")
        if action != "drain" and deadline is not None:
            raise CommandError("deadline goes only with action drain")
        if deadline is not None and not 0 <= deadline <= MAX_DEADLINE:
            raise CommandError(f"deadline: 0..{MAX_DEADLINE:.0f} seconds")
        now = self._wall()
        counter = next_counter(self.records.values(), self.counter)
        made = []
        for name in names:
            o = Override(
                service=service,
                server=name,
                action=action,
                version=Version(counter, self.node),
                set_at=now,
                weight=weight if action == "weight" else None,
                deadline_at=now + (DEFAULT_DEADLINE if deadline is None else deadline)
                if action == "drain" else None,
            )  # fmt: skip
            made.append(o)
        self.counter = counter
        self._take(made, origin="api")
        if self.on_change is not None:
            self.on_change(made)
        return made

    def _of(self, service: str) -> list[Override]:
        return [o for o in self.records.values() if o.service == service]

    def merge_remote(
        self, records: Iterable[Override], peer: str, *, save: bool = True
    ) -> tuple[int, int]:
        """Take the peer's newer records (``save`` False: the caller calls ``save`` soon);
        (taken, refused: new servers past MAX_RECORDS)."""
        _, changed = merge(self.records, records)
        incoming = [o for o in records if o.key in changed]
        room = MAX_RECORDS - len(self.records)
        fits = [o for o in incoming if o.key in self.records or (room := room - 1) >= 0]
        self.observe(max((o.version.counter for o in fits), default=0))
        if fits:
            self._take(fits, origin=f"peer {peer}", save=save)
        return len(fits), len(incoming) - len(fits)

    def observe(self, counter: int) -> None:
        """A Lamport counter seen on the peer: our next record takes a higher one."""
        self.counter = max(self.counter, counter)

    def save(self) -> None:
        self._save()

    def _take(self, made: list[Override], origin: str, save: bool = True) -> None:
        self.generation += 1
        for i, o in enumerate(made):
            self.records[o.key] = o
            if i == 8 and len(made) > 9:  # a peer's full set: the count, not every record
                log.info("override.set", count=len(made) - i, reason=f"{origin} (and more)")
            if i >= 8 and len(made) > 9:
                continue
            log.info(
                "override.set",
                service=o.service,
                real_server=o.server,
                action=o.action,
                weight=o.weight,
                deadline_at=o.deadline_at,
                version=str(o.version),
                reason=origin,
            )
        if save:
            self._save()
        self._mark_dirty(self._keys_of({o.service for o in made}))
        self._wake.set()

    def _keys_of(self, names: set[str]) -> set[ServiceKey]:
        return {service_key(s) for s in self._config().services if s.name in names}

    # -- config changes ---------------------------------------------------------------------

    def config_changed(self, old: Config | None, new: Config) -> None:
        """A reload: destinations the new config drops leave with a deadline; those it lists
        again stop leaving. ``old`` and ``new`` may hold only the services that changed (the
        daemon passes its delta): an unchanged service neither drops nor lists again."""
        gone: set[ServiceKey] = set()
        for lv in removed_pairs(old, new, self._wall()) if old is not None else []:
            if (lv.service, lv.dest) not in self.leaving:
                self.leaving[(lv.service, lv.dest)] = lv
                gone.add(lv.service)
        keys = {p[0] for p in self.leaving}  # only the services with leaving destinations
        listed = {(k, dest_key(rs)) for s in new.services if (k := service_key(s)) in keys
                  for rs in s.real_servers} if keys else set()  # fmt: skip
        back = [p for p in self.leaving if p in listed]
        for p in back:
            del self.leaving[p]
            self._progress.pop(p, None)
        if gone or back:
            self._save()
            self._mark_dirty(gone | {p[0] for p in back})
            self._wake.set()

    # -- the effect on the desired table ----------------------------------------------------

    def effect(self, service: str, dest: DestKey) -> Effect:
        o = self.records.get((service, str(dest)))
        if o is None or not o.active:
            return KEEP
        if o.action == "disable":
            return Effect(remove=True)
        if o.action == "weight":
            return Effect(weight=o.weight)
        p = self._progress.get((o.key, o.version))
        return Effect(remove=True) if p is not None and p.done else Effect(draining=True)

    def leaving_now(self) -> list[Leaving]:
        return [lv for p, lv in self.leaving.items() if not self._is_done(p)]

    def _is_done(self, ident: Any) -> bool:
        p = self._progress.get(ident)
        return p is not None and p.done is not None

    # -- the drain watcher ------------------------------------------------------------------

    def _pending(self) -> list[tuple[Any, Pair, float]]:
        """(progress id, (service, destination), deadline) of every drain not over yet."""
        drained = {o.service for o in self.records.values() if o.action == "drain"}
        # only those services' keys: all of them cost 2 ms a look at 1,000 services (issue 8)
        keys = {s.name: service_key(s) for s in self._config().services if s.name in drained}
        out: list[tuple[Any, Pair, float]] = []
        for o in self.records.values():
            ident = (o.key, o.version)
            if o.action == "drain" and o.deadline_at is not None and not self._is_done(ident):
                sk = keys.get(o.service)
                if sk is not None:
                    out.append((ident, (sk, dest_of(o.server)), o.deadline_at))
        for pair, lv in self.leaving.items():
            if not self._is_done(pair):
                out.append((pair, pair, lv.deadline_at))
        return out

    async def check(self) -> float | None:
        """One look at every drain in progress; seconds until the next look (None: none)."""
        pending = self._pending()
        if not pending:
            return None
        kernel = self._kernel()
        present = [p for _, p, _ in pending if kernel is None or holds(kernel, p)]
        counts = await self._conns(present) if present else {}
        now = self._wall()
        finished: set[ServiceKey] = set()
        for ident, pair, deadline in pending:
            n = None if counts is None else counts.get(pair, 0)
            there = kernel is None or holds(kernel, pair)
            why = drain_step(deadline, now, n, there)
            prog = self._progress.setdefault(ident, Progress())
            prog.connections = n
            if why is not None:
                prog.done, prog.done_at = why, now
                finished.add(pair[0])
                log.info("override.drained", service=str(pair[0]), real_server=str(pair[1]),
                         connections=n, reason=why)  # fmt: skip
        if finished:
            gone = [p for p in self.leaving if self._is_done(p)]
            for p in gone:
                del self.leaving[p]
                self._progress.pop(p, None)
            self._save()  # the drains over are remembered across a restart
            self._mark_dirty(finished)
        left = [d for ident, _, d in pending if not self._is_done(ident)]
        if not left:
            return None
        return max(0.0, min(self._poll, min(left) - now))

    async def run(self) -> None:
        """The watcher: until cancelled."""
        while True:
            self._wake.clear()
            try:
                delay = await self.check()
            except Exception as e:  # a counter read failing must not end the watcher
                log.warning("override.error", reason=f"drain check: {type(e).__name__}: {e}")
                delay = self._poll
            if delay is None:
                await self._wake.wait()
                continue
            try:
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            except TimeoutError:
                pass

    # -- status -----------------------------------------------------------------------------

    def entry(self, o: Override) -> dict[str, Any]:
        now = self._wall()
        doc: dict[str, Any] = {
            "service": o.service,
            "real_server": o.server,
            "action": o.action,
            "state": self._state(o),
            "weight": o.weight,
            "version": str(o.version),
            "set_ago": round(now - o.set_at, 3),
        }
        if o.action == "drain" and o.deadline_at is not None:
            p = self._progress.get((o.key, o.version), Progress())
            doc["drain"] = {
                "since_ago": round(now - o.set_at, 3),
                "deadline_in": round(max(0.0, o.deadline_at - now), 3),
                "connections": p.connections,
                "ended": p.done,
            }
        return doc

    def _state(self, o: Override) -> str:
        if o.action == "drain":
            return "drained" if self._is_done((o.key, o.version)) else "draining"
        return {"disable": "disabled", "weight": "weight"}.get(o.action, "configured")

    def status(self) -> dict[str, Any]:
        now = self._wall()
        leaving = []
        for (sk, dk), lv in sorted(self.leaving.items()):
            p = self._progress.get((sk, dk), Progress())
            leaving.append({
                "service": str(sk), "real_server": str(dk), "since_ago": round(now - lv.since, 3),
                "deadline_in": round(max(0.0, lv.deadline_at - now), 3),
                "connections": p.connections,
            })  # fmt: skip
        return {
            "node": self.node,
            "counter": self.counter,
            "overrides": [self.entry(o) for _, o in sorted(self.records.items()) if o.active],
            "leaving": leaving,
        }

    def of_server(self, service: str, server: str) -> dict[str, Any] | None:
        o = self.records.get((service, server))
        return None if o is None or not o.active else self.entry(o)


__all__ = ["CommandError", "ConnReader", "OverrideManager", "Progress", "canonical_server"]
