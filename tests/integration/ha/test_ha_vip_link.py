"""The VIPs' interfaces are tracked by default (``ha.track.vip_interfaces``), between two real
``hacontrol run`` daemons in namespaces (tests/integration/ha/pairlab) configured with no
``track.interfaces`` at all:

the active's public link (where the VIP lives) loses carrier -- its switch port, the far end of
the veth, goes down, so on the director the link stays administratively up (IFF_UP) but stops
running (IFF_RUNNING off) -- while the heartbeats still flow on the inside link. The director
must release its VIPs (the kernel addresses gone from its namespace) and the peer take them; when
the carrier returns it rejoins as backup, and preemption (on here, higher priority) decides when it
takes the VIPs back.
"""

from __future__ import annotations

import json

import pytest
from nsprobe import wait_for
from pairlab import PUB, A, B, MakePair

from hacontrol.lab.netns import Ns

pytestmark = pytest.mark.root


def flags(ns: Ns, ifname: str) -> set[str]:
    """The link's flags as ``ip`` names them (UP, LOWER_UP, NO-CARRIER...)."""
    return set(json.loads(ns.ip("-j", "link", "show", "dev", ifname).stdout)[0]["flags"])


def test_vip_link_carrier_loss_releases_the_vips_and_preemption_brings_them_back(
    make_pair: MakePair,
) -> None:
    pair = make_pair(track_links=False, preempt=True, preempt_delay=1.0)
    pair.start_pair()
    assert "interfaces" not in pair.config(A)["ha"]["track"]  # only the default tracks them
    pair.client_sees_active(A)
    sw, port = pair.lab["sw"], f"p-{A[-1]}"

    sw.down(port)  # the switch port: director-a's eth0 loses carrier
    wait_for(lambda: "NO-CARRIER" in flags(pair.lab[A], PUB), 10, "no carrier on a's eth0")
    assert "UP" in flags(pair.lab[A], PUB)  # still administratively up
    pair.wait_role(B, "active", 20)
    pair.wait_vips({B}, 20)  # a let its VIPs go itself, b holds them
    doc = pair.wait_role(A, "fault", 20)
    faults = doc["ha"]["faults"]
    assert faults == [{"name": f"interface:{PUB}", "blocking": True,
                       "reason": f"interface {PUB} down"}], faults  # fmt: skip
    assert pair.peer(A)["alive"]  # the heartbeats still flow on the inside link
    tr = pair.last(B)
    assert (tr.frm, tr.to) == ("backup", "active"), tr

    sw.up(port)  # carrier back
    pair.wait_role(A, "active", 30)  # by preemption, after rejoining as backup
    pair.wait_vips({A}, 20)
    pair.wait_role(B, "backup", 20)
    trs = pair.transitions(A)
    back = [t for t in trs if t.frm == "fault"]
    assert back and back[-1].to == "backup" and "recovered" in back[-1].reason, trs
    assert trs[-1].frm == "backup" and trs[-1].to == "active", trs
    assert trs[-1].reason.startswith("preempt"), trs[-1]
    assert trs[-1].at - back[-1].at >= pair.spec.preempt_delay  # it waited, as a backup
    pair.client_sees_active(A)
