"""hacontrol/ha's modules import each other without a cycle (TYPE_CHECKING imports included),
and none reads or writes another object's underscore attributes."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import hacontrol.ha

HA = Path(hacontrol.ha.__file__).parent


def imports_of(path: Path) -> set[str]:
    """The hacontrol.ha modules ``path`` imports, anywhere in it (functions, TYPE_CHECKING)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "hacontrol.ha":
                out |= {f"hacontrol.ha.{a.name}" for a in node.names}
            elif node.module.startswith("hacontrol.ha."):
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("hacontrol.ha.")}
    return out


def graph() -> dict[str, set[str]]:
    mods = {f"hacontrol.ha.{p.stem}": p for p in HA.glob("*.py") if p.stem != "__init__"}
    return {m: imports_of(p) & mods.keys() for m, p in mods.items()}


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``g`` (a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(g[m]):
            if state.get(n) == 1:
                return [*path[path.index(n) :], n]
            if n not in state and (found := visit(n)):
                return found
        state[m] = 2
        path.pop()
        return None

    for m in sorted(g):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_cycle_finder_finds_one() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_in_ha() -> None:
    g = graph()
    assert "hacontrol.ha.runner_actions" in g["hacontrol.ha.runner"]  # the walker sees imports
    assert cycle(g) is None


FOREIGN = re.compile(r"\b(?!self\b)[a-z_][a-z0-9_]*\._[a-z]")


def test_no_foreign_underscore_access_in_ha() -> None:
    hits = [
        f"{p.name}:{i}: {line.strip()}"
        for p in sorted(HA.glob("*.py"))
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if FOREIGN.search(line.split("#")[0])
    ]
    assert hits == []
