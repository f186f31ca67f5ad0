"""An event on the real IPVS table reads nothing back (in the guest).

The reconciler's loop over the real plane with 50 services x 4 real servers: after the first
(full) pass, a health change is a pass of scope ``services`` that sends no netlink dump request
(``IpvsDataplane.dumps``) and ``ipvsadm -Ln`` shows it; a burst of 40 changes (a mass failure)
is the same, in a few passes; a periodic resync does read the kernel (the counter counts).
"""

from __future__ import annotations

import asyncio
import ipaddress

import pytest
from ipvslab import kernel_table

from hacontrol.dataplane.desired import ConfigDesired, service_key
from hacontrol.dataplane.ipvs import IpvsDataplane
from hacontrol.dataplane.reconciler import Reconciler
from hacontrol.dataplane.table import DestKey
from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig

pytestmark = [pytest.mark.ipvs, pytest.mark.usefixtures("clean_ipvs")]

SERVICES, PER = 50, 4
SVCS = [
    ServiceConfig(
        f"s{i}", ipaddress.ip_address("198.51.100.40"), 2000 + i, scheduler="wrr",
        real_servers=tuple(
            RealServer(ipaddress.ip_address(f"192.0.2.{100 + j}"), 8000 + i, 1 + j)
            for j in range(PER)
        ),
    )
    for i in range(SERVICES)
]  # fmt: skip


async def test_a_health_change_sends_no_dump_and_the_kernel_shows_it(
    plane: IpvsDataplane,
) -> None:
    health: dict[tuple[str, str], Health] = {}
    source = ConfigDesired(
        SVCS, lambda s, r: health.get((s.name, str(r.address)), Health.UP)
    )
    rec = Reconciler(plane, resync_interval=3600)
    rec.set_desired(source)
    await rec.start()
    try:
        await asyncio.wait_for(rec.wait_passes(1), 60)
        assert kernel_table() == source.build()
        dumps, passes = plane.dumps, rec.status().passes
        assert dumps > 0  # the first pass read the kernel

        victim = SVCS[7]
        health[(victim.name, "192.0.2.101")] = Health.DOWN
        rec.mark_dirty({service_key(victim)})
        await asyncio.wait_for(rec.wait_passes(passes + 1), 30)
        st = rec.status()
        assert st.ok and st.last_reason == "change", st
        assert st.last_actions == [
            f"del_dest tcp/198.51.100.40:{2000 + 7} -> 192.0.2.101:{8000 + 7}"
        ]
        assert plane.dumps == dumps  # nothing read back: the acks are the confirmation
        kernel = kernel_table()
        assert DestKey("192.0.2.101", 8007) not in kernel[service_key(victim)].dests
        assert kernel == source.build()

        # a burst: the first real server of 40 services dies at once
        passes = rec.status().passes
        for svc in SVCS[10:]:
            health[(svc.name, "192.0.2.100")] = Health.DOWN
            rec.mark_dirty({service_key(svc)})
            await asyncio.sleep(0)
        want = source.build()
        for _ in range(100):  # bounded: each round waits for one more pass
            if kernel_table() == want:
                break
            await asyncio.wait_for(rec.wait_passes(rec.status().passes + 1), 30)
        assert kernel_table() == want
        assert plane.dumps == dumps
        assert 1 <= rec.status().passes - passes <= 3

        # the periodic resync does read the kernel, and finds nothing to do
        res = await rec.sync_now("resync")
        assert res.ok and res.scope == "full" and res.actions == [] and not res.drift
        assert plane.dumps > dumps
    finally:
        await rec.stop()
