"""Choose and open the data plane the config asks for.

``auto`` -> IPVS when the kernel has it (``/proc/net/ip_vs``), else nftables; ``memory`` or a dry
run -> the in-memory plane (a dry run is seeded with a read-only snapshot of the real plane when it
can be read, so it prints only what would really change). A requested plane that is unavailable
is a DataplaneError saying why and what to do.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from collections.abc import Callable

from hacontrol import logs
from hacontrol.dataplane.base import Dataplane, DataplaneError
from hacontrol.dataplane.memory import MemoryDataplane
from hacontrol.dataplane.table import Table
from hacontrol.model import DataplaneConfig

log = logs.get("hacontrol.dataplane.select")

IPVS_PROC = "/proc/net/ip_vs"


def ipvs_available(proc: str = IPVS_PROC) -> bool:
    return os.path.exists(proc)


def resolve_kind(cfg: DataplaneConfig, proc: str = IPVS_PROC) -> str:
    """The concrete kind ``cfg.kind`` means on this host (ipvs | nftables | memory)."""
    if cfg.kind == "auto":
        return "ipvs" if ipvs_available(proc) else "nftables"
    return cfg.kind


def _make(kind: str, cfg: DataplaneConfig, proc: str) -> Dataplane:
    if kind == "ipvs":
        if not ipvs_available(proc):
            raise DataplaneError(f"ipvs: kernel has no IPVS ({proc} missing; modprobe ip_vs)")
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
) -> Dataplane:
    """Build and open the configured plane. ``echo`` receives dry-run lines (default: stdout)."""
    kind = resolve_kind(cfg, proc)
    if dry_run:
        seed = await _seed(kind, cfg, proc)
        plane: Dataplane = MemoryDataplane(seed, echo=echo or (lambda s: print(s, file=sys.stdout)))
    else:
        plane = _make(kind, cfg, proc)
    await plane.open()
    log.info("dataplane.open", kind=plane.kind, reason=f"config kind {cfg.kind}", dry_run=dry_run)
    return plane
