"""Read our nftables tables back in a child process, so the big parse never holds the daemon.

A periodic resync reads all our tables (``nft -j list ruleset inet``, other tables skipped:
one nft run for the main table and every service table): at 10,000 destinations that is
a ~5 MB JSON document whose ``json.loads`` alone holds the interpreter for ~100 ms, a thread does
not help (the GIL), and the event loop also sends the heartbeats. So ``python -m
hacontrol.dataplane.nft_read TABLE [NETNS]`` runs nft, parses and checks the listing
(``NftRenderer.parse``, hand edits read back ``altered:``) and writes ``marshal`` frames (a
4-byte length, then the data) to stdout: first ``("ok", count)`` (how many service tables
the services are in), ``("absent",)`` (none of our tables) or ``("error", text)``, then for "ok"
the rows, a slice a frame; a row is ``(proto, vip, port, scheduler, persistence, ((address,
port, weight, forwarding), ...))``. The parent
(``read_table``) waits on the loop with a deadline (the child is killed on timeout or
cancellation), then loads one frame and builds its services at a time, yielding between frames
(one ``marshal.loads`` of the whole 37,000 destinations would hold the loop ~40 ms). The child
is our own code run by the same interpreter: its output is trusted, and capped (``MAX_OUTPUT``).
When this user cannot run the interpreter again (a virtualenv under a 0700 home), the same work
runs on a worker thread in the daemon instead, logged once as ``dataplane.reader_fallback``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import marshal
import struct
import subprocess
import sys
from typing import Any

from hacontrol import logs
from hacontrol.dataplane.base import DataplaneError
from hacontrol.dataplane.nft_render import FAMILY, NftRenderer
from hacontrol.dataplane.slices import SLICE, WORK
from hacontrol.dataplane.table import (
    DestKey,
    DestSpec,
    ServiceKey,
    ServiceSpec,
    Table,
    TableService,
)

log = logs.get("hacontrol.dataplane.nft_read")
_fallback_logged = False  # the fallback is logged once per process

MAX_OUTPUT = 512 << 20  # bytes of marshal the parent reads at most
Row = tuple[str, str, int, str, int, tuple[tuple[str, int, int, str], ...]]


def rows_of(table: Table) -> list[Row]:
    """The marshal-able form of a table (pure)."""
    return [
        (k.protocol, k.address, k.port, s.spec.scheduler, s.spec.persistence,
         tuple((d.address, d.port, v.weight, v.forwarding) for d, v in s.dests.items()))
        for k, s in table.items()
    ]  # fmt: skip


def add_rows(out: Table, rows: list[Row]) -> Table:
    """``rows`` into ``out`` as table services (pure)."""
    for proto, vip, port, sched, pers, dests in rows:
        out[ServiceKey(proto, vip, port)] = TableService(  # type: ignore[arg-type]
            ServiceSpec(sched, pers),
            {DestKey(a, p): DestSpec(w, f) for a, p, w, f in dests},  # type: ignore[arg-type]
        )
    return out


def frames(record: tuple[Any, ...], rows: list[Row] | None = None) -> bytes:
    """The child's answer: the record, then ``rows`` a slice at a time (at most ``SLICE``
    services, about ``WORK`` destinations), each a frame."""
    parts = [marshal.dumps(record)]
    piece: list[Row] = []
    work = 0
    for row in rows or ():
        if piece and (len(piece) >= SLICE or work + len(row[5]) > WORK):
            parts.append(marshal.dumps(piece))
            piece, work = [], 0
        piece.append(row)
        work += len(row[5])
    if piece:
        parts.append(marshal.dumps(piece))
    return b"".join(struct.pack("=I", len(p)) + p for p in parts)


async def unframe(data: bytes) -> tuple[tuple[Any, ...], Table]:
    """The record and the table of ``frames``' output, one frame between two yields."""
    view, off = memoryview(data), 0
    record: tuple[Any, ...] | None = None
    table: Table = {}
    while off < len(data):
        if off + 4 > len(data):
            raise ValueError("truncated frame header")
        (n,) = struct.unpack_from("=I", data, off)
        if off + 4 + n > len(data):
            raise ValueError("truncated frame")
        item = marshal.loads(view[off + 4 : off + 4 + n])
        off += 4 + n
        if record is None:
            record = tuple(item)
        else:
            add_rows(table, item)
            await asyncio.sleep(0)
    if record is None:
        raise ValueError("no record")
    return record, table


def read_here(
    table_name: str, netns: str | None = None, limit: float = 10.0
) -> tuple[tuple[Any, ...], list[Row] | None]:
    """The child's work: list, parse, answer a record and the rows (never raises for a bad
    listing)."""
    # -p: protocols as numbers, so the listing is the same with or without /etc/protocols
    # (ports are numbers unless -S is given); the parser reads both forms anyway
    argv = ["nft", "-j", "-p", "list", "ruleset", FAMILY]
    if netns:
        argv = ["ip", "netns", "exec", netns, *argv]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return ("error", f"nftables: list ruleset {FAMILY}: {e}"), None
    if r.returncode != 0:
        return ("error", f"nftables: list ruleset {FAMILY}: {r.stderr.strip()}"), None
    renderer = NftRenderer(table_name)
    try:
        doc = json.loads(r.stdout) if r.stdout.strip() else {"nftables": []}
        if not any(renderer.owns(i["table"]["name"]) for i in doc["nftables"] if "table" in i):
            return ("absent",), None
        table, count = renderer.parse_layout(doc)
    except (ValueError, KeyError, TypeError) as e:
        return ("error", f"nftables: cannot parse table {table_name}: {e}"), None
    return ("ok", count), rows_of(table)


async def read_table(
    table_name: str, netns: str | None = None, limit: float = 10.0
) -> tuple[Table, int] | None:
    """Our tables as the kernel holds them, read by a child process, and how many service
    tables they spread the services over; None when there is none.
    DataplaneError when nft fails, the listing cannot be parsed or the child misbehaves."""
    argv = [sys.executable, "-m", "hacontrol.dataplane.nft_read", table_name]
    if netns:
        argv.append(netns)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as e:
        # the interpreter cannot be run again by this user (a virtualenv under a 0700 home):
        # read here instead, on a worker thread; the parse then shares the interpreter
        return await _read_in_process(table_name, netns, limit, e)
    try:
        async with asyncio.timeout(limit + 5.0):
            out, err = await proc.communicate()
    except BaseException:  # timeout or the daemon stops: no orphan reader
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        if isinstance(sys.exc_info()[1], TimeoutError):
            raise DataplaneError(f"nftables: reading table {table_name} timed out") from None
        raise
    if proc.returncode != 0 or not out or len(out) > MAX_OUTPUT:
        tail = err.decode(errors="replace").strip()[-500:]
        raise DataplaneError(f"nftables: the table reader failed (exit {proc.returncode}): {tail}")
    try:
        record, table = await unframe(out)
    except (ValueError, EOFError, TypeError) as e:
        raise DataplaneError(f"nftables: the table reader's answer is malformed: {e}") from e
    if record[0] == "absent":
        return None
    if record[0] == "error":
        raise DataplaneError(str(record[1]))
    return table, int(record[1])


async def _read_in_process(
    table_name: str, netns: str | None, limit: float, why: OSError
) -> tuple[Table, int] | None:
    global _fallback_logged
    if not _fallback_logged:
        _fallback_logged = True
        log.warning(
            "dataplane.reader_fallback",
            reason=f"cannot start the table reader child ({why}); reading in the daemon",
            interpreter=sys.executable,
        )
    record, rows = await asyncio.to_thread(read_here, table_name, netns, limit)
    if record[0] == "absent":
        return None
    if record[0] == "error":
        raise DataplaneError(str(record[1]))
    table: Table = {}
    for start in range(0, len(rows or ()), SLICE):
        add_rows(table, (rows or [])[start : start + SLICE])
        await asyncio.sleep(0)
    return table, int(record[1])


def main() -> None:
    name = sys.argv[1]
    netns = sys.argv[2] if len(sys.argv) > 2 else None
    sys.stdout.buffer.write(frames(*read_here(name, netns)))


if __name__ == "__main__":
    main()
