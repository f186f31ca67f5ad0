"""No import cycles in hacontrol/: every import is followed, TYPE_CHECKING-guarded and
function-local ones included, relative and absolute, and a cycle fails naming its modules."""

from __future__ import annotations

import ast
from pathlib import Path

import hacontrol

ROOT = Path(hacontrol.__file__).parent
PACKAGE = "hacontrol"


def module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def resolve(target: str, known: set[str]) -> str | None:
    """The hacontrol module ``target`` names (a module, or a name inside a package/module)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Every hacontrol module ``name`` imports, wherever the import statement is."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            # "from pkg import mod" imports pkg.mod when it is a module, else a name of pkg
            targets = [f"{base}.{a.name}" for a in node.names] or [base]
        for t in targets:
            mod = resolve(t, known)
            if mod is not None and mod != name:
                found.add(mod)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, plus
    one concrete cycle path through each for the message."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return sorted(out)


def a_cycle(g: dict[str, set[str]], comp: list[str]) -> list[str]:
    """One import path inside ``comp`` that comes back to where it started."""
    members = set(comp)
    start = comp[0]
    path = [start]
    seen = {start}
    while True:
        nxt = sorted(w for w in g[path[-1]] if w in members)
        back = [w for w in nxt if w in seen]
        if start in nxt:
            return [*path, start]
        if back:
            return [*path[path.index(back[0]) :], back[0]]
        path.append(nxt[0])
        seen.add(nxt[0])


def test_the_walker_sees_every_kind_of_import(tmp_path: Path) -> None:
    src = (
        "from __future__ import annotations\n"
        "from typing import TYPE_CHECKING\n"
        "import hacontrol.clock\n"
        "from . import logs\n"
        "from .dataplane import table\n"
        "from hacontrol.model import Config\n"
        "if TYPE_CHECKING:\n"
        "    from hacontrol.daemon import Daemon\n"
        "def f() -> None:\n"
        "    from hacontrol.ha import runner\n"
    )
    path = tmp_path / "x.py"
    path.write_text(src)
    known = set(modules())
    assert imports_of("hacontrol.x", path, known) == {
        "hacontrol.clock",
        "hacontrol.logs",
        "hacontrol.dataplane.table",
        "hacontrol.model",
        "hacontrol.daemon",
        "hacontrol.ha.runner",
    }
    g = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set()}
    assert cycles(g) == [["a", "b", "c"]]
    assert a_cycle(g, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycles() -> None:
    g = graph()
    assert len(g) > 40 and "hacontrol.daemon" in g  # the walk really covers the package
    found = cycles(g)
    lines = [" -> ".join(a_cycle(g, comp)) + f"   (all of: {', '.join(comp)})" for comp in found]
    assert not found, f"{len(found)} import cycle(s) in hacontrol/:\n" + "\n".join(lines)
