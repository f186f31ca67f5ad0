"""Config problems: ``ConfigIssue`` (one ``FILE:LINE: FIELD.PATH: reason`` line) and ``Issues``,
the bounded collection a ``Reader`` records them in.

``Issues`` counts every distinct problem (the same line, field and reason reached through several
aliases is one) but keeps only the first ``MAX_ERRORS`` in file order (a heap of the latest kept,
so a file with a million errors costs a hundred lines of output; the CLI prints "... and N
more").
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from dataclasses import field as dc_field

from hacontrol.config.limits import MAX_ERRORS


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file; ``str()`` is ``FILE:LINE: FIELD.PATH: reason``."""

    file: str
    line: int  # 1-based; 0 when the problem is the file itself (unreadable)
    field: str  # dotted path like services[0].real_servers[1].port, or <syntax>/<root>/<file>
    reason: str
    column: int = dc_field(default=0, compare=False, repr=False)  # only orders issues on one line

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line > 0 else self.file
        return f"{where}: {self.field}: {self.reason}"


class Issues:
    """Every issue counted; the first ``keep`` by (line, column, order recorded) kept."""

    def __init__(self, keep: int = MAX_ERRORS) -> None:
        self.keep = keep
        self.count = 0  # distinct issues
        self.recorded = 0  # every call of add(), repeats included: what "clean since" compares
        self._heap: list[tuple[int, int, int, ConfigIssue]] = []  # negated keys: [0] = latest
        self._seen: set[int] = set()  # hashes of the issues recorded

    def add(self, issue: ConfigIssue) -> None:
        """Record ``issue``, unless the same one is already recorded (a node reached through
        several aliases is reported once)."""
        self.recorded += 1
        key = hash((issue.line, issue.column, issue.field, issue.reason))
        if key in self._seen:
            return
        self._seen.add(key)
        self.count += 1
        item = (-issue.line, -issue.column, -self.count, issue)
        if len(self._heap) < self.keep:
            heapq.heappush(self._heap, item)
        elif item[:3] > self._heap[0][:3]:  # earlier in the file than the latest kept
            heapq.heapreplace(self._heap, item)

    def first(self) -> list[ConfigIssue]:
        """The issues kept, in file order."""
        return [item[3] for item in sorted(self._heap, key=lambda i: i[:3], reverse=True)]
