"""The desired table with the overrides applied (pure): a ``DesiredSource`` over ``ConfigDesired``.

Per real server, after the config and health rules of hacontrol.dataplane.desired:

* draining -> weight 0 if it is in the table (no new connections; the ones it has go on); a
  server the health rules leave out stays out;
* drained (connections gone or deadline passed), disabled -> absent;
* weight N -> weight N while it is UP (a DOWN server stays as the health rules put it);
* enable, clear, no override -> as configured.

The sorry server then follows what is left: present only while no real server serves. A
destination that left the config (``Leaving``) is added at weight 0 until it drains, in its
service, or in a service of its own settings when the whole service left the config.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from hacontrol.dataplane.desired import (
    ConfigDesired,
    HealthOf,
    desired_service,
    dest_key,
    service_key,
)
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, TableService
from hacontrol.health.state import Health
from hacontrol.model import ServiceConfig
from hacontrol.overrides.core import Leaving


@dataclass(frozen=True)
class Effect:
    """What an override does to one destination: ``weight`` None = keep, ``remove``."""

    weight: int | None = None
    remove: bool = False
    draining: bool = False


KEEP = Effect()
EffectOf = Callable[[str, DestKey], Effect]  # (service name, real server) -> effect


def with_overrides(
    svc: ServiceConfig, health: HealthOf, effect: EffectOf, actual: TableService | None
) -> TableService:
    """``desired_service`` of ``svc`` with the effects applied and the sorry server redone."""
    base = desired_service(svc, health, actual)
    dests = dict(base.dests)
    serving = False
    real = set()
    for rs in svc.real_servers:
        dk = dest_key(rs)
        real.add(dk)
        eff = effect(svc.name, dk)
        spec = dests.get(dk)
        if eff.remove:
            dests.pop(dk, None)
            continue
        up = health(svc, rs) is Health.UP
        if spec is not None and eff.draining:
            dests[dk] = DestSpec(weight=0, forwarding=spec.forwarding)
            continue
        if spec is not None and eff.weight is not None and up:
            dests[dk] = spec = DestSpec(weight=eff.weight, forwarding=spec.forwarding)
        if spec is not None and (up or spec.weight > 0):
            serving = True
    sorry = dest_key(svc.sorry_server) if svc.sorry_server is not None else None
    if sorry is not None and sorry not in real:
        if serving:
            dests.pop(sorry, None)
        else:
            dests[sorry] = DestSpec(weight=1, forwarding=svc.forwarding)
    return TableService(base.spec, dests)


class OverrideDesired:
    """``ConfigDesired`` of ``services`` with overrides and leaving destinations."""

    def __init__(
        self,
        services: Sequence[ServiceConfig],
        health: HealthOf,
        effect: EffectOf,
        leaving: Callable[[], Iterable[Leaving]],
    ) -> None:
        self._base = ConfigDesired(services, health)
        self._by_key = {service_key(s): s for s in services}
        self._health = health
        self._effect = effect
        self._leaving = leaving

    def _leaving_of(self) -> dict[ServiceKey, list[Leaving]]:
        out: dict[ServiceKey, list[Leaving]] = {}
        for lv in self._leaving():
            out.setdefault(lv.service, []).append(lv)
        return out

    def keys(self) -> list[ServiceKey]:
        keys = self._base.keys()  # raises on clashes
        known = set(keys)
        return keys + sorted(k for k in self._leaving_of() if k not in known)

    def service(self, key: ServiceKey, actual: TableService | None) -> TableService | None:
        svc = self._by_key.get(key)
        leaving = self._leaving_of().get(key, [])
        if svc is None and not leaving:
            return None
        if svc is not None:
            out = with_overrides(svc, self._health, self._effect, actual)
        else:
            out = TableService(leaving[0].spec, {})
        for lv in leaving:
            if lv.dest not in out.dests:
                fwd = lv.forwarding if lv.forwarding in ("nat", "dr", "tunnel") else "nat"
                out.dests[lv.dest] = DestSpec(weight=0, forwarding=fwd)  # type: ignore[arg-type]
        return out
