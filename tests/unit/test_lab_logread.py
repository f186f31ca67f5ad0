"""The lab's daemon-log reader: JSON event lines by name, anything else skipped."""

from __future__ import annotations

from pathlib import Path

from hacontrol.lab.scenario import log_events


def test_log_events_reads_json_lines_and_skips_the_rest(tmp_path: Path) -> None:
    log = tmp_path / "daemon.log"
    log.write_text(
        '{"event": "daemon.start", "node": "a"}\n'
        "Traceback (most recent call last):\n"
        '["not", "a", "dict"]\n'
        '{"event": "health.change", "to": "down"}\n'
        '{"event": "health.change", "to": "up"}\n'
        '{"event": "dataplane.apply", "act'  # a partial last line
    )
    assert [e["to"] for e in log_events(log, "health.change")] == ["down", "up"]
    assert [e["event"] for e in log_events(log)] == [
        "daemon.start", "health.change", "health.change"]  # fmt: skip
    assert log_events(log, "ha.transition") == []
