"""Configuration loader: YAML text -> a validated ``hacontrol.model.Config``, or all its errors.

Owns the config file format and its public API. ``load``/``loads`` compose YAML into nodes (keeping
line numbers; libyaml when present, the Python loader for syntax error messages) and walk them with
a ``Reader`` that records a ``ConfigIssue`` (``FILE:LINE: FIELD.PATH: reason``) for each problem
instead of stopping, then raise one ``ConfigError`` listing all of them. The only I/O besides
reading the file is the optional existence check of ``ha.secret_file`` / ``api.token_file``
(``check_files``). Modules: ``reader`` (node walking, value parsers, issues), ``sections`` (the top
level, node, api, dataplane, logging), ``services`` (defaults, services, checks, real servers),
``ha`` (the ``ha:`` section), ``digest`` (what HA peers must agree on).
"""

from __future__ import annotations

import yaml
from yaml.nodes import Node

from hacontrol.config.digest import compute_digest
from hacontrol.config.reader import ConfigIssue, Reader
from hacontrol.config.sections import TOP_KEYS as TOP_KEYS
from hacontrol.config.sections import parse_root
from hacontrol.config.services import CHECK_KEYS as CHECK_KEYS
from hacontrol.config.services import REAL_SERVER_KEYS as REAL_SERVER_KEYS
from hacontrol.config.services import SERVICE_KEYS as SERVICE_KEYS
from hacontrol.model import Config

__all__ = ["ConfigError", "ConfigIssue", "compute_digest", "format_errors", "load", "loads"]


class ConfigError(Exception):
    """The config is invalid; ``errors`` lists every problem found, in file order."""

    def __init__(self, errors: list[ConfigIssue]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


def load(path: str, *, check_files: bool = True) -> Config:
    """Read and validate the config file at ``path``; raise ConfigError listing every problem.

    ``check_files=False`` skips the existence checks of ``ha.secret_file`` and ``api.token_file``
    (unit tests, linting a config on another machine)."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError([ConfigIssue(path, 0, "<file>", f"cannot read: {why}")]) from None
    return loads(text, source=path, check_files=check_files)


def loads(text: str, source: str = "<string>", *, check_files: bool = True) -> Config:
    """Validate config ``text``; ``source`` names it in errors and becomes ``Config.source``."""
    r = Reader(source)
    root = _compose(r, text)
    config = parse_root(r, root, check_files) if root is not None else None
    if r.issues or config is None:
        raise ConfigError(r.sorted_issues())
    return config


def format_errors(err: ConfigError) -> str:
    """Human text for the CLI: one ``FILE:LINE: FIELD: reason`` line per issue plus a count."""
    n = len(err.errors)
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
