"""Config reloads of a running daemon (SIGHUP, ``POST /v1/reload``): the ``Reloader``.

It owns what a reload needs besides the running config: whether reloads are accepted (between
start and stop), the one reload in flight, and how the file is parsed (by default in a child
process bounded in time and memory: ``hacontrol.reload_parse``; the event loop stays free, so
heartbeats, the API and stop never wait for a parse). A reload asked while one runs is answered
at once with ``result: busy`` (the API's 409). Stop (``close``) cancels the reload in flight,
which kills its child.

An invalid file (a config error, an unreadable token file, a check the health checker cannot
run) is refused and changes nothing: the old config keeps running. A valid one replaces the
``RunningConfig`` and is applied through the daemon's narrow ``ReloadTarget`` interface as a
diff: the services equal to running ones are kept as the running objects (``adopt``), the
health targets of the changed ones only are touched (unchanged ones keep their state), the
desired table is compared again (in slices), the HA pair member gets what may change live;
fields that need a restart keep their running values and are listed in ``needs_restart``. The
result is a JSON document for the API and the ``config.reload`` event (logger ``hacontrol.daemon``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any, NamedTuple, Protocol

from hacontrol import logs
from hacontrol.metrics import Metrics
from hacontrol.model import Config, ServiceConfig
from hacontrol.process import (
    StartError,
    keep_restart_only,
    live_ha_changes,
    read_token,
    restart_only_changes,
    sd_notify,
)
from hacontrol.reload_parse import Parse, Refused, parse_in_child
from hacontrol.running_config import RunningConfig

__all__ = ["ReloadTarget", "Reloader", "TargetCounts", "adopt"]

log = logs.get("hacontrol.daemon")

ADOPT_SLICE = 1000  # real servers compared between two yields, about


async def adopt(old: Config, new: Config) -> Config:
    """``new`` with each service equal to the running one of the same name replaced by the
    running object: the unchanged services stay the same objects (what the daemon's targets,
    memos and counts are keyed by), so applying the reload touches only what changed. Compares
    in slices with ``asyncio.sleep(0)`` between them (a big table is 36,544 real servers)."""
    running = {svc.name: svc for svc in old.services}
    out: list[ServiceConfig] = []
    work = 0
    for svc in new.services:
        prev = running.get(svc.name)
        if prev is not None and prev is not svc and prev == svc:
            svc = prev
            work += len(prev.real_servers)
        out.append(svc)
        work += 1
        if work >= ADOPT_SLICE:
            work = 0
            await asyncio.sleep(0)
    return dataclasses.replace(new, services=tuple(out))


class TargetCounts(NamedTuple):
    """Health targets after applying a config: added, removed, kept (state carried over)."""

    added: int
    removed: int
    kept: int


class ReloadTarget(Protocol):
    """What a reload changes in the daemon besides the running config."""

    async def apply_config(self, config: Config) -> TargetCounts:
        """Point the health checks and the reconciler at ``config`` (in slices that yield to
        the loop, committed at once). ValueError or TypeError: a check cannot run; nothing was
        changed."""

    async def apply_live(self, old: Config, new: Config, live_ha: list[str]) -> None:
        """Apply what else may change live (the HA pair member's ``live_ha`` fields and
        digest, the logging section, the host side); ``new`` is already the running config."""


class Reloader:
    """One reload at a time, of the file the running config came from."""

    def __init__(
        self,
        running: RunningConfig,
        target: ReloadTarget,
        metrics: Metrics,
        parse: Parse = parse_in_child,
    ) -> None:
        self._running = running
        self._target = target
        self._metrics = metrics
        self._parse = parse
        self._open = False
        self._task: asyncio.Task[dict[str, Any]] | None = None
        self._asked: str | None = None  # a SIGHUP during start: reloaded once open
        self._background: set[asyncio.Task[dict[str, Any]]] = set()

    @property
    def in_progress(self) -> bool:
        return self._task is not None

    def open(self) -> None:
        """Accept reloads (the daemon has started); run the one asked during start."""
        self._open = True
        asked, self._asked = self._asked, None
        if asked is not None:
            self.request(asked)

    def request(self, reason: str) -> None:
        """A reload in the background (SIGHUP); asked before ``open``, it runs at ``open``."""
        if not self._open:
            self._asked = reason
            return
        task = asyncio.get_running_loop().create_task(self.reload(reason))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        """Refuse reloads from now on; cancel the one in flight (its child is killed)."""
        self._open = False
        self._asked = None
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.wait({task})

    async def reload(self, reason: str) -> dict[str, Any]:
        """Load the file again and apply it; an invalid file changes nothing."""
        digest = self._running.digest
        if not self._open:
            return {"result": "error", "errors": ["the daemon is not running"], "digest": digest}
        if self._task is not None:
            log.warning(
                "config.reload",
                result="busy",
                reason=f"{reason}: a reload is already in progress; this one is not started",
            )
            return {"result": "busy", "errors": ["reload in progress"], "digest": digest}
        task = self._task = asyncio.get_running_loop().create_task(self._reload(reason))
        task.add_done_callback(self._finished)
        await asyncio.wait({task})  # a cancelled caller leaves the reload running
        if task.cancelled():
            log.warning("config.reload", result="error", reason=f"{reason}: the daemon stopped")
            return {"result": "error", "errors": ["the daemon is stopping"], "digest": digest}
        return task.result()

    def _finished(self, task: asyncio.Task[dict[str, Any]]) -> None:
        if self._task is task:
            self._task = None

    async def _reload(self, reason: str) -> dict[str, Any]:
        t0 = time.monotonic()
        old = self._running.config
        sd_notify("RELOADING=1")
        ready = True
        try:
            try:
                outcome = await self._parse(old.source)
            except asyncio.CancelledError:
                ready = False  # the daemon stops: STOPPING, not READY, is what systemd hears
                raise
            if isinstance(outcome, Refused):
                return self._refused(reason, outcome.errors, old)
            try:
                token = read_token(outcome.api.token_file)
            except StartError as exc:
                return self._refused(reason, [str(exc)], old)
            restart_only = restart_only_changes(old, outcome)
            live_ha = live_ha_changes(old, outcome)
            new = await adopt(old, keep_restart_only(old, outcome))
            try:
                counts = await self._target.apply_config(new)
            except (ValueError, TypeError) as exc:  # a check the health checker cannot run
                return self._refused(reason, [f"{old.source}: {exc}"], old)
            self._running.replace(new, token)
            await self._target.apply_live(old, new, live_ha)
            self._metrics.reloads.labels(result="ok").inc()
            result = {
                "result": "ok",
                "changed": new.digest != old.digest,
                "digest": new.digest,
                "services": len(new.services),
                "real_servers": sum(len(s.real_servers) for s in new.services),
                "targets_added": counts.added,
                "targets_removed": counts.removed,
                "targets_kept": counts.kept,
                "duration_ms": round((time.monotonic() - t0) * 1000, 2),
                "needs_restart": restart_only,
                "applied_live": live_ha,
            }
            log.info("config.reload", **result, old_digest=old.digest, reason=reason)
            return result
        finally:
            if ready:
                sd_notify("READY=1")

    def _refused(self, reason: str, errors: list[str], old: Config) -> dict[str, Any]:
        self._metrics.reloads.labels(result="error").inc()
        log.error(
            "config.reload",
            result="error",
            errors=errors,
            kept_digest=old.digest,
            reason=f"{reason}: invalid config refused, the running config is kept",
        )
        return {"result": "error", "errors": errors, "digest": old.digest}
