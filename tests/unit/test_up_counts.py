"""UpCounts follows health changes to the same counts as counting every real server again
(property over random configs and change sequences), and a reset counts from the verdicts."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from hacontrol.health.state import Health
from hacontrol.model import RealServer, ServiceConfig
from hacontrol.up_counts import UpCounts

STATES = [Health.UP, Health.DOWN, Health.UNKNOWN]


def world(
    layout: list[list[int]],
) -> tuple[list[ServiceConfig], dict[int, list[tuple[ServiceConfig, RealServer]]]]:
    """Services whose real servers are targets (numbers; a target may serve many services)."""
    svcs = []
    targets: dict[int, list[tuple[ServiceConfig, RealServer]]] = {}
    for i, ts in enumerate(layout):
        rss = tuple(
            RealServer(ipaddress.ip_address(f"192.0.2.{t + 1}"), 80, 1) for t in sorted(set(ts))
        )
        svc = ServiceConfig(
            f"s{i}", ipaddress.ip_address("198.51.100.1"), 1000 + i, real_servers=rss
        )
        svcs.append(svc)
        for rs in rss:
            targets.setdefault(int(str(rs.address).rsplit(".", 1)[1]) - 1, []).append((svc, rs))
    return svcs, targets


def brute(svcs: list[ServiceConfig], state: dict[int, Health]) -> list[tuple[str, int, int]]:
    def of(rs: RealServer) -> Health:
        return state.get(int(str(rs.address).rsplit(".", 1)[1]) - 1, Health.UNKNOWN)

    return [(s.name, sum(of(r) is Health.UP for r in s.real_servers), len(s.real_servers))
            for s in svcs]  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    layout=st.lists(st.lists(st.integers(0, 7), min_size=0, max_size=5), min_size=1, max_size=6),
    start=st.dictionaries(st.integers(0, 7), st.sampled_from(STATES)),
    changes=st.lists(st.tuples(st.integers(0, 7), st.sampled_from(STATES)), max_size=30),
)
def test_changes_keep_what_a_full_count_gives(
    layout: list[list[int]], start: dict[int, Health], changes: list[tuple[int, Health]]
) -> None:
    svcs, targets = world(layout)
    state = {t: start.get(t, Health.UNKNOWN) for t in targets}
    counts = UpCounts()
    counts.reset(svcs, targets, state.__getitem__)
    assert counts.rows() == brute(svcs, state)
    for t, new in changes:
        if t not in targets:
            continue
        old, state[t] = state[t], new
        counts.change(targets[t], old, new)
        assert counts.rows() == brute(svcs, state)
