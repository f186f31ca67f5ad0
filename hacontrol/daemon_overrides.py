"""The daemon's overrides side: the ``OverrideManager`` wired to the reconciler, the plane and
the config, its watcher task, the status and /metrics entries, and the reload preview.

``OverrideSide`` is built by ``hacontrol.daemon.Daemon``; it reads the daemon only through the
callables it is given (the config in use, the reconciler, the plane, the health of a real
server, how a reload parses a file). What an override does lives in hacontrol.overrides.
With an HA pair of the own protocol, ``replicate`` connects the manager to the peer
(hacontrol.overrides.replicate); its state is in the status (``overrides.replication``) and
in /metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import Callable
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from hacontrol import logs
from hacontrol.dataplane.base import Dataplane
from hacontrol.dataplane.desired import HealthOf
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import Table
from hacontrol.ha.runner import HaRunner
from hacontrol.model import Config
from hacontrol.overrides.conns import conn_reader
from hacontrol.overrides.core import Action
from hacontrol.overrides.desired import OverrideDesired
from hacontrol.overrides.manager import OverrideManager
from hacontrol.overrides.plan import reload_plan
from hacontrol.overrides.replicate import Replicator
from hacontrol.overrides.store import OverrideStore, record_doc
from hacontrol.reload_parse import Parse, Refused
from hacontrol.tasks import cancel_and_wait

log = logs.get("hacontrol.overrides")

STATES = ("draining", "drained", "disabled", "weight")
MAX_DIFF_BYTES = 16 << 20


class OverrideSide:
    def __init__(
        self,
        config: Callable[[], Config],
        reconciler: Callable[[], Reconciler | None],
        plane: Callable[[], Dataplane | None],
        health: HealthOf,
        parse: Parse,
    ) -> None:
        self._config = config
        self._reconciler = reconciler
        self._health = health
        self._parse = parse
        self.manager = OverrideManager(
            config().node_name,
            config,
            store=None,
            mark_dirty=self._mark_dirty,
            kernel=self._kernel,
            conns=conn_reader(plane),
        )
        self._task: asyncio.Task[None] | None = None
        self.replicator: Replicator | None = None

    def _mark_dirty(self, keys: Any) -> None:
        rec = self._reconciler()
        if rec is not None:
            rec.mark_dirty(keys)

    def _kernel(self) -> Table | None:
        """The kernel as the reconciler last knew it; None while unknown (before the first
        pass, after an error)."""
        rec = self._reconciler()
        if rec is None:
            return None
        st = rec.status()
        return rec.kernel if st.passes > 0 and st.ok else None

    def desired(self, config: Config) -> OverrideDesired:
        m = self.manager
        return OverrideDesired(config.services, self._health, m.effect, m.leaving_now)

    def start(self, state_dir: str | None) -> None:
        """Load the file (``state_dir`` None: a dry run keeps nothing) and start the watcher."""
        if state_dir is not None:
            self.manager.load(OverrideStore(state_dir))
        if self._task is None:
            self._task = asyncio.create_task(self.manager.run(), name="hacontrol-drain-watcher")

    def replicate(self, ha: object) -> None:
        """Send and take overrides over ``ha`` when it is (or wraps, ``inner``) an HaRunner of
        the own protocol; nothing for VRRP or without HA. Once per daemon."""
        runner = getattr(ha, "inner", ha)
        if not isinstance(runner, HaRunner) or self.replicator is not None:
            return
        rep = Replicator(self.manager, runner.send_overrides, node=runner.node, clock=runner.clock)
        runner.on_overrides = rep.received
        self.manager.on_change = rep.changed
        self.replicator = rep
        rep.start()

    async def stop(self) -> None:
        if self.replicator is not None:
            await self.replicator.stop()
        task, self._task = self._task, None
        await cancel_and_wait(task)

    # -- commands and views -----------------------------------------------------------------

    def command(
        self,
        action: Action,
        service: str,
        server: str | None,
        weight: int | None = None,
        deadline: float | None = None,
    ) -> dict[str, Any]:
        made = self.manager.command(action, service, server, weight=weight, deadline=deadline)
        return {"result": "ok", "set": [record_doc(o) for o in made]}

    def status(self) -> dict[str, Any]:
        doc = self.manager.status()
        rep = self.replicator
        doc["replication"] = rep.status() if rep is not None else None
        return doc

    def annotate(self, doc: dict[str, Any]) -> None:
        """Put each real server's override beside its configured values in a status doc."""
        for svc in doc.get("services", []):
            for rs in svc.get("real_servers", []):
                server = f"[{rs['address']}]:{rs['port']}" if ":" in rs["address"] else (
                    f"{rs['address']}:{rs['port']}")  # fmt: skip
                rs["override"] = self.manager.of_server(svc["name"], server)
        doc["overrides"] = self.status()

    def families(self) -> list[Metric]:
        state = GaugeMetricFamily(
            "hacontrol_override_state",
            "1 for the override state of a real server (draining, drained, disabled, weight)",
            labels=["service", "real_server", "state"],
        )
        conns = GaugeMetricFamily(
            "hacontrol_override_connections",
            "Connections a draining real server still has (absent: unknown)",
            labels=["service", "real_server"],
        )
        doc = self.manager.status()
        for o in doc["overrides"]:
            lab = [o["service"], o["real_server"]]
            for s in STATES:
                state.add_metric([*lab, s], 1.0 if o["state"] == s else 0.0)
            left = (o.get("drain") or {}).get("connections")
            if left is not None:
                conns.add_metric(lab, float(left))
        for lv in doc["leaving"]:
            lab = [lv["service"], lv["real_server"]]
            state.add_metric([*lab, "leaving"], 1.0)
            if lv["connections"] is not None:
                conns.add_metric(lab, float(lv["connections"]))
        extra = self.replicator.families() if self.replicator is not None else []
        return [state, conns, *extra]

    async def diff(self, text: str) -> dict[str, Any]:
        """What a reload to the config ``text`` would change now; ValueError (with the
        errors) when the text is refused. Parsed in the reload child, like a reload."""
        if len(text.encode()) > MAX_DIFF_BYTES:
            raise ValueError(f"config text over {MAX_DIFF_BYTES} bytes")
        fd, path = tempfile.mkstemp(prefix="hacontrol-diff.", suffix=".yaml")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            outcome = await self._parse(path)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(path)
        if isinstance(outcome, Refused):
            raise DiffRefused(outcome.errors)
        rec = self._reconciler()
        kernel = rec.kernel if rec is not None else {}
        owned = rec.owned if rec is not None else frozenset()
        m = self.manager
        return reload_plan(
            self._config(), outcome, kernel, owned, self._health, m.effect, m.leaving_now()
        )


class DiffRefused(ValueError):
    def __init__(self, errors: list[str]) -> None:
        super().__init__("config refused")
        self.errors = errors
