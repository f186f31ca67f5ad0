"""What reading one config file may cost, and the bounds of every duration field.

A hostile or broken file must be refused quickly with a clear line, never pin a CPU: YAML aliases
and merge keys (``<<: [*a, *a]``) share nodes, so a 1 KB file can stand for 10^9 nodes once
expanded. ``check_shape`` measures the composed node graph in one pass that visits each written
node once (no recursion): how many nodes it expands to when every alias is followed, and how deep
it nests. Over the limits it returns the ``(line, reason)`` of the ``<root>`` error to report
before the file is walked at all. Besides that the ``Reader`` stops walking after ``TIME_BUDGET``
seconds of CPU time (the thread's own: a busy machine does not refuse a good file) and keeps
only the first ``MAX_ERRORS`` errors (by line) while counting all of them.

``DURATIONS`` is the range of each duration field (docs/config.md lists the same ranges; a test
keeps the two in step).
"""

from __future__ import annotations

from typing import NamedTuple

from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_ERRORS = 100  # errors kept and printed; the rest are counted ("... and N more")
TIME_BUDGET = 60.0  # CPU seconds to compose and walk one file (100,000 real servers: ~8 s)
MAX_DEPTH = 64  # nesting levels, aliases followed (a real config nests about 6)
EXPANSION_FACTOR = 10  # aliases may expand a file to this many times the nodes written...
EXPANSION_FLOOR = 200_000  # ...or to this many nodes, whichever is more


class Span(NamedTuple):
    """The range of a duration field in seconds; ``off``: 0 is also accepted (switched off)."""

    lo: float
    hi: float
    off: bool = False


DURATIONS: dict[str, Span] = {
    "check.interval": Span(0.1, 3600.0),
    "check.timeout": Span(0.01, 600.0),
    "services[].persistence": Span(0.0, 86400.0),
    "dataplane.resync_interval": Span(1.0, 3600.0),
    "dataplane.drain_removed": Span(1.0, 7 * 86400.0, off=True),
    "ha.interval": Span(0.01, 10.0),
    "ha.preempt_delay": Span(0.0, 3600.0),
    "ha.notify_timeout": Span(0.1, 600.0),
    "ha.lease": Span(1.0, 86400.0),
    "ha.announce.interval": Span(0.01, 10.0),
    "ha.announce.refresh": Span(1.0, 86400.0, off=True),
    "ha.track.gateway_interval": Span(0.1, 600.0),
}


def _children(node: Node) -> list[Node]:
    if isinstance(node, MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, SequenceNode):
        return list(node.value)
    return []


def _count(n: int) -> str:
    return f"{n:,}" if n < 10**15 else f"about 10^{len(str(n)) - 1}"


def check_shape(root: Node) -> tuple[int, str] | None:
    """``(line, reason)`` when the graph under ``root`` nests deeper than ``MAX_DEPTH`` or
    expands (every alias followed) to more than ``max(EXPANSION_FLOOR, EXPANSION_FACTOR x the
    nodes written)``; None when it is within both. Each distinct collection is visited once,
    without recursion; the nodes written are the children of those collections (an alias
    written counts as one). An alias to a node that contains it (a cycle) counts as one node
    here; the ``Reader`` refuses a mapping merged into itself."""
    size: dict[int, int] = {}  # id(collection) -> nodes when expanded
    height: dict[int, int] = {}  # id(collection) -> nesting levels, itself included
    open_: set[int] = {id(root)}  # on the current path (a child among them is a cycle)
    order: list[Node] = []  # collections in post-order: descendants before ancestors
    written = 1
    stack = [(root, iter(_children(root)))]
    while stack:
        node, rest = stack[-1]
        for child in rest:
            cid = id(child)
            if type(child) is not ScalarNode and cid not in size and cid not in open_:
                open_.add(cid)
                stack.append((child, iter(_children(child))))
                break
        else:
            stack.pop()
            nid = id(node)
            open_.discard(nid)
            kids = _children(node)
            written += len(kids)
            size[nid] = 1 + sum(size.get(id(c), 1) for c in kids)
            height[nid] = 1 + max((height.get(id(c), 1) for c in kids), default=0)
            order.append(node)
    for node in order:
        if height[id(node)] > MAX_DEPTH:
            return node.start_mark.line + 1, (
                f"nested more than {MAX_DEPTH} levels deep (aliases followed); "
                "a config nests about 6"
            )
    limit = max(EXPANSION_FLOOR, EXPANSION_FACTOR * written)
    for node in order:
        if size[id(node)] > limit:
            return node.start_mark.line + 1, (
                f"aliases and merge keys expand this node to {_count(size[id(node)])} nodes, "
                f"more than the limit of {limit:,} ({EXPANSION_FACTOR} x the {written:,} "
                f"nodes written, at least {EXPANSION_FLOOR:,}): refused as an alias bomb"
            )
    return None
