"""A config reload of a running ``hacontrol.daemon.Daemon`` (SIGHUP, ``POST /reload``).

It loads the file again off the event loop, one reload at a time. An invalid file (a config
error, an unreadable token file, a check the health checker cannot run) is refused and changes
nothing: the old config keeps running. A valid one is applied as a diff: unchanged health
targets keep their state, the desired table is rebuilt, the HA pair member gets what may change
live (``hacontrol.daemon_ha.apply_ha_live``); fields that need a restart keep their running
values and are listed in ``needs_restart``. The result is a JSON document for the API and the
``config.reload`` event (logger ``hacontrol.daemon``).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.config import ConfigError
from hacontrol.daemon_ha import apply_ha_live
from hacontrol.model import Config
from hacontrol.process import (
    StartError,
    keep_restart_only,
    live_ha_changes,
    read_token,
    restart_only_changes,
    sd_notify,
)

if TYPE_CHECKING:
    from hacontrol.daemon import Daemon

__all__ = ["reload_daemon"]

log = logs.get("hacontrol.daemon")


async def reload_daemon(d: Daemon, reason: str) -> dict[str, Any]:
    """Load ``d``'s config file again and apply it; an invalid file changes nothing."""
    if d._reload_lock is None or not d._running:
        return {
            "result": "error",
            "errors": ["the daemon is not running"],
            "digest": d.config.digest,
        }
    async with d._reload_lock:
        if not d._running:  # stopped while waiting for the lock
            return {
                "result": "error",
                "errors": ["the daemon is stopping"],
                "digest": d.config.digest,
            }
        return await _reload(d, reason)


async def _reload(d: Daemon, reason: str) -> dict[str, Any]:
    t0 = time.monotonic()
    old = d.config
    sd_notify("RELOADING=1")
    try:
        try:
            new = await asyncio.to_thread(d.loader, old.source)  # big files: off the loop
            token = read_token(new.api.token_file)
        except ConfigError as exc:
            return _refused(d, reason, str(exc).splitlines(), old)
        except StartError as exc:
            return _refused(d, reason, [str(exc)], old)
        except OSError as exc:
            return _refused(d, reason, [f"{old.source}: {exc.strerror or exc}"], old)
        restart_only = restart_only_changes(old, new)
        live_ha = live_ha_changes(old, new)
        new = keep_restart_only(old, new)
        changed = new.digest != old.digest
        try:
            added, removed, kept = d._apply_config(new)
        except (ValueError, TypeError) as exc:  # a check the health checker cannot run
            return _refused(d, reason, [f"{old.source}: {exc}"], old)
        d.config = new
        d._token = token
        apply_ha_live(d.ha, old, new, live_ha)
        d._config_loaded_at = d.clock()
        if new.logging != old.logging and d.configure_logging:
            logs.configure(new.logging.level, new.logging.format)
        d.metrics.reloads.labels(result="ok").inc()
        result = {
            "result": "ok",
            "changed": changed,
            "digest": new.digest,
            "services": len(new.services),
            "real_servers": sum(len(s.real_servers) for s in new.services),
            "targets_added": added,
            "targets_removed": removed,
            "targets_kept": kept,
            "duration_ms": round((time.monotonic() - t0) * 1000, 2),
            "needs_restart": restart_only,
            "applied_live": live_ha,
        }
        log.info("config.reload", **result, old_digest=old.digest, reason=reason)
        return result
    finally:
        sd_notify("READY=1")


def _refused(d: Daemon, reason: str, errors: list[str], old: Config) -> dict[str, Any]:
    d.metrics.reloads.labels(result="error").inc()
    log.error(
        "config.reload",
        result="error",
        errors=errors,
        kept_digest=old.digest,
        reason=f"{reason}: invalid config refused, the running config is kept",
    )
    return {"result": "error", "errors": errors, "digest": old.digest}
