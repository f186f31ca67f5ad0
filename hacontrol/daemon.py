"""The composition root: one ``Daemon`` wires config, health checks, data plane, reconciler, API.

It owns the process lifecycle: start (open the data plane, start the reconciler, the health
checker and the API), signals (SIGTERM/SIGINT stop cleanly, SIGHUP reloads) and stop (leave the
kernel table in place when ``dataplane.keep_on_stop``, else remove the owned services). Health
changes recompute the desired table. Logic lives in the parts it wires, not here. Which check
target stands for which real servers, and their verdicts: ``HealthTargets`` (daemon_targets).

With an ``ha:`` section it also runs the HA pair member (``hacontrol.daemon_ha``), started last:
the kernel table is programmed on both directors, only the VIPs move; a stop hands over first;
the role ("standalone" without ``ha:``) and drills are the runner's. See also hacontrol.systemd.

One owner each: the config in use, its token and load time belong to a ``RunningConfig``
(hacontrol.running_config); reloads to a ``Reloader`` (hacontrol.reload), which changes the
daemon only through ``apply_config`` / ``apply_live``; the status reads it through
``hacontrol.daemon_status.DaemonView``. One clock: the event loop's (``loop_clock``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import sys
import time
from typing import Any, TextIO, cast

from aiohttp import web

from hacontrol import __version__, caps, logs, systemd
from hacontrol.api.app import ApiServer, create_app
from hacontrol.clock import Clock, loop_clock
from hacontrol.daemon_ha import (
    DrillUnavailable,
    apply_ha_live,
    build_ha,
    ha_start_error,
    run_drill,
    start_sync,
    stop_ha,
)
from hacontrol.daemon_host import HostSide
from hacontrol.daemon_overrides import OverrideSide
from hacontrol.daemon_status import PlaneCounters, daemon_status, metrics_text, status_json
from hacontrol.daemon_targets import HealthTargets
from hacontrol.dataplane.base import Dataplane, DataplaneError
from hacontrol.dataplane.ipvs_sync import SyncDaemons
from hacontrol.dataplane.owned import OwnedStore
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.select import PlaneChoice, open_plane
from hacontrol.ha.runner import DrillError
from hacontrol.ha.vip import VipGroup
from hacontrol.health.scheduler import CheckKey, HealthChecker
from hacontrol.health.state import Health, TargetStatus
from hacontrol.heap import Settler
from hacontrol.looplag import LoopLag
from hacontrol.metrics import Metrics, render_families
from hacontrol.model import Config, RealServer, ServiceConfig
from hacontrol.overrides.core import ACTIONS, Action
from hacontrol.process import HaComponent, StartError, choose_loop, local_listener, sd_notify
from hacontrol.reload import Reloader, TargetCounts
from hacontrol.reload_parse import ChildParser, Parse
from hacontrol.running_config import RunningConfig

__all__ = ["Daemon", "DrillError", "DrillUnavailable", "StartError", "run_daemon"]

log = logs.get("hacontrol.daemon")


class Daemon:
    """One director daemon. ``run()`` until SIGTERM/SIGINT or ``request_stop``."""

    def __init__(
        self, config: Config, *, dry_run: bool = False, clock: Clock | None = None,
        dataplane: Dataplane | None = None, parse: Parse | None = None, out: TextIO | None = None,
        serve_api: bool = True, ha: HaComponent | None = None,
    ) -> None:  # fmt: skip
        """``clock``: the running event loop's by default; ``parse``: how a reload reads the
        file (by default a bounded child process: ``reload_parse.ChildParser``)."""
        parse = parse if parse is not None else ChildParser()
        self.dry_run = dry_run
        self.clock = clock = clock if clock is not None else loop_clock()
        self.running = RunningConfig(config, clock)
        self.out = out or sys.stdout
        self.serve_api = serve_api
        self.metrics = Metrics()
        self.counters = PlaneCounters(self)  # connections and traffic, read when the API asks
        self.health = HealthChecker(clock, self._on_health_change, self.metrics, log_changes=False)
        self.targets = HealthTargets(self.health)  # config <-> check targets, their verdicts
        self._dataplane_override = dataplane
        self.dataplane: Dataplane | None = None
        self.reconciler: Reconciler | None = None
        self.api: ApiServer | None = None
        # the HA pair member: built from config.ha at start (tests pass a fake); None = standalone
        self.ha: HaComponent | None = ha
        self._ha_given = ha is not None
        self._vips: VipGroup | None = None  # closed after the runner stops
        self._sync: SyncDaemons | None = None  # IPVS connection sync daemons (ha.sync)
        self.host = HostSide(config, dry_run=dry_run)  # plane choice, sysctls, SNAT
        self.extra_routes: list[web.RouteDef] = []  # more routes (each described in openapi.yaml)
        self.heap: Settler | None = None  # set by run(): the real process freezes its heap
        self._stop_event: asyncio.Event | None = None
        self._stop_reason = "stop requested"
        self.reloads = Reloader(self.running, self, self.metrics, parse)
        # runtime drain / disable / weight of real servers (hacontrol.overrides)
        self.overrides = OverrideSide(
            lambda: self.config, lambda: self.reconciler, lambda: self.dataplane,
            self.targets.health_of, parse,
        )  # fmt: skip
        self._applied: Config | None = None  # the config apply_config last pointed things at
        self._running = False
        self.configure_logging = False  # run_daemon: a reload applies a new logging section
        self.loop_reason = "set by run_daemon"  # which event loop runs and why (daemon.start)
        self.systemd = systemd.SystemdLink.from_env(self)  # inert outside systemd

    @property
    def config(self) -> Config:
        """The config in use (owned by ``running``; a reload replaces it)."""
        return self.running.config

    async def apply_config(self, config: Config) -> TargetCounts:
        """Point health, reconciler, overrides at ``config`` (in slices, committed at once; only
        the services that changed); ValueError or TypeError: a check cannot run, nothing changed."""
        done, old = await self.targets.set_config(config), self._applied
        if self.reconciler is not None:  # a reload compares only the services that changed
            changed = done.keys() if old is not None else None
            self.reconciler.set_desired(self.overrides.desired(config), changed)
        self.overrides.manager.config_changed(  # dropped servers drain
            None if old is None else dataclasses.replace(old, services=done.gone),
            dataclasses.replace(config, services=done.came),
        )
        self._applied = config
        return done.counts

    async def apply_live(self, old: Config, new: Config, live_ha: list[str]) -> None:
        """After a reload: the HA pair member's live fields and digest, the logging section,
        the host side (sysctl needs, the SNAT table)."""
        apply_ha_live(self.ha, old, new, live_ha)
        await self.host.reconfigure(new)
        if new.logging != old.logging and self.configure_logging:
            logs.configure(new.logging.level, new.logging.format)

    def _on_health_change(self, key: CheckKey, new: Health, st: TargetStatus) -> None:
        dirty = self.targets.changed(key, new, st)  # logs health.change
        if self.reconciler is not None:  # only the services of this real server are compared
            self.reconciler.mark_dirty(dirty)

    async def _open_dataplane(self) -> tuple[Dataplane, PlaneChoice]:
        if self._dataplane_override is not None:
            await self._dataplane_override.open()
            dp = self._dataplane_override
            return dp, PlaneChoice(dp.kind, f"{dp.kind}: given by the caller")
        out = self.out
        echo = lambda line: print(line, file=out, flush=True)  # noqa: E731
        return await open_plane(self.config.dataplane, self.dry_run, echo=echo)

    async def start(self, reason: str = "start") -> None:
        cfg = self.config
        if self._stop_event is None:
            self._stop_event = asyncio.Event()
        self.running.start()  # reads the token: a bad token file fails before anything runs
        try:
            dp, choice = await self._open_dataplane()  # opened, nothing applied yet
        except DataplaneError as exc:
            raise StartError(f"dataplane {cfg.dataplane.kind}: {exc}") from None
        self.dataplane = dp
        if not self._ha_given:
            try:  # a bad key fails here, before the kernel table is touched
                self.ha, self._vips = build_ha(
                    cfg,
                    plane=choice.kind,
                    dry_run=self.dry_run,
                    clock=self.clock,
                    metrics=self.metrics,
                    health_summary=self.health_summary,
                    follow_vips=self.host.follow,
                )
            except StartError:
                await dp.close()
                raise
        self.reconciler = Reconciler(
            dp,
            clock=self.clock,
            resync_interval=cfg.dataplane.resync_interval,
            owned_store=OwnedStore(cfg.dataplane.state_dir) if not self.dry_run else None,
            metrics=self.metrics,
            heap=self.heap,
        )
        self.overrides.start(None if self.dry_run else cfg.dataplane.state_dir)
        await self.apply_config(cfg)
        if self.heap is not None:  # the config and its targets live on: out of the GC's walks
            self.heap.settle("the config loaded", now=True)
        await self.reconciler.start()
        await self.host.start(choice, cfg.dataplane.resync_interval)
        self._sync = await start_sync(cfg, dp, self.clock)  # before HA: the VIPs may move
        await self.health.start()
        if self.serve_api:
            self.api = ApiServer.of(create_app(self, self.extra_routes), cfg.api)
            try:
                await self.api.start()
            except OSError as exc:
                why = f"api.listen {cfg.api.listen}: {exc.strerror or exc}"
                if not self.dry_run:
                    await self._teardown(keep=True)
                    raise StartError(why) from None
                # a dry run next to the real daemon: preview without an API rather than fail
                log.warning("api.disabled", reason=f"{why} (dry run goes on without an API)")
                self.api = None
        self.overrides.replicate(self.ha)  # overrides to the peer over the heartbeat socket
        if self.ha is not None:  # last: the table is programmed on both nodes, the VIPs move
            try:
                await self.ha.start()
            except (OSError, ValueError) as exc:
                await self._teardown(keep=True)
                raise StartError(ha_start_error(cfg, exc)) from None
        self._running = True
        self.reloads.open()  # a SIGHUP that came during start reloads now
        n_rs = sum(len(s.real_servers) for s in cfg.services)
        log.info(
            "daemon.start",
            node=cfg.node_name,
            version=__version__,
            config=cfg.source,
            digest=cfg.digest,
            services=len(cfg.services),
            real_servers=n_rs,
            targets=len(self.targets),
            dataplane=dp.kind,
            api=self.api.bound if self.api else None,
            dry_run=self.dry_run,
            loop=self.loop_reason,
            reason=reason,
        )
        self._warn_open_api()
        self.systemd.ready()  # READY=1 and STATUS=, then the watchdog and STATUS= tasks

    def _warn_open_api(self) -> None:
        api = self.api
        if self.running.token is None and api is not None and not local_listener(api.bound):
            log.warning(
                "api.open",
                listen=api.bound,
                reason="no api.token_file on a non-loopback listener: mutating calls are refused",
            )

    async def _teardown(self, keep: bool) -> None:
        """Stop everything; ``keep``: leave the kernel table, else remove the owned services.
        HA goes first: the peer takes the VIPs while this node still forwards."""
        await stop_ha(self.ha, self._vips, graceful=True)
        if self.api is not None:
            await self.api.stop()
        await self.health.stop()
        await self.overrides.stop()
        if self.reconciler is not None:
            await self.reconciler.stop()
            if not keep:
                self.reconciler.set_desired(lambda actual: {})
                result = await self.reconciler.sync_now("stop")
                if not result.ok:
                    log.error("daemon.cleanup", result="error", reason=result.error)
        await self.host.close()  # after HA: the SNAT table left with the VIPs
        if self._sync is not None:  # left running when keep (like the table)
            await self._sync.close(keep)
            self._sync = None
        if self.dataplane is not None:
            try:
                await self.dataplane.close()
            except Exception as exc:
                log.warning("daemon.cleanup", result="error", reason=f"dataplane close: {exc}")

    async def stop(self, reason: str = "stop requested") -> None:
        if not self._running:
            return
        self._running = False
        t0 = time.monotonic()
        sd_notify("STOPPING=1")
        await self.reloads.close()  # a reload in flight is abandoned (its parser killed)
        keep = self.config.dataplane.keep_on_stop
        await self._teardown(keep=keep)
        await self.systemd.stop()  # the watchdog pinged until here (a slow hand-over included)
        log.info(
            "daemon.stop",
            reason=reason,
            kernel_table="kept" if keep else "removed",
            duration_ms=round((time.monotonic() - t0) * 1000, 1),
        )

    def request_stop(self, reason: str) -> None:
        self._stop_reason = reason
        if self._stop_event is not None:
            self._stop_event.set()

    async def run(self) -> None:
        """Start, serve until a stop is requested (SIGTERM/SIGINT), stop. Signal handlers go in
        first: a SIGTERM during start stops right after it, a SIGHUP reloads once started."""
        loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        installed = []
        for sig, handler in (
            (signal.SIGTERM, lambda: self.request_stop("SIGTERM")),
            (signal.SIGINT, lambda: self.request_stop("SIGINT")),
            (signal.SIGHUP, lambda: self.reloads.request("SIGHUP")),
        ):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, handler)
                installed.append(sig)
        self.heap = Settler()
        lag = LoopLag(self.metrics.loop_lag_max, self.metrics.loop_lag)
        lag.start()  # before the first load: its stalls count
        try:
            await self.start()
            await self._stop_event.wait()
            await self.stop(self._stop_reason)
        finally:
            lag.stop()
            for sig in installed:
                loop.remove_signal_handler(sig)
            await self.reloads.close()

    async def reload(self, reason: str) -> dict[str, Any]:  # see hacontrol.reload
        return await self.reloads.reload(reason)

    def token(self) -> str | None:
        return self.running.token

    def dataplane_kind(self) -> str:
        return self.dataplane.kind if self.dataplane is not None else "-"

    def target_status(self, svc: ServiceConfig, rs: RealServer) -> TargetStatus | None:
        return self.targets.status_of(svc, rs)

    async def metrics_text(self) -> list[bytes]:  # in slices, pieces (daemon_status)
        tail, head = render_families(self.overrides.families()), self._head()
        return await metrics_text(self, head, self.metrics, self.dataplane_kind(), tail)

    async def status_json(self, service: str | None = None) -> list[bytes] | None:  # the same
        return await status_json(self, self._head(), self.overrides.annotate, service)

    def override_status(self) -> dict[str, Any]:
        return self.overrides.status()

    def override_command(
        self, action: str, service: str, server: str | None, weight: int | None,
        deadline: float | None,
    ) -> dict[str, Any]:  # fmt: skip
        """An operator's override (the API); ValueError when it names nothing."""
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        return self.overrides.command(cast(Action, action), service, server, weight, deadline)

    async def override_diff(self, text: str) -> dict[str, Any]:
        """What a reload to the config ``text`` would change (hacontrol.overrides.plan)."""
        return await self.overrides.diff(text)

    def health_summary(self) -> list[tuple[str, int, int]]:
        """(service, real servers up, real servers) for every service: what HA advertises."""
        return self.targets.summary()

    def role(self) -> str:
        return str(self.ha.role) if self.ha is not None else "standalone"

    async def drill(self, kind: str, seconds: float | None = None) -> dict[str, Any]:
        """An HA drill, "handover" or "fault" (``seconds``): ``daemon_ha.run_drill``."""
        return await run_drill(self.ha, self.config, self._running, kind, seconds)

    def status(self) -> dict[str, Any]:
        """The status document in one go (the API serves it in slices: ``status_json``)."""
        return self._finish(daemon_status(self))

    def _head(self) -> dict[str, Any]:
        return self._finish(daemon_status(self, head_only=True))

    def _finish(self, doc: dict[str, Any]) -> dict[str, Any]:
        doc["dataplane"]["sync"] = self._sync.status(self.clock()) if self._sync else None
        doc["host"] = self.host.status()
        self.overrides.annotate(doc)
        return doc


def run_daemon(config: Config, *, dry_run: bool = False, out: TextIO | None = None) -> int:
    """Run a daemon to completion (see ``choose_loop``); the process exit code."""
    if caps.refused(config, config.dataplane.kind, dry_run):  # logged as daemon.start
        return 1
    loop_factory, loop_reason = choose_loop(config, dry_run)

    async def main() -> int:
        daemon = Daemon(config, dry_run=dry_run, out=out, clock=loop_clock())
        daemon.loop_reason = loop_reason
        daemon.configure_logging = True
        try:
            await daemon.run()
        except StartError as exc:
            log.error("daemon.start", result="error", reason=str(exc))
            return 1
        return 0

    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main())
