"""A junk flood at the backup's heartbeat port changes no role (two real daemons, namespaces).

Two sender processes in the client namespace (198.51.100.100, not a peer) send junk UDP to the
backup's heartbeat port in tight ``sendto`` loops for a bounded time; the kernel's heartbeat guard
(hacontrol.ha.guard) sheds it, counted by its nft counter. Then the same from the peer's own
address (director-a's namespace: what a spoofer on that path would send): without the magic it
is shed by the kernel too; with the magic and a wrong key at most ``PATH_RATE`` per second reach
the socket and are refused by their MAC, counted in /metrics. Neither flood makes a node change
role. The rates reached are printed (the test asks
for no rate: the machine decides it; the figure goes to docs/benchmarks.md).
"""

from __future__ import annotations

import json

import pytest
from nsprobe import wait_for
from pairlab import ADDRS, HB_PORT, A, B, HaPair, MakePair

from hacontrol.ha import packet as pk
from hacontrol.ha.guard import PATH_RATE

pytestmark = pytest.mark.root
REJECTED = "hacontrol_ha_heartbeats_rejected_total"

SENDER = r"""
import json, os, socket, sys, time
dst, port, seconds, payload = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
data = bytes.fromhex(payload)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
n, end = 0, time.monotonic() + seconds
while n < 5_000_000:
    for _ in range(256):
        try:
            s.sendto(data, (dst, port))
        except OSError:
            pass
    n += 256
    if time.monotonic() >= end:
        break
print(json.dumps({"sent": n}))
"""


def flood(pair: HaPair, ns: str, dst: str, payload: bytes, seconds: float = 5.0) -> int:
    """Two bounded senders in ``ns``; the packets they sent."""
    procs = [
        pair.lab[ns].popen(
            "python3",
            "-c",
            SENDER,
            dst,
            str(HB_PORT),
            str(seconds),
            payload.hex(),
            stdout=-1,
            text=True,
        )
        for _ in range(2)
    ]
    sent = 0
    for p in procs:
        out, _ = p.communicate(timeout=seconds + 30)
        sent += json.loads(out)["sent"]
    return sent


def guard_dropped(pair: HaPair, name: str) -> int:
    r = pair.lab[name].run("nft", "-j", "list", "counter", "inet", "hacontrol_hb", "junk")
    items = json.loads(r.stdout)["nftables"]
    return int(next(i["counter"]["packets"] for i in items if "counter" in i))


def test_junk_flood_at_the_backup_changes_no_role(make_pair: MakePair) -> None:
    pair = make_pair()
    pair.start_pair()
    pair.wait_role(A, "active")
    pair.wait_role(B, "backup")
    wait_for(lambda: pair.peer(B)["alive"], 10, "b hearing a")
    roles = {name: pair.transitions(name) for name in (A, B)}
    b_pub = ADDRS[B][0]
    junk = b"HACP" + bytes(200)  # right magic, wrong everything else
    shed_before = guard_dropped(pair, B)

    sent = flood(pair, "client", b_pub, junk)
    shed = guard_dropped(pair, B) - shed_before
    print(f"\nnon-peer flood: {sent} packets in 5 s = {sent / 5:.0f} pps, shed by nft: {shed}")
    assert shed >= sent * 0.99  # the kernel drops it (what is lost on the wire is not counted)

    # from the peer's own address: junk without the magic is shed by the kernel too
    before = guard_dropped(pair, B)
    spoofed = flood(pair, A, b_pub, bytes(200), seconds=3.0)
    print(f"peer-address flood, wrong magic: {spoofed} packets in 3 s = {spoofed / 3:.0f} pps")
    assert guard_dropped(pair, B) - before >= spoofed * 0.99
    # right magic and version, wrong key: the kernel lets PATH_RATE per second through, the
    # daemon refuses those by their MAC; the other heartbeat path is untouched
    forged = b"HACP" + bytes([pk.VERSION]) + bytes(195)
    bad_mac = pair.metric(B, REJECTED, reason="bad_mac")
    sent = flood(pair, A, b_pub, forged, seconds=3.0)
    refused = pair.metric(B, REJECTED, reason="bad_mac") - bad_mac
    print(f"peer-address flood, wrong key: {sent} packets, {refused:.0f} reached the MAC check")
    assert 0 < refused <= (3.0 + 1) * PATH_RATE + PATH_RATE // 10
    assert pair.peer(B)["alive"]
    assert {name: pair.transitions(name) for name in (A, B)} == roles
    assert (pair.role(A), pair.role(B)) == ("active", "backup")
