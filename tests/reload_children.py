"""Finding the reload parser children (``hacontrol.reload_parse``) of a process through /proc:
shared by the unit reload tests (children of the test process) and the daemon tests (children
of a real daemon)."""

from __future__ import annotations

import os


def parser_children(parent: int, path: str | os.PathLike[str] | None = None) -> list[int]:
    """Pids of the live (not zombie) ``hacontrol.reload_parse`` children of ``parent``; with
    ``path``, only those parsing that file."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ours = fields[0] != "Z" and int(fields[1]) == parent and b"hacontrol.reload_parse" in argv
        if ours and (path is None or os.fsencode(path) in argv):
            pids.append(int(entry))
    return pids
