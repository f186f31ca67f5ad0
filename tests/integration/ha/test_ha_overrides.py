"""Operator overrides replicated between the two directors of a real pair (tests/integration/ha/
pairlab: two ``hacontrol run`` daemons in namespaces, nftables plane, one HTTP real server),
driven by the CLI and checked in each daemon's status and in each namespace's kernel table:

1. ``drain`` on director-a (active) reaches director-b: the same record (version
   ``director-a#n``) in its status, the real server out of its kernel table (no connection to
   wait for), and both report that their override sets agree (status and /metrics);
2. ``weight`` on director-b (backup) reaches director-a, with a higher Lamport version;
3. director-b stops; ``disable`` on director-a meanwhile; director-b restarts: it keeps its
   counter (the file) and catches up (anti-entropy): disabled, out of its kernel table;
4. kill -9 of the active (director-a, unless a stall of this shared machine moved the role):
   the peer takes over and its kernel table keeps the override; ``clear`` on the new active,
   then the killed one restarts: it takes the clear (the newer record), and the real server is
   back in both kernel tables.
"""

from __future__ import annotations

from typing import Any

import pytest
from nsprobe import wait_for
from pairlab import HTTP_PORT, RS, VIP, A, B, HaPair, MakePair

from hacontrol.dataplane.nft_render import NftRenderer
from hacontrol.dataplane.table import ServiceKey
from tests.integration import nftlist

pytestmark = pytest.mark.root

SERVER = f"{RS}:80"
WAIT = 30.0


def cli(pair: HaPair, name: str, *args: str) -> None:
    r = pair.cli(name, *args)
    assert r.returncode == 0, (name, args, r.stdout, r.stderr)


def server(pair: HaPair, name: str) -> dict[str, Any] | None:
    """The real server's entry in ``name``'s status (None while it does not answer)."""
    doc = pair.status(name)
    if doc is None or not doc.get("services"):
        return None
    rs: dict[str, Any] = doc["services"][0]["real_servers"][0]
    return rs


def override(pair: HaPair, name: str) -> dict[str, Any] | None:
    rs = server(pair, name)
    got: dict[str, Any] | None = rs.get("override") if rs is not None else None
    return got


def replication(pair: HaPair, name: str) -> dict[str, Any]:
    doc = pair.status(name)
    assert doc is not None, f"{name} does not answer"
    rep: dict[str, Any] = doc["overrides"]["replication"]
    return rep


SHARD = NftRenderer("hacontrol").shard(ServiceKey("tcp", VIP, HTTP_PORT))  # web's table


def in_kernel(pair: HaPair, name: str) -> bool:
    """The real server is in the slots of ``name``'s nftables rule of the service, in the
    service's own table (read with nft itself): new flows go to it."""
    r = pair.lab[name].run("nft", "list", "table", "inet", SHARD, check=False)
    assert r.returncode == 0, r.stderr
    return RS in r.stdout


def out_of_kernel(pair: HaPair, name: str) -> bool:
    """The real server is in none of ``name``'s nftables tables (the main table's weights and
    masquerade set included) while the service's table is still there."""
    assert nftlist.present(pair.lab[name], "hacontrol") == nftlist.expected("hacontrol", {SHARD})
    return RS not in nftlist.text(pair.lab[name], "hacontrol")


def wait_override(pair: HaPair, name: str, action: str | None, what: str) -> dict[str, Any]:
    """Wait until ``name`` shows ``action`` on the real server (None: no active override)."""

    def ok() -> dict[str, Any] | None:
        o = override(pair, name)
        if action is None:
            return {"cleared": True} if server(pair, name) is not None and o is None else None
        return o if o is not None and o["action"] == action else None

    got: dict[str, Any] = wait_for(ok, WAIT, what, pair.explain)
    return got


def wait_agree(pair: HaPair, *names: str) -> None:
    for name in names:
        wait_for(lambda n=name: replication(pair, n)["agree"] is True, WAIT,  # type: ignore[misc]
                 f"{name}: the peer's override set agrees", pair.explain)  # fmt: skip


def test_overrides_replicate_across_restart_and_failover(make_pair: MakePair) -> None:
    pair = make_pair(real_server=True)
    pair.start_pair()
    for name in (A, B):
        wait_for(lambda n=name: (server(pair, n) or {}).get("kernel_weight") == 1, WAIT,
                 f"{name}: the real server in its kernel", pair.explain)  # fmt: skip
        assert in_kernel(pair, name)

    # 1. drain on the active: director-b takes the same record and follows it in its kernel
    cli(pair, A, "drain", "web", SERVER)
    at_a = wait_override(pair, A, "drain", "director-a: drain recorded")
    at_b = wait_override(pair, B, "drain", "director-b: the drain from director-a")
    assert at_b["version"] == at_a["version"] and at_a["version"].startswith(f"{A}#")
    for name in (A, B):
        wait_for(lambda n=name: out_of_kernel(pair, n), WAIT,  # type: ignore[misc]
                 f"{name}: the drained server out of its kernel table", pair.explain)
    wait_agree(pair, A, B)
    assert pair.metric(B, "hacontrol_override_sync_agree") == 1.0
    assert pair.metric(B, "hacontrol_override_sync_records_total", result="taken") >= 1
    assert replication(pair, B)["peer"] == A and replication(pair, B)["refused"] == {}
    shown = pair.cli(B, "overrides")
    assert f"replication: peer {A} agrees" in shown.stdout, (shown.stdout, shown.stderr)

    # 2. an override made on the backup reaches the active, with a newer version
    cli(pair, B, "weight", "web", SERVER, "--set", "5")
    at_a = wait_override(pair, A, "weight", "director-a: the weight from director-b")
    counter = int(at_a["version"].split("#")[1])
    assert at_a["version"].startswith(f"{B}#") and counter > int(at_b["version"].split("#")[1])
    for name in (A, B):
        wait_for(lambda n=name: (server(pair, n) or {}).get("kernel_weight") == 5, WAIT,
                 f"{name}: weight 5 in its kernel", pair.explain)  # fmt: skip

    # 3. director-b away while director-a disables; back, it keeps its counter and catches up
    pair.signal(B, 15)
    assert pair.exit_code(B, 30) == 0
    cli(pair, A, "disable", "web", SERVER)
    pair.start(B)
    pair.wait_role(B, "backup", WAIT)
    assert pair.status(B)["overrides"]["counter"] >= counter  # type: ignore[index]
    at_b = wait_override(pair, B, "disable", "director-b: the disable made while it was away")
    assert at_b["version"].startswith(f"{A}#")
    wait_for(lambda: out_of_kernel(pair, B), WAIT, "director-b: disabled, out of its kernel")
    wait_agree(pair, A, B)

    # 4. the active dies: the new active's kernel keeps the override; a clear there wins
    dead = wait_for(lambda: next((n for n in (A, B) if pair.role(n) == "active"), None), WAIT,
                    "an active director", pair.explain)  # fmt: skip
    new = B if dead == A else A
    pair.kill(dead)
    pair.wait_role(new, "active", WAIT)
    assert override(pair, new)["action"] == "disable"  # type: ignore[index]
    assert out_of_kernel(pair, new)
    cli(pair, new, "clear", "web", SERVER)
    wait_override(pair, new, None, f"{new}: cleared")
    wait_for(lambda: in_kernel(pair, new), WAIT, f"{new}: the server back in its kernel")
    pair.start(dead)
    pair.wait_role(dead, "backup", WAIT)
    wait_override(pair, dead, None, f"{dead}: the clear made while it was dead")
    wait_for(lambda: in_kernel(pair, dead), WAIT, f"{dead}: the server back in its kernel")
    wait_agree(pair, A, B)
    assert pair.metric(dead, "hacontrol_override_sync_refused_total") == 0
