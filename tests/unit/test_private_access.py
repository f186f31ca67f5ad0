"""No module in hacontrol/ reads or writes another object's underscore attributes, or imports a
private name or module of another package: each piece of state has one owner behind a public
surface (``self._x``, ``cls._x`` and ``super()._x`` are the owner's own; ``os._exit`` is the
standard library's public way to end a forked child)."""

from __future__ import annotations

import ast
from pathlib import Path

import hacontrol

ROOT = Path(hacontrol.__file__).parent
ALLOWED = {("os", "_exit")}


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def foreign_access(source: str, filename: str = "<src>") -> list[str]:
    """``line: text`` of every foreign underscore access in ``source``."""
    hits: list[str] = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and _private(node.attr):
            owner = node.value
            if isinstance(owner, ast.Name) and (
                owner.id in ("self", "cls") or (owner.id, node.attr) in ALLOWED
            ):
                continue
            if isinstance(owner, ast.Call) and ast.unparse(owner.func) == "super":
                continue  # an override calling the base class's own hook
            hits.append(f"{node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            parts = node.module.split(".")
            names = [a.name for a in node.names]
            if any(_private(p) for p in parts) or (
                parts[0] != "hacontrol" and any(_private(n) for n in names)
            ):
                hits.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
    return hits


def test_the_finder_sees_foreign_access_and_spares_the_owner() -> None:
    src = (
        "import os\nfrom structlog._config import X\nclass A:\n"
        "    def f(self, r):\n"
        "        self._x = 1\n"
        "        r._held = True\n"
        "        os._exit(0)\n"
        "        return r.peer._last, self.__dict__, super()._hook()\n"
    )
    assert foreign_access(src) == [
        "2: from structlog._config import X",
        "6: r._held",
        "8: r.peer._last",
    ]


def test_no_foreign_underscore_access_in_hacontrol() -> None:
    hits = [
        f"{p.relative_to(ROOT.parent)}:{hit}"
        for p in sorted(ROOT.rglob("*.py"))
        for hit in foreign_access(p.read_text(), str(p))
    ]
    assert hits == []
