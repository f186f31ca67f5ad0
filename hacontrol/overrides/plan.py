"""What a reload would do, before it happens (pure): ``hacontrol diff -c NEW.yaml``.

``removed_pairs`` lists the destinations a new config drops (they leave with a deadline, see
hacontrol.overrides.core.Leaving); ``reload_plan`` compares the desired table the new config
would give now (same health verdicts, same overrides, the leaving destinations at weight 0) with
the kernel as the daemon last read it, and the VIP sets of the two configs. The daemon computes
it (the new file parsed in the reload child, hacontrol.reload_parse), so the answer is what the
running daemon would do, not a guess from another process.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Set
from typing import Any

from hacontrol.dataplane.desired import HealthOf, dest_key, service_key, service_spec
from hacontrol.dataplane.diff import diff
from hacontrol.dataplane.table import DestKey, ServiceKey, Table
from hacontrol.model import Config
from hacontrol.overrides.core import Leaving
from hacontrol.overrides.desired import EffectOf, OverrideDesired


def removed_pairs(old: Config, new: Config, now: float) -> list[Leaving]:
    """The destinations of ``old`` that ``new`` does not list, as leaving entries (none when
    ``new`` says ``dataplane.drain_removed: 0``)."""
    grace = new.dataplane.drain_removed
    if grace <= 0:
        return []
    listed = {(service_key(s), dest_key(rs)) for s in new.services for rs in s.real_servers}
    out = []
    for s in old.services:
        for rs in s.real_servers:
            pair = (service_key(s), dest_key(rs))
            if pair not in listed:
                out.append(Leaving(pair[0], pair[1], s.forwarding, service_spec(s), now,
                                   now + grace))  # fmt: skip
    return out


def _vips(cfg: Config) -> set[str]:
    return {f"{v.address} dev {v.interface}" for v in cfg.ha.vips} if cfg.ha else set()


def reload_plan(
    old: Config,
    new: Config,
    kernel: Table,
    owned: Set[ServiceKey],
    health: HealthOf,
    effect: EffectOf,
    leaving: Iterable[Leaving],
    now: float | None = None,
) -> dict[str, Any]:
    """The kernel actions and the VIP changes a reload to ``new`` would make now."""
    now = time.time() if now is None else now
    keep: dict[tuple[ServiceKey, DestKey], Leaving] = {(lv.service, lv.dest): lv for lv in leaving}
    for lv in removed_pairs(old, new, now):
        keep.setdefault((lv.service, lv.dest), lv)
    listed = {(service_key(s), dest_key(rs)) for s in new.services for rs in s.real_servers}
    gone = [lv for p, lv in keep.items() if p not in listed]
    source = OverrideDesired(new.services, health, effect, lambda: gone)
    desired: Table = {}
    wanted = source.keys()
    for key in wanted:
        svc = source.service(key, kernel.get(key))
        if svc is not None:
            desired[key] = svc
    actions = diff(desired, kernel, owned)
    old_vips, new_vips = _vips(old), _vips(new)
    return {
        "changes": [str(a) for a in actions],
        "count": len(actions),
        "leaving": [f"{lv.service} -> {lv.dest}" for lv in gone],
        "vips": {"add": sorted(new_vips - old_vips), "remove": sorted(old_vips - new_vips)},
        "digest": {"running": old.digest, "new": new.digest},
    }
