"""Log severities and the journald priority prefix (hacontrol.logs), on real pipes."""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from hacontrol import logs


@pytest.mark.parametrize(
    ("event", "method", "level"),
    [
        # a real server going down is a warning; coming back (recovery) stays info
        ({"event": "health.change", "from": "up", "to": "down"}, "info", "warning"),
        ({"event": "health.change", "from": "unknown", "to": "down"}, "info", "warning"),
        ({"event": "health.change", "from": "down", "to": "up"}, "info", "info"),
        ({"event": "health.change", "from": "unknown", "to": "up"}, "info", "info"),
        # a takeover and any fault are warnings; the other transitions stay info
        ({"event": "ha.transition", "from_role": "backup", "to_role": "active"}, "info", "warning"),
        ({"event": "ha.transition", "from_role": "active", "to_role": "fault"}, "info", "warning"),
        ({"event": "ha.transition", "from_role": "starting", "to_role": "fault"}, "info",
         "warning"),
        ({"event": "ha.transition", "from_role": "active", "to_role": "backup"}, "info", "info"),
        ({"event": "ha.transition", "from_role": "fault", "to_role": "backup"}, "info", "info"),
        # a failed apply is an error, a good one and a recovery are info
        ({"event": "dataplane.apply", "result": "error"}, "info", "error"),
        ({"event": "dataplane.apply", "error": "EPERM"}, "info", "error"),
        ({"event": "dataplane.apply", "actions": 3}, "info", "info"),
        ({"event": "dataplane.recovered", "after_errors": 2}, "info", "info"),
        # never lowered: the call's level stands when it is higher
        ({"event": "health.change", "to": "down"}, "error", "error"),
        ({"event": "dataplane.error", "error": "x"}, "error", "error"),
        ({"event": "anything"}, "exception", "error"),
        ({"event": "anything"}, "debug", "debug"),
        ({"event": "anything"}, "warning", "warning"),
        # an explicit level key (add_log_level ran) is the call's level
        ({"event": "health.change", "to": "down", "level": "info"}, "info", "warning"),
    ],
)
def test_event_level(event: dict[str, Any], method: str, level: str) -> None:
    assert logs.event_level(event, method) == level


@pytest.mark.parametrize(
    ("level", "prio"),
    [("critical", 2), ("error", 3), ("warning", 4), ("notice", 5), ("info", 6), ("debug", 7),
     ("WARNING", 4), ("nonsense", 6)],
)  # fmt: skip
def test_priority(level: str, prio: int) -> None:
    assert logs.priority(level) == prio


@pytest.fixture
def pipe() -> Iterator[tuple[Any, Any]]:
    """(reader, writer) file objects of a real pipe, closed afterwards."""
    r, w = os.pipe()
    with os.fdopen(r, "rb") as reader, os.fdopen(w, "w", buffering=1) as writer:
        yield reader, writer


def dev_ino(f: Any) -> str:
    st = os.fstat(f.fileno())
    return f"{st.st_dev}:{st.st_ino}"


def test_journal_stream_matches_dev_and_inode(pipe: tuple[Any, Any]) -> None:
    _, writer = pipe
    assert logs.journal_stream(writer, {"JOURNAL_STREAM": dev_ino(writer)})
    other_r, other_w = os.pipe()  # another pipe: same device, another inode
    try:
        with os.fdopen(other_w, "w") as other:
            assert not logs.journal_stream(writer, {"JOURNAL_STREAM": dev_ino(other)})
    finally:
        os.close(other_r)
    for bad in ("", "12", "a:b", "1:", ":2", "1:2:3"):
        assert not logs.journal_stream(writer, {"JOURNAL_STREAM": bad}), bad
    assert not logs.journal_stream(writer, {})
    assert not logs.journal_stream(io.StringIO(), {"JOURNAL_STREAM": dev_ino(writer)})


def read_lines(reader: Any, writer: Any) -> list[str]:
    writer.close()
    return reader.read().decode().splitlines()  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def test_prefix_on_the_journal(pipe: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", dev_ino(writer))
    logs.configure("info", "json", stream=writer)
    log = logs.get("hacontrol.daemon")
    log.info("health.change", real_server="192.0.2.22:8080", reason="connection refused",
             **{"from": "up", "to": "down"})  # fmt: skip
    log.info("health.change", real_server="192.0.2.22:8080", reason="connected",
             **{"from": "down", "to": "up"})  # fmt: skip
    log.info("ha.transition", from_role="backup", to_role="active", reason="peer dead")
    log.error("dataplane.error", error="EPERM", reason="change")
    log.debug("filtered.out", reason="below the configured level")
    lines = read_lines(reader, writer)
    assert [line[:3] for line in lines] == ["<4>", "<6>", "<4>", "<3>"]
    assert lines[0].startswith('<4>{"event": "health.change", ')
    events = [json.loads(line[3:]) for line in lines]  # the body stays plain JSON
    down = events[0]
    assert down["event"] == "health.change" and down["level"] == "warning"
    assert (down["from"], down["to"], down["reason"]) == ("up", "down", "connection refused")
    assert down["logger"] == "hacontrol.daemon" and "timestamp" in down
    assert [e["level"] for e in events] == ["warning", "info", "warning", "error"]


def test_level_filters_on_the_effective_level(pipe: tuple[Any, Any]) -> None:
    reader, writer = pipe
    logs.configure("warning", "json", stream=writer, journal=True)
    log = logs.get("x")
    log.info("health.change", **{"from": "up", "to": "down"})  # raised: kept
    log.info("health.change", **{"from": "down", "to": "up"})  # a recovery at info: dropped
    log.info("daemon.start", reason="r")
    log.debug("ha.transition", to_role="active")  # below info: dropped before any processing
    log.error("dataplane.error", error="x")
    lines = read_lines(reader, writer)
    assert [(x[:3], json.loads(x[3:])["event"]) for x in lines] == [
        ("<4>", "health.change"), ("<3>", "dataplane.error")]  # fmt: skip


def test_no_prefix_off_the_journal(pipe: tuple[Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    reader, writer = pipe
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # systemd's, for another stream (not ours)
    logs.configure("info", "json", stream=writer)
    logs.get("x").info("health.change", **{"from": "up", "to": "down"})
    (line,) = read_lines(reader, writer)
    assert json.loads(line)["level"] == "warning"


def test_console_format_prefixed_too(pipe: tuple[Any, Any]) -> None:
    reader, writer = pipe
    logs.configure("info", "console", stream=writer, journal=True)
    logs.get("x").warning("api.open", reason="r")
    (line,) = read_lines(reader, writer)
    assert line.startswith("<4>") and "api.open" in line


def test_named_logger_follows_a_later_configure(pipe: tuple[Any, Any]) -> None:
    reader, writer = pipe
    early = logs.get("made.at.import")  # before configure(), like a module-level logger
    logs.configure("info", "json", stream=writer, journal=False)
    early.info("some.event", reason="r")
    bound = early.bind(extra=1)
    bound.info("bound.event", reason="r")
    lines = [json.loads(x) for x in read_lines(reader, writer)]
    assert lines[0]["logger"] == "made.at.import" and lines[0]["event"] == "some.event"
    assert lines[1]["extra"] == 1 and lines[1]["logger"] == "made.at.import"
