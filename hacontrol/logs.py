"""Logging setup: structlog, one event per line, stable dotted event names, JSON off a TTY."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def configure(level: str = "info", fmt: str = "auto", stream: Any = None) -> None:
    """Configure structlog once per process. ``fmt``: auto (console on a TTY, else JSON),
    json or console."""
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "console" if getattr(stream, "isatty", lambda: False)() else "json"
    renderer: Any = (
        structlog.dev.ConsoleRenderer(colors=False)
        if fmt == "console"
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelName(level.upper()) if isinstance(level, str) else level
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def get(name: str | None = None) -> Any:
    """A bound logger; ``name`` becomes the ``logger`` key. Lazy: a module-level logger made at
    import time still follows a later ``configure()`` (binding eagerly would freeze the default
    configuration, printing to stdout)."""
    if not name:
        return structlog.get_logger()
    return NamedLogger(name)


class NamedLogger:
    """structlog's logger with ``logger=name`` bound, made anew from the current configuration
    at each use, as structlog's own lazy proxy does with ``cache_logger_on_first_use=False``
    (that proxy cannot carry a ``logger`` key: ``get_logger(logger=...)`` clashes with
    ``wrap_logger``'s own ``logger`` parameter). Public structlog API only."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(structlog.get_logger().bind(logger=self.name), attr)
