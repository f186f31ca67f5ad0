"""Which destination gets each new flow of a service on the nftables plane (pure, no I/O).

A service rule maps a key (``numgen inc`` or ``jhash ip saddr``, modulo the slot count) to a
slot, and each slot to a destination. ``slots_for`` gives the key kind and the slot list of
a scheduler: rr one slot per live destination, wrr the destinations repeated by their reduced
weights in smooth weighted round-robin order (``smooth_slots``, capped at ``MAX_SLOTS``), sh/mh
the same slots keyed by the source address, fo the highest weight destination alone.
"""

from __future__ import annotations

import math
from functools import reduce

from hacontrol.dataplane.table import DestKey, DestSpec, ServiceSpec

MAX_SLOTS = 256


def smooth_slots(weights: dict[DestKey, int]) -> list[DestKey]:
    """Slots for weighted round-robin: each dest repeated by its (reduced) weight, interleaved
    like nginx's smooth WRR so consecutive new flows spread out."""
    live = {k: w for k, w in sorted(weights.items()) if w > 0}
    if not live:
        return []
    g = reduce(math.gcd, live.values())
    red = {k: w // g for k, w in live.items()}
    total = sum(red.values())
    if total > MAX_SLOTS:
        red = {k: max(1, round(w * MAX_SLOTS / total)) for k, w in red.items()}
        total = sum(red.values())
    keys, weights_ = list(red), list(red.values())
    current = [0] * len(keys)
    out: list[DestKey] = []
    for _ in range(total):
        best = 0
        for i, w in enumerate(weights_):
            current[i] += w
            if current[i] > current[best]:  # ties: the first (lowest) key wins
                best = i
        current[best] -= total
        out.append(keys[best])
    return out


def slots_for(spec: ServiceSpec, dests: dict[DestKey, DestSpec]) -> tuple[str, list[DestKey]]:
    """(key kind "numgen" | "jhash", slot list) for a service's new flows."""
    weights = {k: d.weight for k, d in dests.items()}
    if spec.scheduler == "rr":
        return "numgen", [k for k in sorted(weights) if weights[k] > 0]
    if spec.scheduler == "fo":
        live = sorted((k for k in weights if weights[k] > 0), key=lambda k: (-weights[k], k))
        return "numgen", live[:1]
    kind = "jhash" if spec.scheduler in ("sh", "mh") else "numgen"
    return kind, smooth_slots(weights)
