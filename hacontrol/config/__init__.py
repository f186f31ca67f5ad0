"""Configuration loader: YAML text -> a validated ``hacontrol.model.Config``, or all its errors.

Owns the config file format and its public API. ``load``/``loads`` compose YAML into nodes (keeping
line numbers; libyaml when present, the Python loader for syntax error messages), refuse a graph
that aliases expand too far or that nests too deep (``limits.check_shape``), and walk the rest
with a ``Reader`` that records a ``ConfigIssue`` (``FILE:LINE: FIELD.PATH: reason``) for each
problem instead of stopping, within a time budget, then raise one ``ConfigError`` listing them
(the first ``MAX_ERRORS`` in file order, and how many there were). The only I/O besides reading
the file is the optional check of ``ha.secret_file`` / ``api.token_file`` (``check_files``) with
the rules the daemon applies (``secrets``). Modules: ``reader`` (node walking, value parsers),
``scalars`` (YAML scalar kinds, message formatting), ``issues`` (issues, bounded), ``limits``
(costs and duration ranges), ``secrets`` (the key and token rules), ``sections`` (the top level,
node, api, dataplane, logging), ``services`` (defaults, services, checks, real servers), ``ha``
(the ``ha:`` section), ``digest`` (what HA peers must agree on), ``foreign`` (a keepalived.conf
given instead: the hint to convert it).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import yaml
from yaml.nodes import Node

from hacontrol.config.digest import compute_digest
from hacontrol.config.foreign import keepalived_hint
from hacontrol.config.issues import ConfigIssue
from hacontrol.config.limits import MAX_DEPTH, TIME_BUDGET, check_shape
from hacontrol.config.reader import Reader, WalkTimeout
from hacontrol.config.scalars import fmt_duration
from hacontrol.config.sections import TOP_KEYS as TOP_KEYS
from hacontrol.config.sections import parse_root
from hacontrol.config.services import CHECK_KEYS as CHECK_KEYS
from hacontrol.config.services import REAL_SERVER_KEYS as REAL_SERVER_KEYS
from hacontrol.config.services import SERVICE_KEYS as SERVICE_KEYS
from hacontrol.model import Config

__all__ = ["ConfigError", "ConfigIssue", "compute_digest", "format_errors", "load", "loads"]


class ConfigError(Exception):
    """The config is invalid; ``errors`` lists the problems found in file order (the first
    ``limits.MAX_ERRORS`` of them), ``total`` how many there were."""

    def __init__(self, errors: list[ConfigIssue], total: int | None = None) -> None:
        self.errors = list(errors)
        self.total = max(total or 0, len(self.errors))
        more = self.total - len(self.errors)
        lines = [str(e) for e in self.errors] + ([f"... and {more} more"] if more else [])
        super().__init__("\n".join(lines))


def load(path: str, *, check_files: bool = True) -> Config:
    """Read and validate the config file at ``path``; raise ConfigError listing every problem.

    ``check_files=False`` skips the checks of ``ha.secret_file`` and ``api.token_file``
    (unit tests, linting a config on another machine)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([ConfigIssue(path, 0, "<file>", f"cannot read: {why}")]) from None
    return loads(text, source=path, check_files=check_files)


def loads(
    text: str,
    source: str = "<string>",
    *,
    check_files: bool = True,
    clock: Callable[[], float] = time.thread_time,
    budget: float = TIME_BUDGET,
) -> Config:
    """Validate config ``text``; ``source`` names it in errors and becomes ``Config.source``.
    Composing and walking get ``budget`` seconds on ``clock`` together (by default the CPU time
    of the calling thread, which other work on the machine does not advance)."""
    r = Reader(source, clock=clock, budget=budget)
    if (hint := keepalived_hint(text, source)) is not None:  # another tool's file: say so
        raise ConfigError([ConfigIssue(source, hint[0], "<root>", hint[1])])
    root = _compose(r, text)
    config = None
    if root is not None and (shape := check_shape(root)) is not None:
        r.error(shape[0], "<root>", shape[1])
    elif root is not None:
        try:
            config = parse_root(r, root, check_files)
        except WalkTimeout as exc:
            r.error(
                exc.line,
                "<root>",
                f"validation took longer than {fmt_duration(budget)} (stopped here): "
                "the file is too large or too aliased to check",
            )
            config = None
    if not r.clean_since(0) or config is None:
        raise ConfigError(r.issues.first(), r.issues.count)
    return config


def format_errors(err: ConfigError) -> str:
    """Human text for the CLI: one ``FILE:LINE: FIELD: reason`` line per issue (the first
    ``MAX_ERRORS``, then "... and N more") and the count, ``FILE: N errors``."""
    n = err.total
    source = err.errors[0].file if err.errors else "config"
    return f"{err}\n{source}: {n} error{'s' if n != 1 else ''}"


def _compose(r: Reader, text: str) -> Node | None:
    fast = getattr(yaml, "CSafeLoader", None)  # libyaml: ~6x faster on big files
    if fast is not None:
        cloader = fast(text)
        try:
            return _nonempty(r, cloader.get_single_node())
        except yaml.YAMLError:
            pass  # compose again in Python: its messages are the documented ones
        finally:
            cloader.dispose()
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except RecursionError:  # the Python composer recurses once per nesting level
        r.error(_nesting_line(text), "<root>", f"nested more than {MAX_DEPTH} levels deep")
        return None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else 1
        reason = e.problem or e.context or "invalid YAML"
        if e.problem and e.context and e.problem.startswith("but "):
            reason = f"{e.context}, {e.problem}"
        elif e.problem and e.context and e.context_mark is not None:
            reason += f" ({e.context} started at line {e.context_mark.line + 1})"
        r.error(line, "<syntax>", reason)
        return None
    except yaml.YAMLError as e:  # reader errors (bad characters) carry a position, not a mark
        pos = getattr(e, "position", 0)
        r.error(text[:pos].count("\n") + 1, "<syntax>", str(e).splitlines()[0])
        return None
    finally:
        loader.dispose()
    return _nonempty(r, node)


def _nonempty(r: Reader, node: Node | None) -> Node | None:
    if node is None:
        r.error(1, "<root>", "the config is empty; expected a mapping with at least 'node'")
    return node


def _nesting_line(text: str) -> int:
    """The line where the nesting first goes deeper than ``MAX_DEPTH`` (YAML events: no
    recursion), for the error of a file the composer could not hold."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH and event.start_mark is not None:
                    return int(event.start_mark.line) + 1
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        return int(mark.line) + 1 if mark is not None else 1
    return 1
