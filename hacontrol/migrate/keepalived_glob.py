"""keepalived's ``include`` patterns: csh-style braces and globs, relative to the including file.

keepalived passes the pattern to glibc's ``glob`` with ``GLOB_BRACE``: ``{a,b}`` alternatives
(nested) are expanded first, each one globbed in turn and its matches sorted; a pattern without
wildcards names one file. Relative patterns are looked up in the directory of the file that
includes them (keepalived changes into it while reading that file). Bounded: at most
``MAX_BRACE_ALTERNATIVES`` alternatives.
"""

from __future__ import annotations

import glob
import os

MAX_BRACE_ALTERNATIVES = 256


def match_include(pattern: str, directory: str) -> tuple[list[str], list[str], list[str]] | None:
    """(the paths matched, in keepalived's order; the plain names that do not exist; the
    wildcard alternatives that match nothing) for ``pattern``; None if it has too many
    alternatives."""
    alternatives = expand_braces(pattern)
    if alternatives is None:
        return None
    found: list[str] = []
    missing: list[str] = []
    unmatched: list[str] = []
    for alt in alternatives:
        full = alt if os.path.isabs(alt) else os.path.join(directory, alt)
        if glob.has_magic(alt):
            matches = sorted(glob.glob(full))
            found.extend(matches)
            if not matches:
                unmatched.append(alt)
        elif os.path.lexists(full):
            found.append(full)
        else:
            missing.append(alt)
    return found, missing, unmatched


def expand_braces(pattern: str) -> list[str] | None:
    """csh-style ``{a,b}`` alternatives (nested), as glibc's GLOB_BRACE; None beyond
    ``MAX_BRACE_ALTERNATIVES``."""
    results = [pattern]
    done: list[str] = []
    while results:
        p = results.pop(0)
        span = _first_brace(p)
        if span is None:
            done.append(p)
        else:
            start, end, parts = span
            results[0:0] = [p[:start] + part + p[end + 1 :] for part in parts]
        if len(done) + len(results) > MAX_BRACE_ALTERNATIVES:
            return None
    return done


def _first_brace(p: str) -> tuple[int, int, list[str]] | None:
    """(index of ``{``, index of its ``}``, the comma-separated parts at its top level) of the
    first brace group that has a comma, or None."""
    i = 0
    while i < len(p):
        if p[i] == "\\":
            i += 2
            continue
        if p[i] == "{":
            depth, j, parts, last = 0, i, [], i + 1
            while j < len(p):
                c = p[j]
                if c == "\\":
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        parts.append(p[last:j])
                        if len(parts) > 1:
                            return i, j, parts
                        break
                elif c == "," and depth == 1:
                    parts.append(p[last:j])
                    last = j + 1
                j += 1
        i += 1
    return None
