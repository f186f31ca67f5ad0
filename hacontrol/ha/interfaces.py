"""The seams between the HA runner and the parts that touch the host: VIPs, trackers, notify.

``hacontrol.ha.runner.HaRunner`` drives these Protocols; ``hacontrol.ha.vip`` (addresses with a
lease + gratuitous ARP / unsolicited NA via ``hacontrol.ha.announce``), ``hacontrol.ha.track``
(tracked interfaces, gateway) and ``hacontrol.ha.notify`` (the notify command) implement them.
Tests use in-memory fakes. Nothing here does I/O.

Rules every implementation keeps:
- every method is idempotent (take twice = take once; release when nothing is held = no-op);
- errors are raised as ``HaIoError`` (the runner logs them, retries on its next tick and never
  dies of them); anything else is a bug;
- no method blocks the event loop; long work (an announce burst) is awaited, never slept on.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class HaIoError(Exception):
    """A host operation failed (netlink error, raw socket error, missing interface...)."""


class VipManager(Protocol):
    """The VIP group (``HAConfig.vips``): every address moves together."""

    async def take(self, lease: float | None) -> None:
        """Add every VIP to its interface. ``lease`` seconds become the address' kernel
        ``valid_lft``/``preferred_lft`` (``None`` = forever). An address already present gets its
        lifetime set to ``lease`` (this is how a VIP found at start is adopted). While the group
        is held, the implementation repeats one announce round every ``announce.refresh``
        seconds (the runner itself only asks for the burst after a takeover or split brain)."""

    async def renew(self, lease: float | None) -> None:
        """Push the lifetime of every held VIP to ``lease`` seconds from now (no-op for None).
        Re-adds a VIP that has vanished (e.g. its lease ran out during a stall)."""

    async def release(self) -> None:
        """Remove every VIP this group configures from its interface (present or not)."""

    async def present(self) -> bool:
        """True if any VIP of the group is currently configured on its interface."""

    async def announce(self) -> int:
        """One burst for every VIP: ``announce.count`` gratuitous ARP requests (IPv4: sender =
        target = VIP, from the interface's MAC) or unsolicited NAs (IPv6, override flag), spaced
        by ``announce.interval``. Returns the number of packets sent. Cancellable: the runner
        cancels a burst when it releases the VIPs."""

    def describe(self) -> list[dict[str, object]]:
        """For status: one dict per VIP with at least ``address`` (str, CIDR), ``interface``,
        ``present`` (bool, last known) and ``lease_left`` (float seconds or None). Cheap, no I/O
        (may return the last observed values)."""


@dataclass(frozen=True)
class TrackEvent:
    """A tracked item changed (or its first state is known).

    ``name`` is stable and unique per item, e.g. ``interface:eth0`` or ``gateway:192.0.2.1``.
    ``failed`` True lowers this node's effective priority by ``TrackConfig.priority_penalty``.
    ``blocking`` True (expected for a tracked interface down and for a lost gateway) also stops
    this node from taking the VIPs while the item is failed (the HA role becomes FAULT).
    ``reason`` is a short human sentence: "eth0 link down", "gateway 192.0.2.1: 3 probes lost".
    """

    name: str
    failed: bool
    blocking: bool
    reason: str


class Tracker(Protocol):
    """Watches local conditions (tracked interfaces, the gateway) and reports changes."""

    async def run(self, emit: Callable[[TrackEvent], None]) -> None:
        """Watch until cancelled. Call ``emit`` once per item with its initial state as soon as it
        is known, then on every change. ``emit`` is synchronous and cheap; call it from the event
        loop thread. The runner logs each event (``ha.track``); the tracker does not."""

    async def probe_gateway(self) -> bool:
        """One fresh probe of the tracked gateway, sent now, bounded by the gateway probe
        timeout: True if it answered. Separate from (and not counted by) the periodic check.
        The runner asks for it before taking over from a silent peer. Raises ``HaIoError``
        when no gateway is tracked."""


class Notifier(Protocol):
    """Runs the configured notify command (argv list, no shell, a timeout, exit status logged)."""

    async def notify(self, role: str, reason: str) -> None:
        """``role`` is the new role's lower-case name (starting, backup, active, fault, stopping).
        Never raises: a failing or hanging command is logged and given up after its timeout."""
