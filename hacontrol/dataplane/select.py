"""Choose and open the data plane the config asks for, and say why (``PlaneChoice``).

``auto`` -> IPVS whenever the kernel can provide it, else nftables: when ``/proc/net/ip_vs`` is
missing, the generic netlink family ``IPVS`` is requested first (``hacontrol.dataplane.genl``),
which makes the kernel load the ``ip_vs`` module, as ipvsadm relies on; the scheduler modules
(``ip_vs_wrr``...) are loaded by the kernel itself when a service using them is added. ``ipvs``
asked for explicitly gets the same autoload. ``memory`` or a dry run -> the in-memory plane (a dry
run is seeded with a read-only snapshot of the real plane when it can be read, so it prints only
what would really change; it resolves ``auto`` the same way, so it may load ``ip_vs`` too). A
requested plane that is unavailable is a DataplaneError saying why and what to do. The choice is
logged once (``dataplane.select`` with kind and reason) and returned for the status.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass

from hacontrol import logs
from hacontrol.dataplane import genl
from hacontrol.dataplane.base import Dataplane, DataplaneError
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.table import Table
from hacontrol.model import DataplaneConfig

log = logs.get("hacontrol.dataplane.select")

IPVS_PROC = "/proc/net/ip_vs"
IPVS_FAMILY = "IPVS"
FamilyResolver = Callable[[str], int | None]


@dataclass(frozen=True)
class PlaneChoice:
    """The concrete plane kind (ipvs | nftables | memory) and why it was chosen."""

    kind: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "reason": self.reason}


def ipvs_available(proc: str = IPVS_PROC) -> bool:
    return os.path.exists(proc)


def resolve_kind(cfg: DataplaneConfig, proc: str = IPVS_PROC) -> str:
    """The concrete kind ``cfg.kind`` means on this host now (ipvs | nftables | memory), without
    loading anything: after ``choose_plane`` ran, it gives the same answer."""
    if cfg.kind == "auto":
        return "ipvs" if ipvs_available(proc) else "nftables"
    return cfg.kind


async def _request_ipvs(resolve: FamilyResolver, proc: str) -> tuple[bool, str]:
    """Ask for the IPVS genl family (the kernel autoloads ip_vs); (present now, what happened)."""
    try:
        fid = await asyncio.to_thread(resolve, IPVS_FAMILY)
    except (OSError, genl.GenlError) as e:
        return False, f"genl family request failed: {e}"
    if ipvs_available(proc):
        return True, "loaded on demand via genl family request"
    if fid is None:
        return False, "genl family IPVS unknown after autoload attempt"
    return False, f"genl family IPVS is id {fid} but {proc} is missing"


async def choose_plane(
    cfg: DataplaneConfig, proc: str = IPVS_PROC, *, resolve: FamilyResolver = genl.family_id
) -> PlaneChoice:
    """The plane ``cfg`` means on this host and why; may load ``ip_vs`` (see module doc)."""
    if cfg.kind not in ("auto", "ipvs"):
        return PlaneChoice(cfg.kind, f"{cfg.kind}: set in the config")
    said = "config kind ipvs" if cfg.kind == "ipvs" else "auto"
    if ipvs_available(proc):
        return PlaneChoice("ipvs", f"ipvs: {said}, kernel has IPVS ({proc} present)")
    ok, what = await _request_ipvs(resolve, proc)
    if ok:
        return PlaneChoice("ipvs", f"ipvs: {said}, {what}")
    if cfg.kind == "ipvs":  # _make refuses it with the reason to act on
        return PlaneChoice("ipvs", f"ipvs: config kind ipvs, but {what}")
    return PlaneChoice("nftables", f"nftables: kernel has no IPVS ({what})")


def _make(kind: str, cfg: DataplaneConfig, proc: str) -> Dataplane:
    if kind == "ipvs":
        if not ipvs_available(proc):
            raise DataplaneError(
                "ipvs: kernel has no IPVS (the genl family request did not load it, "
                f"{proc} missing; modprobe ip_vs)"
            )
        try:
            # lazy: pyroute2's IPVS is only imported when used
            ipvs = importlib.import_module("hacontrol.dataplane.ipvs")
        except ImportError as e:
            raise DataplaneError(f"ipvs: data plane not available: {e}") from e
        plane: Dataplane = ipvs.IpvsDataplane(proc=proc)
        return plane
    if kind == "nftables":
        if shutil.which("nft") is None:
            raise DataplaneError("nftables: the nft command is not installed (install nftables)")
        from hacontrol.dataplane.nft import NftDataplane

        return NftDataplane(table_name=cfg.nft_table)
    if kind == "memory":
        return MemoryDataplane()
    raise DataplaneError(f"unknown data plane kind {kind!r}")


async def _seed(kind: str, cfg: DataplaneConfig, proc: str) -> Table:
    """A read-only snapshot of the real plane for a dry run; empty when it cannot be read."""
    if kind == "memory":
        return {}
    try:
        real = _make(kind, cfg, proc)
        await real.open()
        try:
            return await real.snapshot(set())
        finally:
            await real.close()
    except Exception as e:  # a dry run must work without root / without the plane
        log.warning("dataplane.dry_run_seed", reason="unreadable", kind=kind, error=str(e))
        return {}


async def open_dataplane(
    cfg: DataplaneConfig,
    dry_run: bool = False,
    *,
    echo: Callable[[str], None] | None = None,
    proc: str = IPVS_PROC,
    resolve: FamilyResolver = genl.family_id,
) -> Dataplane:
    """Build and open the configured plane. ``echo`` receives dry-run lines (default: stdout)."""
    plane, _ = await open_plane(cfg, dry_run, echo=echo, proc=proc, resolve=resolve)
    return plane


async def open_plane(
    cfg: DataplaneConfig,
    dry_run: bool = False,
    *,
    echo: Callable[[str], None] | None = None,
    proc: str = IPVS_PROC,
    resolve: FamilyResolver = genl.family_id,
) -> tuple[Dataplane, PlaneChoice]:
    """``open_dataplane`` that also returns the ``PlaneChoice`` (for the status)."""
    choice = await choose_plane(cfg, proc, resolve=resolve)
    log.info("dataplane.select", kind=choice.kind, reason=choice.reason, config_kind=cfg.kind)
    kind = choice.kind
    if dry_run:
        seed = await _seed(kind, cfg, proc)
        plane: Dataplane = MemoryDataplane(seed, echo=echo or (lambda s: print(s, file=sys.stdout)))
    else:
        plane = _make(kind, cfg, proc)
    await plane.open()
    log.info("dataplane.open", kind=plane.kind, reason=choice.reason, dry_run=dry_run)
    return plane, choice
