"""The HA runner's action worker: runs the role machine's actions one at a time, in order.

``worker`` takes the ``HaRunner``'s queue (the actions of ``hacontrol.ha.fsm`` plus the runner's
own lease renewals and drain ends) and executes each through the Protocols in
hacontrol.ha.interfaces: take/renew/release the VIPs, heartbeat now, announce, notify, a fresh
gateway probe. Before a take from a live peer that holds the VIPs it starts the connection
hand-off drain (``begin_drain``, hacontrol.ha.handoff). An I/O error is logged as
``ha.vip_error``, a bug as ``ha.action_error``; neither stops the worker. Like
hacontrol.ha.drills and hacontrol.ha.runner_status, these functions work on the runner's state.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from hacontrol import logs
from hacontrol.ha import fsm_types as ft
from hacontrol.ha import packet as pk
from hacontrol.ha.fsm_types import Role
from hacontrol.ha.interfaces import HaIoError

if TYPE_CHECKING:
    from hacontrol.ha.runner import HaRunner

log = logs.get("hacontrol.ha")


class _Renew:
    """Internal action: push the lease forward."""


class _EndDrain:
    """Internal action: end the connection hand-off drain (``hacontrol.ha.handoff``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


Renew, EndDrain = _Renew, _EndDrain  # public names; the logs' ``action=`` keeps the class names
Job = ft.Action | _Renew | _EndDrain  # what the runner's queue holds


async def begin_drain(r: HaRunner) -> None:
    """Before taking the VIPs from a live peer that holds them: hand its flows back to it."""
    h, now, msg = r.handoff, r.clock(), r._peer_last
    if h is None or msg is None or not r.fsm.peer_alive(now):
        return
    if not msg.flags & pk.FLAG_VIPS_HELD:
        return
    try:
        await h.begin(now, f"taking the VIP group from {msg.node}, which holds its flows")
    except HaIoError as e:
        log.error("ha.handoff_error", op="begin", reason=str(e))


async def worker(r: HaRunner) -> None:
    """The runner's one action task: forever, the next queued action."""
    while True:
        act = await r._queue.get()
        try:
            await execute(r, act)
        except HaIoError as e:
            log.error("ha.vip_error", action=type(act).__name__, reason=str(e))
        except Exception as e:  # a bug: keep the daemon running, loudly
            log.exception("ha.action_error", action=type(act).__name__, reason=repr(e))
        finally:
            if isinstance(act, ft.TakeVips):
                r._taking = False
            if r._queue.empty():
                r._idle.set()


async def execute(r: HaRunner, act: Job) -> None:
    """One action (a stale take, renewal or announce is skipped)."""
    if isinstance(act, ft.TakeVips):
        if r.fsm.role is not Role.ACTIVE:
            return  # superseded: the machine moved on before this ran
        r._taking = True
        await begin_drain(r)
        await r.vips.take(r.cfg.lease)
        r._held, r._last_renew = True, r.clock()
        r._marks.setdefault("vip_added", r._last_renew)
    elif isinstance(act, _Renew):
        if r._held and r.fsm.role in (Role.ACTIVE, Role.STOPPING):
            await r.vips.renew(r.cfg.lease)
    elif isinstance(act, ft.ReleaseVips):
        if r._announce_task is not None:
            r._announce_task.cancel()
        r._held = False
        await r.vips.release()
        r._marks["released"] = r.clock()
        if r.handoff is not None and r.handoff.draining:
            r._queue.put_nowait(_EndDrain("released the VIP group"))
    elif isinstance(act, _EndDrain):
        r._drain_ending = False
        if r.handoff is not None:
            await r.handoff.end(act.reason)
    elif isinstance(act, ft.SendHeartbeatNow):
        r._send_heartbeat(r.clock())
    elif isinstance(act, ft.Announce):
        if r._held and (r._announce_task is None or r._announce_task.done()):
            r._announce_task = spawn(r, announce(r))
            await asyncio.sleep(0)  # its first round goes out before the next heartbeat
    elif isinstance(act, ft.Notify):
        spawn(r, r.notifier.notify(act.role, act.reason))
    elif isinstance(act, ft.ProbeGateway) and (not r._probe_task or r._probe_task.done()):
        r._probe_task = spawn(r, probe_gateway(r))


async def probe_gateway(r: HaRunner) -> None:
    """One fresh gateway probe for the machine (a takeover waits for its answer)."""
    gw, why = r.cfg.track.gateway, ""
    try:
        assert r.tracker is not None
        ok = await r.tracker.probe_gateway()
    except Exception as e:  # the machine retries; its own timeout covers a hang
        ok, why = False, f"gateway {gw} probe failed: {e}"
    if not ok:
        why = why or f"gateway {gw} did not answer a fresh probe"
    r._feed(ft.GatewayChecked(r.clock(), ok, why))


async def announce(r: HaRunner) -> None:
    """One announce burst for the held VIPs (counted for the takeover timeline)."""
    r._marks.setdefault("announced", r.clock())
    try:
        r._announce_count += await r.vips.announce()
    except HaIoError as e:
        log.error("ha.announce_error", reason=str(e))


def spawn(r: HaRunner, coro: Any) -> asyncio.Task[None]:
    """A side task (announce burst, notify run, gateway probe) that ``stop`` awaits."""
    task: asyncio.Task[None] = asyncio.create_task(coro)
    r._side.add(task)
    task.add_done_callback(r._side.discard)
    return task
