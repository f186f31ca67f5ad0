"""keepalived.conf as keepalived's own reader sees it: the logical lines, each with its file:line.

Mirrors ``lib/parser.c`` (``read_line``, ``decomment``, ``check_definition``, ``replace_param``,
``check_include``) of keepalived 2.2: ``#`` and ``!`` comments outside ``"..."`` (``\\#``, ``\\!``
escape them); ``@ID`` / ``@^ID`` lines kept only when ID is / is not the host (keepalived's
config-id, by default the host name up to its first dot); ``$NAME=VALUE`` definitions, multi-line
ones (each line but the last ending in ``\\``), used as ``$NAME`` (followed by a blank, ``,``, ``)``
or the line's end) or ``${NAME}``, replaced recursively when used; the predefined ``${_PWD}``,
``${_INSTANCE}``, ``${_HASH}`` and ``${_BANG}``; ``include`` (and ``includer/m/w/b/a``) with globs
and csh braces, relative to the directory of the including file, read in place. Left out, each an
error naming it: ``~SEQ``/``~LST`` blocks, ``${_RANDOM}`` and ``${_ENV}`` (their value is only
known where keepalived runs). Bounded: file size, files, include depth, include loops (an error:
keepalived itself recurses until it runs out of file descriptors), line length (keepalived's 1024
bytes), macro expansion. Every problem is an ``Issue`` (``file:line: what``); no exception escapes
but ``KeepalivedError``.
"""

from __future__ import annotations

import os
import re
import stat
from collections import deque
from dataclasses import dataclass, field

from hacontrol.migrate.keepalived_glob import MAX_BRACE_ALTERNATIVES, match_include

MAX_FILE_BYTES = 1 << 20  # one file
MAX_TOTAL_BYTES = 8 << 20  # all files together
MAX_FILES = 256
MAX_INCLUDE_DEPTH = 16
MAX_LINE = 1022  # bytes; keepalived reads lines into a 1024-byte buffer ("line too long")
MAX_LINES = 200_000  # logical lines, after the expansion of multi-line definitions
MAX_SUBSTITUTIONS = 1000  # in one line
MAX_ERRORS = 100

_DEF_RE = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)=[ \t]*(.*)\Z", re.S)
_REF_RE = re.compile(
    r"\{([A-Za-z_][A-Za-z0-9_]*)((?:[ \t]+[A-Za-z0-9_]+)*)\}|([A-Za-z_][A-Za-z0-9_]*)(?=[ \t,)]|\Z)"
)
_INCLUDE_RE = re.compile(r"include([rmwba]?)\s")
_BUILTIN = {"_HASH": "#", "_BANG": "!"}
_UNSUPPORTED = ("_RANDOM", "_ENV")


@dataclass(frozen=True)
class Issue:
    """One problem or note about the input; ``str()`` is ``file:line: what``."""

    file: str
    line: int  # 1-based; 0 for the file as a whole
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.what}" if self.line else f"{self.file}: {self.what}"


class KeepalivedError(Exception):
    """The input cannot be converted; ``issues`` says where and why, in the order found."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass(frozen=True)
class Line:
    """A logical line: comments removed, conditions applied, definitions replaced."""

    file: str
    line: int
    text: str


@dataclass
class _Def:
    segments: list[str]
    multiline: bool


@dataclass
class _Frame:
    display: str  # the path as shown in messages
    directory: str  # where the relative includes of this file are looked up
    chain: tuple[str, ...]  # real paths of this file and the files that include it
    lines: list[str]
    index: int = 0


@dataclass
class Source:
    """Reads one keepalived.conf and everything it includes: ``read(path)`` -> logical lines."""

    host: str
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)
    _defs: dict[str, _Def] = field(default_factory=dict)
    _building: _Def | None = None  # a multi-line definition being read
    _stack: list[_Frame] = field(default_factory=list)
    _out: list[Line] = field(default_factory=list)
    _files: int = 0
    _bytes: int = 0

    def read(self, path: str) -> list[Line]:
        """The logical lines of ``path``; raises KeepalivedError listing every error."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise KeepalivedError([Issue(path, 0, f"cannot read: {e.strerror or e}")]) from None
        if not stat.S_ISREG(st.st_mode):
            raise KeepalivedError([Issue(path, 0, "cannot read: not a regular file")])
        self._open(path, path, (), Issue(path, 0, ""))
        while self._stack and len(self.errors) < MAX_ERRORS:
            frame = self._stack[-1]
            if frame.index >= len(frame.lines):
                self._stack.pop()
                continue
            raw = frame.lines[frame.index]
            frame.index += 1
            self._physical(frame, frame.index, raw)
            if len(self._out) > MAX_LINES:
                self._error(frame.display, frame.index, f"more than {MAX_LINES} lines once "
                            "the definitions are expanded")
                break
        if self.errors:
            raise KeepalivedError(self.errors)
        return self._out

    def _error(self, file: str, line: int, what: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(Issue(file, line, what))

    # -- files ----------------------------------------------------------------------------

    def _open(self, display: str, path: str, chain: tuple[str, ...], where: Issue) -> None:
        real = os.path.realpath(path)
        if real in chain:
            names = " -> ".join([*self._names(chain[chain.index(real) :]), display])
            self._error(where.file, where.line, f"include loop: {names}")
            return
        if len(chain) >= MAX_INCLUDE_DEPTH:
            self._error(where.file, where.line, f"includes nested more than {MAX_INCLUDE_DEPTH} "
                        "deep")
            return
        self._files += 1
        if self._files > MAX_FILES:
            self._error(where.file, where.line, f"more than {MAX_FILES} files included")
            return
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as e:
            self._error(where.file, where.line, f"{display}: cannot read: {e.strerror or e}")
            return
        self._bytes += len(data)
        if len(data) > MAX_FILE_BYTES or self._bytes > MAX_TOTAL_BYTES:
            self._error(display, 0, f"larger than {MAX_FILE_BYTES} bytes (or all the files "
                        f"together larger than {MAX_TOTAL_BYTES})")
            return
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            self._error(display, line, "not UTF-8 text")
            return
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        directory = os.path.dirname(path) or "."
        self._stack.append(_Frame(display, directory, (*chain, real), lines))

    def _names(self, reals: tuple[str, ...]) -> list[str]:
        by_real = {f.chain[-1]: f.display for f in self._stack}
        return [by_real.get(r, r) for r in reals]

    def _include(self, frame: _Frame, line: int, kind: str, pattern: str) -> None:
        if not pattern:
            self._error(frame.display, line, f"include{kind}: no file name")
            return
        matched = match_include(pattern, frame.directory)
        if matched is None:
            self._error(frame.display, line, f"include {pattern}: more than "
                        f"{MAX_BRACE_ALTERNATIVES} alternatives in braces")
            return
        found, missing, unmatched = matched
        for alt in missing:
            self._error(frame.display, line, f"include{kind} {alt}: no such file")
        for alt in unmatched:
            why = f"include{kind} {alt}: no file matches"
            if kind in ("w", "a"):
                self._error(frame.display, line, why)
            else:
                self.warnings.append(Issue(frame.display, line, why + " (nothing read)"))
        opened: list[tuple[str, str]] = []
        for path in found:
            display = os.path.normpath(path)
            try:
                st = os.stat(path)
            except OSError as e:
                self._error(frame.display, line, f"include {display}: {e.strerror or e}")
                continue
            if not stat.S_ISREG(st.st_mode) or st.st_mode & 0o111:
                what = "a directory" if stat.S_ISDIR(st.st_mode) else (
                    "not a regular file" if not stat.S_ISREG(st.st_mode) else "executable")
                self.warnings.append(Issue(frame.display, line, f"include {display}: {what}: "
                                           "skipped, as keepalived skips it"))
                continue
            opened.append((display, path))
        where = Issue(frame.display, line, "")
        for display, path in reversed(opened):  # the first match on top: read first
            self._open(display, path, frame.chain, where)

    # -- lines ----------------------------------------------------------------------------

    def _physical(self, frame: _Frame, line: int, raw: str) -> None:
        raw = raw.rstrip("\r\n")
        if len(raw.encode("utf-8", "surrogatepass")) > MAX_LINE:
            self._error(frame.display, line, f"line longer than {MAX_LINE} bytes "
                        "(keepalived ignores it)")
            return
        if "\0" in raw:
            self._error(frame.display, line, "NUL character in the line (keepalived ignores it)")
            return
        if not raw:
            self._end_definition()
            return
        text, cont, unterminated = decomment(raw)
        if unterminated:
            self._error(frame.display, line, f"unterminated quote: {raw.strip()!r}")
            return
        if self._building is not None:
            if text:
                self._building.segments.append(text)
            if not cont and text:  # a blank or comment-only line does not end it
                self._end_definition()
            return
        if text or cont:
            self._logical(frame, line, text + ("\\" if cont else ""))

    def _end_definition(self) -> None:
        if self._building is not None and not self._building.segments:
            self._building.multiline = False
            self._building.segments.append("")
        self._building = None

    def _logical(self, frame: _Frame, line: int, first: str) -> None:
        pending = deque([first])
        while pending:
            text: str | None = pending.popleft()
            for _ in range(8):  # a replacement may produce an @condition or a definition
                if not text:
                    break
                if text[0] == "@":
                    text = self._conditional(text)
                    continue
                if text[0] == "$" and (m := _DEF_RE.match(text)):
                    self._define(m.group(1), m.group(2))
                    text = None
                    break
                if text.startswith(("~SEQ", "~LST")):
                    self._error(frame.display, line, f"{text[:4]} blocks are not supported by "
                                "the importer: expand them by hand")
                    text = None
                    break
                if text[0] == "~" or "$" not in text:
                    break
                replaced = self._substitute(frame, line, text)
                if replaced is None:
                    text = None
                    break
                new, more = replaced
                pending.extendleft(reversed(more))
                if new == text:
                    break
                text, _, _ = decomment(new)
            if text:
                self._emit(frame, line, text)

    def _conditional(self, text: str) -> str | None:
        negate = text.startswith("@^")
        start = 2 if negate else 1
        m = re.search(r"[ \t]", text[start:])
        if m is None:
            return None
        ident = text[start : start + m.start()]
        if (ident == self.host) == negate:
            return None
        return text[start + m.start() :].lstrip(" \t")

    def _define(self, name: str, value: str) -> None:
        if value.endswith("\\"):
            first = value[:-1].rstrip(" \t")
            self._building = _Def([first] if first else [], True)
            self._defs[name] = self._building
        else:
            self._defs[name] = _Def([value], False)

    def _substitute(self, frame: _Frame, line: int, text: str) -> tuple[str, list[str]] | None:
        """``text`` with every defined ``$NAME`` replaced (recursively, as keepalived does) and
        the further lines of multi-line definitions; None after an error."""
        pos, count = 0, 0
        more: list[str] = []
        while (i := text.find("$", pos)) >= 0 and i + 1 < len(text):
            m = _REF_RE.match(text, i + 1)
            name = (m.group(1) or m.group(3)) if m else None
            if m is None or name is None:
                pos = i + 1
                continue
            params = m.group(2) or ""
            at_end = m.end() == len(text)
            value: str | None = None
            d = self._defs.get(name)
            if d is not None and not params and (at_end or not d.multiline):
                value = d.segments[0] if d.segments else ""
                more = d.segments[1:] + more
            elif d is None and name in _BUILTIN and not params:
                value = _BUILTIN[name]
            elif d is None and name == "_PWD" and not params:
                value = os.path.abspath(frame.directory)
            elif d is None and name == "_INSTANCE" and not params:
                value = self.host
            elif d is None and name in _UNSUPPORTED:
                self._error(frame.display, line, f"${{{name}}} is not supported by the "
                            "importer (its value is only known where keepalived runs)")
                return None
            if value is None:
                pos = i + 1
                continue
            text = text[:i] + value + text[m.end() :]
            count += 1
            if count > MAX_SUBSTITUTIONS or len(text) > MAX_LINE:
                self._error(frame.display, line, f"definitions expand without end (more than "
                            f"{MAX_SUBSTITUTIONS} replacements or {MAX_LINE} bytes)")
                return None
            if value.lstrip(" \t").startswith("~"):
                break
            pos = i
        return text, more

    def _emit(self, frame: _Frame, line: int, text: str) -> None:
        m = _INCLUDE_RE.match(text)
        if m:
            self._include(frame, line, m.group(1), text[m.end() :].strip(" \t"))
        else:
            self._out.append(Line(frame.display, line, text))


def decomment(raw: str) -> tuple[str, bool, bool]:
    """keepalived's ``decomment``: (text without comments and surrounding blanks, whether it
    ended in a continuation ``\\``, whether a ``"`` was left open)."""
    s = raw.lstrip(" \t")
    out: list[str] = []
    quote = cont = False
    i = 0
    while i < len(s):
        c = s[i]
        if c == '"':
            quote = not quote
        elif c == "\\":
            if i + 1 == len(s):
                cont = True
                break
            if not quote and s[i + 1] in "#!":
                out.append(s[i + 1])
            else:
                out.append(s[i : i + 2])
            i += 2
            continue
        elif not quote and c in "#!":
            break
        out.append(c)
        i += 1
    return "".join(out).rstrip(" \t"), cont, quote
