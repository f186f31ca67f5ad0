"""The table diff: which actions turn the actual table into the desired one (pure).

``diff(desired, actual, owned)`` returns an ordered list of ``Action`` values; ``apply_actions``
replays them on a table value. Services in ``actual`` that are neither desired nor owned are
FOREIGN (made by someone else: ipvsadm by hand, another tool) and are never touched.

Order is make-before-break: services are added/updated first, then destinations are added or
updated, then stale destinations are removed, then stale services are deleted, so a service that
keeps any destination is never left empty in between.

A change of a destination's forwarding method is an ``update_dest`` by default, because IPVS can
change it in place (IP_VS_SO_SET_EDITDEST carries the connection flags). A plane that cannot, passes
``forwarding_in_place=False`` and gets ``del_dest`` + ``add_dest`` for that destination (the add
directly follows the del, in the add phase). No I/O here.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Literal

from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
    copy_table,
)

Op = Literal["add_service", "update_service", "del_service", "add_dest", "update_dest", "del_dest"]
SERVICE_OPS = ("add_service", "update_service", "del_service")
DEST_OPS = ("add_dest", "update_dest", "del_dest")


@dataclass(frozen=True)
class Action:
    """One change to the kernel table."""

    op: Op
    service: ServiceKey
    spec: ServiceSpec | None = None  # add_service / update_service
    dest: DestKey | None = None  # *_dest
    dest_spec: DestSpec | None = None  # add_dest / update_dest

    def __post_init__(self) -> None:
        if self.op in ("add_service", "update_service") and self.spec is None:
            raise ValueError(f"{self.op} needs a spec")
        if self.op in DEST_OPS and self.dest is None:
            raise ValueError(f"{self.op} needs a dest")
        if self.op in ("add_dest", "update_dest") and self.dest_spec is None:
            raise ValueError(f"{self.op} needs a dest_spec")

    def __str__(self) -> str:
        text = f"{self.op} {self.service}"
        if self.spec is not None:
            text += f" scheduler={self.spec.scheduler} persistence={self.spec.persistence}"
        if self.dest is not None:
            text += f" -> {self.dest}"
        if self.dest_spec is not None:
            text += f" weight={self.dest_spec.weight} forwarding={self.dest_spec.forwarding}"
        return text


def foreign(actual: Table, desired: Table, owned: Set[ServiceKey]) -> Table:
    """The services of ``actual`` the daemon must leave alone."""
    return {k: v for k, v in actual.items() if k not in desired and k not in owned}


def diff(
    desired: Table,
    actual: Table,
    owned: Set[ServiceKey],
    *,
    forwarding_in_place: bool = True,
) -> list[Action]:
    """Ordered actions that make ``actual`` equal ``desired`` plus the foreign services."""
    return join_phases(diff_phases(desired, actual, owned, forwarding_in_place=forwarding_in_place))


Phases = tuple[list[Action], list[Action], list[Action], list[Action]]


def join_phases(phases: Phases) -> list[Action]:
    """The four phases (services, dest add/update, dest del, service del) in make-before-break
    order."""
    return [a for phase in phases for a in phase]


def diff_phases(
    desired: Table,
    actual: Table,
    owned: Set[ServiceKey],
    *,
    forwarding_in_place: bool = True,
) -> Phases:
    """``diff`` split by phase. Each service's actions depend on that service alone, so the diff
    of a table cut into slices of services (in key order), phase lists concatenated per phase,
    equals the diff of the whole table: the reconciler compares big tables slice by slice."""
    services: list[Action] = []
    dest_set: list[Action] = []
    dest_del: list[Action] = []
    service_del: list[Action] = []

    for key in sorted(desired):
        want = desired[key]
        have = actual.get(key)
        if have is None:
            services.append(Action("add_service", key, spec=want.spec))
            have_dests: dict[DestKey, DestSpec] = {}
        else:
            if have.spec != want.spec:
                services.append(Action("update_service", key, spec=want.spec))
            have_dests = have.dests
        for dk in sorted(want.dests):
            ds = want.dests[dk]
            old = have_dests.get(dk)
            if old is None:
                dest_set.append(Action("add_dest", key, dest=dk, dest_spec=ds))
            elif old != ds:
                if old.forwarding != ds.forwarding and not forwarding_in_place:
                    dest_set.append(Action("del_dest", key, dest=dk))
                    dest_set.append(Action("add_dest", key, dest=dk, dest_spec=ds))
                else:
                    dest_set.append(Action("update_dest", key, dest=dk, dest_spec=ds))
        for dk in sorted(have_dests):
            if dk not in want.dests:
                dest_del.append(Action("del_dest", key, dest=dk))

    for key in sorted(actual):
        if key not in desired and key in owned:
            service_del.append(Action("del_service", key))

    return services, dest_set, dest_del, service_del


def apply_actions(table: Table, actions: Iterable[Action]) -> Table:
    """Replay ``actions`` on a copy of ``table`` like the kernel would; raise ValueError on an
    action that the kernel would refuse (adding what exists, changing what does not)."""
    return apply_in_place(copy_table(table), actions)


def apply_in_place(out: Table, actions: Iterable[Action]) -> Table:
    """``apply_actions`` on ``out`` itself, copying only the services it touches (O(actions), not
    O(table): the reconciler advances its view of the kernel by the acknowledged actions). On a
    ValueError the actions before the refused one stay applied."""
    touched: set[ServiceKey] = set()
    for a in actions:
        if a.service not in touched and a.service in out:
            old = out[a.service]
            out[a.service] = TableService(old.spec, dict(old.dests))
        touched.add(a.service)
        svc = out.get(a.service)
        if a.op == "add_service":
            if svc is not None:
                raise ValueError(f"{a}: service exists")
            assert a.spec is not None
            out[a.service] = TableService(a.spec, {})
            continue
        if svc is None:
            raise ValueError(f"{a}: no such service")
        if a.op == "update_service":
            assert a.spec is not None
            out[a.service] = TableService(a.spec, svc.dests)
        elif a.op == "del_service":
            del out[a.service]
        else:
            assert a.dest is not None
            present = a.dest in svc.dests
            if a.op == "add_dest":
                if present:
                    raise ValueError(f"{a}: destination exists")
                assert a.dest_spec is not None
                svc.dests[a.dest] = a.dest_spec
            elif a.op == "update_dest":
                if not present:
                    raise ValueError(f"{a}: no such destination")
                assert a.dest_spec is not None
                svc.dests[a.dest] = a.dest_spec
            else:
                if not present:
                    raise ValueError(f"{a}: no such destination")
                del svc.dests[a.dest]
    return out


def describe(desired: Table, actual: Table, keys: Iterable[ServiceKey]) -> list[str]:
    """Short human text of how ``actual`` differs from ``desired`` on ``keys`` (for drift logs)."""
    out: list[str] = []
    for key in sorted(set(keys)):
        want, have = desired.get(key), actual.get(key)
        if want == have:
            continue
        if have is None:
            out.append(f"{key} missing")
        elif want is None:
            out.append(f"{key} unexpected")
        else:
            if want.spec != have.spec:
                out.append(
                    f"{key} scheduler={have.spec.scheduler} persistence={have.spec.persistence}"
                    f" (want {want.spec.scheduler}/{want.spec.persistence})"
                )
            for dk in sorted(set(want.dests) | set(have.dests)):
                w, h = want.dests.get(dk), have.dests.get(dk)
                if w == h:
                    continue
                if h is None:
                    out.append(f"{key} -> {dk} missing")
                elif w is None:
                    out.append(f"{key} -> {dk} unexpected")
                else:
                    out.append(
                        f"{key} -> {dk} weight={h.weight} forwarding={h.forwarding}"
                        f" (want {w.weight}/{w.forwarding})"
                    )
    return out
