"""The nftables data plane: the whole desired table as ONE nftables table the daemon owns.

For kernels without IPVS. Every apply renders the desired ``Table`` into one ``inet`` table and
replaces it atomically in one transaction (``nft -j -f -``: add + delete + add table and all its
contents in one batch; established flows keep their conntrack NAT bindings). Other nftables
tables are never touched. An empty desired table deletes our table.

Rendering and parsing (the table layout, the slot schedules, detecting hand edits) live in the
pure ``hacontrol.dataplane.nft_render``; this module runs ``nft`` and is the ``Dataplane``.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Sequence

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action
from hacontrol.dataplane.nft_render import (
    ALTERED,
    EXACT,
    FAMILY,
    MAX_SLOTS,
    NAT_CHAINS,
    WEIGHT_MAPS,
    NftRenderer,
    check,
    parse_key,
    slots_for,
    smooth_slots,
)
from hacontrol.dataplane.table import ServiceKey, Table

__all__ = [
    "ALTERED",
    "EXACT",
    "FAMILY",
    "MAX_SLOTS",
    "NAT_CHAINS",
    "WEIGHT_MAPS",
    "NftDataplane",
    "NftRenderer",
    "check",
    "parse_key",
    "run_nft",
    "slots_for",
    "smooth_slots",
]

log = logs.get("hacontrol.dataplane.nft")


async def run_nft(
    *args: str, stdin: bytes | None = None, netns: str | None = None, limit: float = 10.0
) -> tuple[int, str, str]:
    """Run nft (in the named namespace ``netns`` if given, killed after ``limit`` seconds):
    (exit status, stdout, stderr).

    A batch goes in through a memfd, not a pipe: nft opens ``-f -`` as /dev/stdin, which fails
    on the socketpairs uvloop uses for subprocess pipes. Shared by every nftables table the daemon
    owns (the data plane's, the SNAT one)."""
    argv = ["nft", *args]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    fd = os.memfd_create("hacontrol-nft")
    try:
        if stdin:
            os.write(fd, stdin)
            os.lseek(fd, 0, os.SEEK_SET)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=fd,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise DataplaneError(f"nftables: cannot run nft: {e}") from e
    finally:
        os.close(fd)
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise DataplaneError(f"nftables: nft {args[0]} timed out after {limit}s") from None
    return proc.returncode or 0, out.decode(), err.decode().strip()


class NftDataplane(NftRenderer):
    """One nftables table rendered from the desired table, replaced atomically."""

    kind = "nftables"
    forwarding_in_place = True  # whole-table plane: actions are informative only
    whole_table = True  # every service in our table is ours (the reconciler owns them all)

    def ipvs_requests(self) -> None:
        """No kernel IPVS connections: in-flight ones are kept by the connection hand-off."""
        return None

    def __init__(
        self, table_name: str = "hacontrol", *, netns: str | None = None, timeout: float = 10.0
    ) -> None:
        super().__init__(table_name)
        self.netns = netns  # run nft inside this named namespace (lab, tests)
        self.timeout = timeout
        self._warned: set[str] = set()

    def _warn_approximations(self, table: Table) -> None:
        for svc in table.values():
            sched = svc.spec.scheduler
            if sched not in EXACT and sched not in self._warned:
                self._warned.add(sched)
                log.warning(
                    "dataplane.nft_approximation",
                    scheduler=sched,
                    reason=f"nftables has no {sched}: weighted round-robin (numgen) used",
                )

    # -- the Dataplane protocol -----------------------------------------------------------------

    async def _nft(self, *args: str, stdin: bytes | None = None) -> tuple[int, str, str]:
        return await run_nft(*args, stdin=stdin, netns=self.netns, limit=self.timeout)

    async def open(self) -> None:
        rc, _, err = await self._nft("-j", "list", "tables")
        if rc != 0:
            raise DataplaneError(f"nftables: cannot list tables: {err} (needs root/CAP_NET_ADMIN)")

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        # -p: protocols as numbers, so the listing is the same with or without /etc/protocols
        # (ports are numbers unless -S is given); the parser reads both forms anyway
        rc, out, err = await self._nft("-j", "-p", "list", "table", FAMILY, self.table_name)
        if rc != 0:
            if "No such file or directory" in err:
                return {}
            raise DataplaneError(f"nftables: list table {self.table_name}: {err}")
        try:
            return self.parse(json.loads(out))
        except (ValueError, KeyError, TypeError) as e:
            raise DataplaneError(f"nftables: cannot parse table {self.table_name}: {e}") from e

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        doc = self.render(desired)
        self._warn_approximations(desired)
        rc, _, err = await self._nft("-j", "-f", "-", stdin=json.dumps(doc).encode())
        if rc != 0:
            raise DataplaneError(f"nftables: apply failed: {err[-500:]}")

    async def remove(self) -> None:
        """Delete our table (stop without keep_on_stop; tests): the batch of an empty table."""
        doc = self.render({})
        rc, _, err = await self._nft("-j", "-f", "-", stdin=json.dumps(doc).encode())
        if rc != 0:
            raise DataplaneError(f"nftables: delete table {self.table_name}: {err}")

    async def close(self) -> None:
        """Nothing to release; the table stays (a restart must not drop traffic)."""
