"""A small YAML emitter that keeps the order of keys and writes comments where they were put.

The document is built of ``Map`` (ordered ``(key, value, trailing comment)`` entries and
``Comment``s), ``Seq`` (values and ``Comment``s), ``Flow`` (a short list or mapping of scalars on
one line) and scalars. Strings are written plain only when YAML reads them back as the same
string (checked with PyYAML's own resolver: ``yes``, ``1:20`` or ``null`` get quoted), else
double-quoted with every non-printable or non-ASCII character escaped; comments have their
control characters replaced, so no input can end a comment early or break the document.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeAlias

import yaml

Scalar: TypeAlias = str | int | float | bool | None
_PLAIN = re.compile(r"[A-Za-z0-9_/.\[][A-Za-z0-9_/.:@+\-]*")
WIDTH = 100


@dataclass(frozen=True)
class Comment:
    text: str


@dataclass
class Flow:
    """A list or mapping of scalars written on one line: ``[1, 2]``, ``{address: x, port: 80}``."""

    value: Sequence[Scalar] | Mapping[str, Scalar]


@dataclass
class Map:
    entries: list[tuple[str, Value, str | None] | Comment] = field(default_factory=list)

    def add(self, key: str, value: Value, comment: str | None = None) -> None:
        self.entries.append((key, value, comment))

    def note(self, text: str) -> None:
        self.entries.append(Comment(text))


@dataclass
class Seq:
    items: list[Value | Comment] = field(default_factory=list)


Value: TypeAlias = "Scalar | Flow | Map | Seq"


def emit(doc: Map, header: list[str] | None = None) -> str:
    """The YAML text of ``doc``, after ``header`` comment lines."""
    out: list[str] = []
    for text in header or []:
        _comment(out, "", text)
    _map(out, doc, "")
    return "\n".join(out) + "\n"


def scalar(v: Scalar) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if _PLAIN.fullmatch(v) and not v.startswith("["):
        try:
            if yaml.safe_load(v) == v:
                return v
        except yaml.YAMLError:
            pass
    return _quoted(v)


def _quoted(s: str) -> str:
    out = ['"']
    for c in s:
        o = ord(c)
        if c in '"\\':
            out.append("\\" + c)
        elif 0x20 <= o < 0x7F:
            out.append(c)
        elif o <= 0xFF:
            out.append(f"\\x{o:02x}")
        elif o <= 0xFFFF:
            out.append(f"\\u{o:04x}")
        else:
            out.append(f"\\U{o:08x}")
    out.append('"')
    return "".join(out)


def _flow(v: Value) -> str:
    if isinstance(v, Flow):
        if isinstance(v.value, Mapping):
            return "{" + ", ".join(f"{scalar(k)}: {scalar(x)}" for k, x in v.value.items()) + "}"
        return "[" + ", ".join(scalar(x) for x in v.value) + "]"
    if isinstance(v, Map):
        return "{}"
    if isinstance(v, Seq):
        return "[]"
    return scalar(v)


def _comment(out: list[str], indent: str, text: str) -> None:
    clean = "".join(c if c.isprintable() else "?" for c in text)
    lines = textwrap.wrap(clean, WIDTH - len(indent) - 2, break_long_words=False,
                          break_on_hyphens=False) or [""]
    out.append(f"{indent}# {lines[0]}".rstrip())
    out.extend(f"{indent}#   {more}" for more in lines[1:])


def _trail(text: str | None) -> str:
    if not text:
        return ""
    return "  # " + "".join(c if c.isprintable() else "?" for c in text)


def _nested(v: Value) -> bool:
    return (isinstance(v, Map) and bool(v.entries)) or (isinstance(v, Seq) and bool(v.items))


def _map(out: list[str], m: Map, indent: str, first: str | None = None) -> None:
    """Entries of ``m`` at ``indent``; ``first`` replaces the indent of the first key line
    (a ``- `` of a list item)."""
    for entry in m.entries:
        if isinstance(entry, Comment):
            _comment(out, indent, entry.text)
            continue
        key, value, comment = entry
        lead = first if first is not None else indent
        first = None
        line = f"{lead}{scalar(key)}:" + ("" if _nested(value) else f" {_flow(value)}")
        if comment and len(line) + len(_trail(comment)) > WIDTH:  # a long comment: above
            _comment(out, indent, comment)
            comment = None
        if _nested(value):
            out.append(f"{lead}{scalar(key)}:{_trail(comment)}")
            if isinstance(value, Map):
                _map(out, value, indent + "  ")
            else:
                assert isinstance(value, Seq)
                _seq(out, value, indent + "  ")
        else:
            out.append(f"{lead}{scalar(key)}: {_flow(value)}{_trail(comment)}")


def _seq(out: list[str], s: Seq, indent: str) -> None:
    for item in s.items:
        if isinstance(item, Comment):
            _comment(out, indent, item.text)
        elif isinstance(item, Map) and item.entries:
            k = 0
            for entry in item.entries:  # comments before the first key: above the "- " line
                if not isinstance(entry, Comment):
                    break
                _comment(out, indent, entry.text)
                k += 1
            _map(out, Map(item.entries[k:]), indent + "  ", first=indent + "- ")
        else:
            assert not isinstance(item, Seq), "lists of lists are not written"
            out.append(f"{indent}- {_flow(item)}")
