"""A simulated HA pair for unit tests: two real ``HaRunner``s on one virtual-time event loop.

Everything the runners touch is in memory: ``Wire`` is the heartbeat segment (the runners' real
``HaTransport``s, encoding, MAC and replay checks included, attached to in-memory datagram
endpoints), ``FakeVips`` / ``FakeNotifier`` / ``FakeTracker`` the host. ``simulate`` runs a test
on a ``PausableLoop``: a ``hacontrol.clock.VirtualTimeLoop`` (time jumps to the next timer, so
no test really sleeps) on which one node can be frozen alone, like a SIGSTOPped or paused VM:
none of its callbacks run until it thaws, then they all run, in order, on a clock that moved.
Freezing the whole loop (both nodes) is ``loop.advance(seconds)`` from inside a coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import functools
import ipaddress
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, TypeVarTuple

from hacontrol.clock import VirtualTimeLoop
from hacontrol.ha.interfaces import HaIoError, TrackEvent
from hacontrol.ha.runner import HaRunner
from hacontrol.ha.transport import HaTransport
from hacontrol.metrics import Metrics
from hacontrol.model import Endpoint, HAConfig, host_port

T = TypeVar("T")
P = ParamSpec("P")
Ts = TypeVarTuple("Ts")
KEY = b"runner test key, 32 bytes long.."
INTERVAL = 0.05
NODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("ha_sim_node", default=None)

# -- the loop -----------------------------------------------------------------------------------


class PausableLoop(VirtualTimeLoop):
    """A virtual-time loop on which the callbacks of one node (the tasks and timers started in
    a context where ``NODE`` names it) can be held back for a while (``freeze``)."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen: dict[str, float] = {}  # node -> until
        self.held: dict[str, list[tuple[Callable[..., object], tuple[Any, ...], Any]]] = {}

    def freeze(self, node: str, seconds: float) -> None:
        """From now on, for ``seconds``, nothing of ``node`` runs."""
        until = self.time() + seconds
        self.frozen[node] = until
        self.held.setdefault(node, [])
        super().call_at(until, self._thaw, node, context=contextvars.Context())

    def _thaw(self, node: str) -> None:
        del self.frozen[node]
        for cb, args, ctx in self.held.pop(node):
            super().call_soon(cb, *args, context=ctx)

    def _gate(self, cb: Callable[..., object], args: tuple[Any, ...], ctx: Any) -> None:
        node = NODE.get()
        if node is not None and node in self.frozen:
            self.held[node].append((cb, args, ctx))
        else:
            cb(*args)

    def call_soon(
        self,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.Handle:
        ctx = context if context is not None else contextvars.copy_context()
        return super().call_soon(self._gate, callback, args, ctx, context=ctx)

    def call_at(
        self,
        when: float,
        callback: Callable[[*Ts], object],
        *args: *Ts,
        context: contextvars.Context | None = None,
    ) -> asyncio.TimerHandle:
        ctx = context if context is not None else contextvars.copy_context()
        return super().call_at(when, self._gate, callback, args, ctx, context=ctx)


def simulate(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh ``PausableLoop``; close it afterwards."""
    loop = PausableLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def sim(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
    """An async test run by ``simulate`` (a plain test to pytest; fixtures still injected)."""

    @functools.wraps(test)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        simulate(test(*args, **kwargs))

    return run


def loop() -> PausableLoop:
    running = asyncio.get_running_loop()
    assert isinstance(running, PausableLoop)
    return running


def as_node(name: str, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """Run ``coro`` as part of node ``name`` (what it starts can be frozen with the node)."""
    ctx = contextvars.copy_context()
    ctx.run(NODE.set, name)
    return asyncio.get_running_loop().create_task(coro, context=ctx)


async def wait_until(cond: Callable[[], bool], within: float = 5.0) -> float:
    """Poll ``cond`` (every 5 virtual ms) until true; the virtual time it took. Fails after
    ``within`` virtual seconds."""
    t0 = loop().time()
    while not cond():
        if loop().time() - t0 > within:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)
    return loop().time() - t0


# -- the segment --------------------------------------------------------------------------------


class Wire:
    """An in-memory datagram segment between the attached transports, keyed by bind address.
    Delivery is in order and in the receiver's context (a frozen node's inbox waits)."""

    def __init__(self) -> None:
        self.ends: dict[str, tuple[HaTransport, contextvars.Context]] = {}

    async def attach(self, tr: HaTransport) -> None:
        self.ends[str(tr.bind)] = (tr, contextvars.copy_context())
        tr.connection_made(_End(self, tr.bind))

    def deliver(self, data: bytes, src: Endpoint, dst: str) -> None:
        end = self.ends.get(dst)
        if end is not None:
            tr, ctx = end
            asyncio.get_running_loop().call_soon(
                tr.datagram_received, data, (str(src.address), src.port), context=ctx
            )


class _End(asyncio.DatagramTransport):
    def __init__(self, wire: Wire, bind: Endpoint) -> None:
        super().__init__()
        self.wire, self.bind, self.closed = wire, bind, False

    def sendto(self, data: Any, addr: Any = None) -> None:
        if not self.closed:
            self.wire.deliver(bytes(data), self.bind, host_port(addr[0], addr[1]))

    def close(self) -> None:
        self.closed = True
        self.wire.ends.pop(str(self.bind), None)

    def is_closing(self) -> bool:
        return self.closed


# -- the host -----------------------------------------------------------------------------------


class World:
    """What both fake VIP managers did, in order, on the virtual clock."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, str]] = []
        self.holders: set[str] = set()

    def index(self, node: str, op: str, after: int = 0) -> int:
        return next(
            i for i, (_, n, o) in enumerate(self.events) if i >= after and (n, o) == (node, op)
        )


class FakeVips:
    def __init__(self, world: World, node: str, present: bool = False) -> None:
        self.world, self.node = world, node
        self.held = present
        self.renews = 0
        self.fail_takes = 0
        self.announced = 0

    def _note(self, op: str) -> None:
        self.world.events.append((asyncio.get_running_loop().time(), self.node, op))

    async def take(self, lease: float | None) -> None:
        await asyncio.sleep(0.002)  # a netlink round trip
        if self.fail_takes:
            self.fail_takes -= 1
            raise HaIoError("interface eth0 not found")
        self.held = True
        self.world.holders.add(self.node)
        self._note("take")

    async def renew(self, lease: float | None) -> None:
        self.renews += 1

    async def release(self) -> None:
        await asyncio.sleep(0.002)
        self.held = False
        self.world.holders.discard(self.node)
        self._note("release")

    async def present(self) -> bool:
        return self.held

    async def announce(self) -> int:
        self._note("announce")
        await asyncio.sleep(0.01)
        self.announced += 3
        return 3

    def describe(self) -> list[dict[str, object]]:
        return [{"address": "192.0.2.100/24", "interface": "eth0", "present": self.held,
                 "lease_left": None}]  # fmt: skip


class FakeNotifier:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def notify(self, role: str, reason: str) -> None:
        self.calls.append((role, reason))


class FakeTracker:
    def __init__(self) -> None:
        self.emit: Callable[[TrackEvent], None] | None = None
        self.gateway_ok = True
        self.probes = 0

    async def run(self, emit: Callable[[TrackEvent], None]) -> None:
        self.emit = emit
        await asyncio.Event().wait()

    async def probe_gateway(self) -> bool:
        self.probes += 1
        await asyncio.sleep(0.001)  # an echo round trip
        return self.gateway_ok


class Node:
    def __init__(
        self,
        name: str,
        runner: HaRunner,
        vips: FakeVips,
        notifier: FakeNotifier,
        tracker: FakeTracker,
        health: list[tuple[str, int, int]],
    ) -> None:
        self.name, self.r, self.vips, self.notifier = name, runner, vips, notifier
        self.tracker, self.health = tracker, health

    @property
    def role(self) -> str:
        return self.r.role

    async def start(self) -> None:
        """Start the runner as this node (its tasks and timers belong to it)."""
        await as_node(self.name, self.r.start())


def summary_of(health: list[tuple[str, int, int]]) -> Callable[[], list[tuple[str, int, int]]]:
    return lambda: list(health)


def make_pair(tmp_path: Path, world: World, **over: object) -> tuple[Node, Node]:
    """Nodes a (priority 150) and b (100) on one ``Wire``; ``over``: HAConfig fields."""
    ip = ipaddress.ip_address
    ea, eb = Endpoint(ip("192.0.2.11"), 5405), Endpoint(ip("192.0.2.12"), 5405)
    base = HAConfig(
        bind=ea, peers=(eb,), secret_file="-", priority=150, preempt=True,
        preempt_delay=30.0, interval=INTERVAL, dead_after=3, lease=0.6,
    )  # fmt: skip
    cfgs = {
        "a": dataclasses.replace(base, **over),  # type: ignore[arg-type]
        "b": dataclasses.replace(base, bind=eb, peers=(ea,), priority=100, **over),  # type: ignore[arg-type]
    }
    wire, nodes = Wire(), []
    for name in ("a", "b"):
        vips, notifier, tracker = FakeVips(world, name), FakeNotifier(), FakeTracker()
        health = [("web", 2, 2)]
        r = HaRunner(
            cfgs[name], name, KEY, clock=asyncio.get_running_loop().time, metrics=Metrics(),
            vips=vips, notifier=notifier, health_summary=summary_of(health),
            digest="ab" * 32, state_dir=str(tmp_path / name), tracker=tracker,
            attach=wire.attach,
        )  # fmt: skip
        nodes.append(Node(name, r, vips, notifier, tracker, health))
    return nodes[0], nodes[1]


@contextlib.asynccontextmanager
async def running(a: Node, b: Node) -> AsyncIterator[None]:
    """Both started (a first); both stopped at once (not graceful) on the way out."""
    await a.start()
    await b.start()
    try:
        yield
    finally:
        for n in (a, b):
            await n.r.stop(graceful=False)


@contextlib.asynccontextmanager
async def elected(tmp_path: Path, world: World, **over: object) -> AsyncIterator[tuple[Node, Node]]:
    """A running pair once a is active with the VIPs and b is backup."""
    a, b = make_pair(tmp_path, world, **over)
    async with running(a, b):
        await wait_until(lambda: (a.role, b.role) == ("active", "backup") and a.vips.held)
        yield a, b
