"""Change passes are rate-limited (``Reconciler(coalesce=...)``): a burst of health changes
spread over a check interval (a mass failure, as the checks detect it) lands in a few passes,
each taking every service dirtied meanwhile, and a lone event still goes at once. Virtual time."""

from __future__ import annotations

import asyncio
import ipaddress

from hacontrol.clock import run_virtual
from hacontrol.dataplane.desired import ConfigDesired, service_key
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig

N = 40  # services, one real server each; they die 5 ms apart (200 ms in all)


def world() -> tuple[list[ServiceConfig], dict[str, Health]]:
    svcs = [
        ServiceConfig(
            f"s{i}",
            ipaddress.ip_address("198.51.100.1"),
            1000 + i,
            real_servers=(RealServer(ipaddress.ip_address(f"192.0.2.{10 + i}"), 80, 1),),
        )
        for i in range(N)
    ]
    return svcs, {s.name: Health.UP for s in svcs}


def burst(coalesce: float) -> tuple[int, float, MemoryDataplane, ConfigDesired]:
    """(change passes, virtual time from the first death to its pass, plane, source)."""
    out: list[tuple[int, float]] = []
    svcs, health = world()
    dp = MemoryDataplane()
    source = ConfigDesired(svcs, lambda svc, rs: health[svc.name])

    async def main() -> None:
        loop = asyncio.get_running_loop()
        rec = Reconciler(dp, resync_interval=3600, coalesce=coalesce)
        rec.set_desired(source)
        await rec.start()
        try:
            await asyncio.wait_for(rec.wait_passes(1), 10)
            await asyncio.sleep(1.0)  # the start pass is long past: the first death goes at once
            before = rec.status().passes
            t0 = loop.time()
            first_seen = None
            for svc in svcs:
                health[svc.name] = Health.DOWN
                rec.mark_dirty({service_key(svc)})
                await asyncio.sleep(0.005)
                if first_seen is None and not dp.table[service_key(svcs[0])].dests:
                    first_seen = loop.time() - t0
            await asyncio.sleep(1.0)  # the loop's last pass
            out.append((rec.status().passes - before, first_seen if first_seen else -1.0))
        finally:
            await rec.stop()

    run_virtual(main())
    return out[0][0], out[0][1], dp, source


def test_a_burst_spread_over_an_interval_lands_in_a_few_passes() -> None:
    passes, first, dp, source = burst(0.1)
    assert dp.table == source.build(dp.table)  # every death is in the table
    assert all(not svc.dests for svc in dp.table.values())
    assert passes <= 4  # one at once, then one per 100 ms of the 200 ms burst
    assert 0 <= first < 0.01  # the first death is not held back (seen after one 5 ms step)


def test_without_coalescing_each_change_is_its_own_pass() -> None:
    passes, _, dp, source = burst(0.0)
    assert dp.table == source.build(dp.table)
    assert passes >= N // 2  # what the coalescing saves (the test above can fail)
