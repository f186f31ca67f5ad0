"""Logging setup: structlog, one event per line, stable dotted event names, JSON off a TTY, and
syslog priorities for journald.

Severity is the call's level, raised for the facts an operator is paged for (``event_level``):
a real server going down (``health.change`` to ``down``) and a takeover (``ha.transition`` to
``active``, any transition to ``fault``) are warnings, a failed data plane apply is an error;
recoveries stay at their call's level (info). The effective level is the event's ``level`` key.

When stderr is the journal (systemd sets ``JOURNAL_STREAM=<dev>:<ino>`` of the stream it
connected; it is ours when fd 2's fstat matches, as sd_journal_stream_fd(3) says), each line starts
with ``<N>``, the syslog priority of that level: journald (``SyslogLevelPrefix=yes``, the default)
strips it and sets PRIORITY, so ``journalctl -p warning`` filters and ``journalctl -o cat | jq``
still reads plain JSON. Off the journal nothing is prefixed.

``logging.level`` filters on the effective level: with ``warning``, a server going down is still
logged though its call is at info. (Calls below info are dropped before any processing, by
structlog's filtering logger, so a disabled debug call stays nearly free.)
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import structlog

__all__ = ["PRIORITY", "configure", "event_level", "get", "journal_stream", "priority"]

# syslog(3) priorities of structlog's level names (journald's PRIORITY field)
PRIORITY: dict[str, int] = {
    "critical": 2,
    "fatal": 2,
    "exception": 3,
    "error": 3,
    "warning": 4,
    "warn": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_RANK = {"debug": 0, "info": 1, "notice": 2, "warning": 3, "warn": 3, "error": 4}
_RANK.update({"exception": 4, "critical": 5, "fatal": 5})
_NUMBER = {"debug": 10, "info": 20, "notice": 25, "warning": 30, "warn": 30, "error": 40}
_NUMBER.update({"exception": 40, "critical": 50, "fatal": 50})  # logging's level numbers


def _raised(event: Mapping[str, Any]) -> str | None:
    """The level an event's facts call for, None when its call's level stands."""
    name = event.get("event")
    if name == "health.change" and str(event.get("to")) == "down":
        return "warning"
    if name == "ha.transition" and event.get("to_role") in ("active", "fault"):
        return "warning"
    if name == "dataplane.apply" and (event.get("result") == "error" or event.get("error")):
        return "error"
    return None


def event_level(event: Mapping[str, Any], method: str = "info") -> str:
    """The effective level of an event logged with ``method``: the higher of the call's level
    and what its facts call for (see the module doc)."""
    level = str(event.get("level") or method).lower()
    raised = _raised(event)
    if raised is not None and _RANK[raised] > _RANK.get(level, 1):
        return raised
    return "error" if level == "exception" else level


def priority(level: str) -> int:
    """The syslog priority of a level name (info for an unknown one)."""
    return PRIORITY.get(level.lower(), 6)


def journal_stream(stream: Any, env: Mapping[str, str] | None = None) -> bool:
    """Is ``stream`` the journal's stream connection (``JOURNAL_STREAM`` names its dev:ino)?"""
    value = (os.environ if env is None else env).get("JOURNAL_STREAM", "")
    dev, sep, ino = value.partition(":")
    if not sep or not dev.isdigit() or not ino.isdigit():
        return False
    try:
        st = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no fd (a StringIO), or closed
        return False
    return (st.st_dev, st.st_ino) == (int(dev), int(ino))


def set_level(_logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
    """Processor: the ``level`` key becomes the effective level (``event_level``)."""
    event["level"] = event_level(event, method)
    return event


def event_first(_logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
    """Processor: the ``event`` key leads each JSON line (``{"event": "health.change", ...``)."""
    return {"event": event.pop("event", None), **event}


class MinLevel:
    """Processor: drop an event whose effective level is below ``threshold`` (a logging level
    number)."""

    def __init__(self, threshold: int) -> None:
        self.threshold = threshold

    def __call__(self, _logger: Any, _method: str, event: MutableMapping[str, Any]) -> Any:
        if _NUMBER.get(str(event["level"]), logging.INFO) < self.threshold:
            raise structlog.DropEvent
        return event


class PriorityPrefix:
    """Wraps the final renderer: ``<N>`` (the event's syslog priority) before each line."""

    def __init__(self, renderer: Callable[..., Any]) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event: MutableMapping[str, Any]) -> Any:
        level = str(event.get("level", method))
        return f"<{priority(level)}>{self.renderer(logger, method, event)}"


def configure(
    level: str = "info", fmt: str = "auto", stream: Any = None, journal: bool | None = None
) -> None:
    """Configure structlog once per process. ``fmt``: auto (console on a TTY, else JSON),
    json or console. ``journal``: prefix syslog priorities; by default when ``stream`` is the
    journal's (``journal_stream``)."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    last: list[Any] = [] if fmt == "console" else [event_first]
    if journal if journal is not None else journal_stream(stream):
        renderer = PriorityPrefix(renderer)
    threshold = logging.getLevelName(level.upper()) if isinstance(level, str) else level
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            set_level,
            MinLevel(threshold),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *last,
            renderer,
        ],
        # info calls pass the filter when the threshold is higher: ``event_level`` may raise them
        wrapper_class=structlog.make_filtering_bound_logger(min(threshold, logging.INFO)),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


class NamedLogger:
    """structlog's logger with ``logger=name`` bound, made anew from the current configuration
    at each use, as structlog's own lazy proxy does with ``cache_logger_on_first_use=False``
    (that proxy cannot carry a ``logger`` key: ``get_logger(logger=...)`` clashes with
    ``wrap_logger``'s own ``logger`` parameter). A module-level logger made at import time so
    follows a later ``configure()``. Public structlog API only."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(structlog.get_logger().bind(logger=self.name), attr)


def get(name: str | None = None) -> Any:
    """A lazy bound logger; ``name`` becomes the ``logger`` key."""
    if not name:
        return structlog.get_logger()
    return NamedLogger(name)
