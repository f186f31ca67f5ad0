"""keepalived.conf -> a tree of ``Node``s: keyword, arguments, optional ``{}`` block, file:line.

The logical lines come from ``keepalived_source`` (includes read in place, comments, ``@host``
lines and definitions applied). As keepalived's ``read_line`` does, each ``{`` or ``}`` outside
``"..."`` ends a statement and is one by itself, so ``a { b 1; c { d } }`` on one line and the
same over many lines give the same tree; a ``{`` opens the block of the statement just before it
(on its line or an earlier one). Words are split as ``alloc_strvec_r`` does: blanks separate,
``"..."`` is one word without its quotes (no escapes; scripts are split again from ``Node.raw``
by ``split_script``, keepalived's shell-like ``alloc_strvec_quoted_escaped``). Unbalanced braces
and unmatched quotes are errors at the line concerned.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field

from hacontrol.migrate.keepalived_source import Issue, KeepalivedError, Line, Source

_BLANKS = " \t\f\n\r\v"
_ESCAPES = {"a": "\a", "b": "\b", "E": "\x1b", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
            "v": "\v"}


@dataclass
class Node:
    """One statement: ``words[0]`` is the keyword; ``children`` is its block (None: none)."""

    words: tuple[str, ...]
    file: str
    line: int
    raw: str  # the statement's text, for the keywords keepalived splits again (scripts)
    children: list[Node] | None = None

    @property
    def keyword(self) -> str:
        return self.words[0]

    @property
    def args(self) -> tuple[str, ...]:
        return self.words[1:]

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"

    def issue(self, what: str) -> Issue:
        return Issue(self.file, self.line, what)

    def block(self) -> list[Node]:
        return self.children or []


@dataclass
class Parsed:
    """The top-level statements of the file (and its includes), and the reader's notes."""

    nodes: list[Node]
    warnings: list[Issue] = field(default_factory=list)


def default_host() -> str:
    """keepalived's default config-id: the host name up to its first dot."""
    return socket.gethostname().split(".", 1)[0]


def parse_file(path: str, host: str | None = None) -> Parsed:
    """Read and parse ``path``; raises KeepalivedError listing every error found."""
    src = Source(host=host if host is not None else default_host())
    lines = src.read(path)
    nodes, errors = build_tree(lines)
    if errors:
        raise KeepalivedError(errors)
    return Parsed(nodes, src.warnings)


def build_tree(lines: list[Line]) -> tuple[list[Node], list[Issue]]:
    """The statements of ``lines`` nested by their braces, and the errors found."""
    roots: list[Node] = []
    stack: list[Node] = []
    errors: list[Issue] = []
    prev: Node | None = None  # the statement just before, if nothing came in between
    for ln in lines:
        for st in split_statements(ln.text):
            current = stack[-1].children if stack else roots
            assert current is not None
            if st == "{":
                if prev is None or prev.children is not None:
                    errors.append(Issue(ln.file, ln.line, "'{' without a keyword before it"))
                    prev = Node(("{",), ln.file, ln.line, "{")
                prev.children = []
                stack.append(prev)
                prev = None
            elif st == "}":
                if stack:
                    stack.pop()
                else:
                    errors.append(Issue(ln.file, ln.line, "'}' without a '{' to close"))
                prev = None
            else:
                words = split_words(st)
                if words is None:
                    errors.append(Issue(ln.file, ln.line, f"unmatched quote in {st!r}"))
                    prev = None
                    continue
                prev = Node(tuple(words), ln.file, ln.line, st)
                current.append(prev)
    for node in stack:
        what = " ".join(node.words[:2])
        errors.append(node.issue(f"the '{{' of {what!r} is never closed"))
    return roots, errors


def split_statements(text: str) -> list[str]:
    """``text`` cut before and after every ``{`` and ``}`` outside ``"..."``."""
    out: list[str] = []
    while text:
        if text[0] in "{}":
            out.append(text[0])
            text = text[1:].lstrip(" \t")
            continue
        i = _brace(text)
        if i < 0:
            out.append(text.rstrip(" \t"))
            break
        out.append(text[:i].rstrip(" \t"))
        text = text[i:]
    return [s for s in out if s]


def _brace(text: str) -> int:
    i = 0
    while i < len(text):
        c = text[i]
        if c in "{}":
            return i
        if c == '"':
            j = text.find('"', i + 1)
            if j < 0:
                return -1
            i = j
        i += 1
    return -1


def split_words(text: str) -> list[str] | None:
    """keepalived's ``alloc_strvec_r``: words, ``"..."`` one word; None on an open quote."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _BLANKS:
            i += 1
        if i >= n:
            return words
        if text[i] == '"':
            j = text.find('"', i + 1)
            if j < 0:
                return None
            words.append(text[i + 1 : j])
            i = j + 1
            continue
        j = i
        while j < n and text[j] not in _BLANKS and text[j] != '"':
            j += 1
        words.append(text[i:j])
        i = j


def split_script(text: str) -> list[str] | None:
    """keepalived's ``alloc_strvec_quoted_escaped``, the splitting of script lines: ``"..."``
    and ``'...'`` quote (blanks kept), backslash escapes as in the shell's ``$'...'``; None
    when a quote is left open or the text ends in a backslash."""
    words: list[str] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _BLANKS:
            i += 1
        if i >= n:
            return words
        out: list[str] = []
        quote = ""
        while i < n:
            c = text[i]
            if c == "\\":
                if i + 1 >= n:
                    return None
                ch, i = _escape(text, i + 1)
                out.append(ch)
            elif quote:
                if c == quote:
                    quote = ""
                else:
                    out.append(c)
                i += 1
            elif c in "\"'":
                quote = c
                i += 1
            elif c in _BLANKS:
                break
            else:
                out.append(c)
                i += 1
        if quote:
            return None
        words.append("".join(out))


def _escape(text: str, i: int) -> tuple[str, int]:
    """The character an escape starting at ``text[i]`` (after the backslash) stands for, and
    the index after it."""
    c = text[i]
    if c == "x" and i + 1 < len(text) and text[i + 1] in "0123456789abcdefABCDEF":
        j = i + 1
        while j < len(text) and j < i + 3 and text[j] in "0123456789abcdefABCDEF":
            j += 1
        return chr(int(text[i + 1 : j], 16)), j
    if c == "c" and i + 1 < len(text):
        return chr(ord(text[i + 1]) & 0x1F), i + 2
    if "0" <= c <= "7":
        j = i
        while j < len(text) and j < i + 3 and "0" <= text[j] <= "7":
            j += 1
        return chr(int(text[i:j], 8) & 0xFF), j
    return _ESCAPES.get(c, c), i + 1
