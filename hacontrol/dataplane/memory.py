"""An in-memory data plane: the Dataplane protocol over a dict, for unit tests and ``--dry-run``.

It behaves like an incremental kernel plane: ``apply`` replays the actions in order and refuses
the ones the kernel would refuse (adding an existing service, removing a missing destination),
as a DataplaneError, leaving the table as it was. Every applied action is recorded (``applied``)
and, when ``echo`` is given (dry run), passed to it as text and logged as ``dataplane.dry_run``.
``whole_table`` makes it behave like a plane whose table is all ours (nftables).
Failure injection for tests: ``fail_next`` applies and ``fail_snapshots`` snapshots fail with a
DataplaneError before doing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.diff import Action, apply_actions
from hacontrol.dataplane.table import ServiceKey, Table, copy_table

log = logs.get("hacontrol.dataplane.memory")


class MemoryDataplane:
    """A kernel table held in a dict."""

    kind = "memory"
    forwarding_in_place = True

    def __init__(
        self,
        initial: Table | None = None,
        *,
        whole_table: bool = False,
        fail_next: int = 0,
        fail_snapshots: int = 0,
        echo: Callable[[str], None] | None = None,
    ) -> None:
        self.table: Table = copy_table(initial or {})
        self.whole_table = whole_table  # True: behave like a plane of our own (nftables)
        self.fail_next = fail_next
        self.fail_snapshots = fail_snapshots
        self.echo = echo
        self.applied: list[Action] = []  # every action applied, in order
        self.apply_calls = 0
        self.snapshot_calls = 0
        self.opened = False
        self.closed = False

    def watch(self, changed: Callable[[str, int], None]) -> None:
        """No change notifications watched: drift is repaired at the periodic resync."""

    def expect(self, services: int) -> None:
        """One layout whatever the size: nothing to pick."""

    def ipvs_requests(self) -> None:
        return None

    async def open(self) -> None:
        self.opened = True

    async def snapshot(self, owned: set[ServiceKey]) -> Table:
        self.snapshot_calls += 1
        if self.fail_snapshots > 0:
            self.fail_snapshots -= 1
            raise DataplaneError("memory: injected snapshot failure")
        return copy_table(self.table)

    async def apply(self, desired: Table, actions: Sequence[Action]) -> None:
        self.apply_calls += 1
        if self.fail_next > 0:
            self.fail_next -= 1
            raise DataplaneError("memory: injected apply failure")
        try:
            new = apply_actions(self.table, actions)
        except ValueError as e:
            raise DataplaneError(f"memory: {e}") from e
        self.table = new
        self.applied.extend(actions)
        if self.echo is not None:
            for a in actions:
                self.echo(f"would apply: {a}")
                log.info("dataplane.dry_run", action=str(a), reason="dry-run")

    async def close(self) -> None:
        self.closed = True

    # test helpers: edits "by hand", as an admin would with ipvsadm
    def edit(self, change: Callable[[Table], None]) -> None:
        """Change the table behind the daemon's back (simulated drift)."""
        change(self.table)
