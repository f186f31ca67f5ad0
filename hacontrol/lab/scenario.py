"""What the lab's scenarios share: steps and the report, status readers, waiting on conditions.

``Report``/``Step`` hold what a scenario measured (the JSON report is ``Report.as_dict()``);
``Watch`` polls a daemon's ``/v1/status`` from inside its namespace and waits for a condition on
it; ``wait_answers``/``wait_server`` wait on the client's recorded requests; ``round_robin`` is
the step both forms use to show the spread; ``log_events`` reads a daemon's JSON log. Every
wait has a deadline and fails with a ``LabError`` that says what was expected.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hacontrol.lab import traffic
from hacontrol.lab.topology import API, REAL_SERVERS, TARGET, Cluster


class LabError(Exception):
    """A step did not show what it should (the message says what and why)."""


@dataclass
class Step:
    step: str
    what: str
    measured: dict[str, Any] = field(default_factory=dict)


@dataclass
class Report:
    form: str
    requests: int
    steps: list[Step] = field(default_factory=list)
    dataplane: str | None = None
    ok: bool = False
    error: str | None = None
    interrupted: bool = False
    cleanup: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "form": self.form,
            "ok": self.ok,
            "dataplane": self.dataplane,
            "requests": self.requests,
            "steps": [s.__dict__ for s in self.steps],
            "error": self.error,
            "interrupted": self.interrupted,
            "cleanup": self.cleanup,
        }


class Say:
    """Progress lines with the time since the start (to stderr when stdout carries JSON)."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", file=self.out, flush=True)

    def block(self, text: str) -> None:
        for line in text.splitlines():
            print(f"          | {line}", file=self.out, flush=True)


# ------------------------------------------------------------------ reading the status document


def real_server(doc: dict[str, Any], address: str) -> dict[str, Any] | None:
    for svc in doc.get("services", []):
        for rs in svc.get("real_servers", []):
            if rs.get("address") == address:
                return dict(rs)
    return None


def in_table(doc: dict[str, Any], address: str) -> bool:
    rs = real_server(doc, address)
    return rs is not None and rs.get("health") == "up" and bool(rs.get("kernel_weight"))


def out_of_table(doc: dict[str, Any], address: str) -> bool:
    rs = real_server(doc, address)
    return rs is not None and rs.get("kernel_weight") is None


def is_down(doc: dict[str, Any], address: str) -> bool:
    rs = real_server(doc, address)
    return rs is not None and rs.get("health") == "down"


def summary(line: dict[str, Any]) -> str:
    """One line about a watcher poll: role, data plane, each real server's health and weight."""
    doc = line.get("status")
    if not isinstance(doc, dict):
        return str(line.get("error", "no answer yet"))
    dp = doc.get("dataplane") or {}
    parts = [f"role {doc.get('role')}", f"dataplane {dp.get('kind')} {dp.get('last_result')}"]
    if dp.get("error"):
        parts.append(f"error {dp['error']}")
    for svc in doc.get("services", []):
        for rs in svc.get("real_servers", []):
            parts.append(f"{rs.get('address')} {rs.get('health')}/kernel {rs.get('kernel_weight')}")
    if doc.get("ha"):
        parts.append(f"ha {json.dumps(doc['ha'])[:300]}")
    return "; ".join(parts)


class Watch(traffic.Run):
    """The daemon's ``/v1/status`` polled every 0.1 s from inside a director's namespace."""

    def __init__(self, cluster: Cluster, director: str) -> None:
        self.cluster, self.director = cluster, director
        super().__init__(cluster.runs, cluster.ns(director), "watch", "--url", f"http://{API}/v1/status",
                         "--interval", "0.1", "--duration", "900")  # fmt: skip

    def until(
        self, pred: Callable[[dict[str, Any]], bool], since: float, timeout: float, what: str
    ) -> tuple[float, dict[str, Any]]:
        """The first poll at or after ``since`` whose document satisfies ``pred``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            lines = self.snapshot()
            for line in lines[seen:]:
                if line.get("t", 0) >= since and "status" in line and pred(line["status"]):
                    return float(line["t"]), line["status"]
            seen = len(lines)
            if not self.cluster.daemon_alive(self.director):
                raise LabError(f"{self.director}: the daemon exited while waiting for {what}; "
                               f"log: {self.cluster.log_path(self.director)}\n"
                               + tail(self.cluster.log_path(self.director)))  # fmt: skip
            if time.monotonic() > deadline:
                last = lines[-1] if lines else {}
                raise LabError(f"{self.director}: no {what} within {timeout:.0f}s; last status: "
                               f"{summary(last)}")  # fmt: skip
            time.sleep(0.05)


def failed(reqs: list[traffic.Request], start: float = 0.0, end: float = float("inf")
           ) -> dict[str, Any]:  # fmt: skip
    """``failed``: requests started in [start, end) that failed, by which ``errors``, and when
    (seconds after ``start``: every one when there are at most 10, else the first and last)."""
    bad = [r for r in traffic.between(reqs, start, end) if not r.ok]
    out: dict[str, Any] = {"failed": len(bad)}
    if bad:
        out["errors"] = traffic.errors(bad)
        at = [round(r.t - start, 3) for r in bad]
        out["failed_at_s"] = at if len(at) <= 10 else [at[0], at[-1]]
    return out


def log_events(path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The JSON log lines of a daemon's log file (every event, or those named ``name``); other
    lines (a traceback, a partial last line) are skipped."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if isinstance(ev, dict) and (name is None or ev.get("event") == name):
            out.append(ev)
    return out


def tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def r3(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def wait_answers(load: traffic.Load, n: int, since: float, timeout: float) -> None:
    """Wait until ``n`` requests started after ``since`` were answered."""
    deadline = time.monotonic() + timeout
    while sum(1 for r in traffic.between(load.requests(), since) if r.ok) < n:
        if time.monotonic() > deadline or load.proc.poll() is not None:
            raise LabError(f"the client got fewer than {n} answers in {timeout:.0f}s")
        time.sleep(0.05)


def wait_server(load: traffic.Load, server: str, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (t := traffic.first_answer(load.requests(), server, since)) is None:
        if time.monotonic() > deadline or load.proc.poll() is not None:
            raise LabError(f"{server} did not answer within {timeout:.0f}s")
        time.sleep(0.05)
    return t


def round_robin(c: Cluster, n: int, name: str, say: Say) -> Step:
    before = c.served_all()
    t0 = time.monotonic()
    load = traffic.Load(c.runs, c.client, TARGET, n, interval=0.05, timeout=2.0, duration=120)
    load.wait(timeout=180)
    reqs = load.requests()
    after = c.served_all()
    responses = traffic.distribution(reqs)
    served = {rs: after[rs] - before[rs] for rs in REAL_SERVERS}
    say(f"{len(reqs)} requests: answers {responses}; the servers' own counts {served}")
    step = Step(name, f"{n} client requests to {TARGET}", {
        "requests": len(reqs), **failed(reqs, t0),
        "responses": responses, "served": served,
        "spread": max(served.values()) - min(served.values()),
    })  # fmt: skip
    if len(responses) != len(REAL_SERVERS) or step.measured["failed"]:
        raise LabError(f"{name}: expected every real server to answer and no failure: {step}")
    return step


def continuous(c: Cluster) -> traffic.Load:
    """Client load for an event: a new connection every 20 ms (bounded), once it is answered."""
    load = traffic.Load(c.runs, c.client, TARGET, 100_000, interval=0.02, timeout=1.0,
                        duration=120)  # fmt: skip
    wait_answers(load, 10, 0.0, 30)
    return load


def finish(load: traffic.Load, since: float) -> list[traffic.Request]:
    """Let the client see 30 answers to requests started after ``since``, then stop it; every
    request it made."""
    wait_answers(load, 30, since, 60)
    load.stop()
    return load.requests()


def kill_server(c: Cluster, watch: Watch, say: Say, rs: str = "rs2") -> Step:
    """``rs`` dies (SIGKILL) under continuous load: how long until it leaves the table (the
    director's status) and how many requests failed meanwhile; none may fail after that."""
    address = REAL_SERVERS[rs]
    load = continuous(c)
    c.stop_backend(rs)  # returns once the process is gone: nothing started later reaches it
    t_kill = time.monotonic()
    say(f"{rs} killed (SIGKILL) under continuous client requests")
    t_down, _ = watch.until(lambda d: is_down(d, address), t_kill, 30, f"{rs} marked down")
    t_out, _ = watch.until(lambda d: out_of_table(d, address), t_kill, 30,
                           f"{rs} out of the table")  # fmt: skip
    reqs = traffic.between(finish(load, t_out), t_kill)
    n_failed = traffic.failures(reqs)
    # once the status shows it out of the kernel table, no new connection may be sent to it
    # (with the others up, a refused connection can only have been sent to the dead one)
    late = traffic.failures(reqs, t_out)
    say(f"{rs} down after {t_down - t_kill:.2f}s, out of the table after {t_out - t_kill:.2f}s; "
        f"{n_failed} failed requests meanwhile")  # fmt: skip
    say.block(c.status_text(watch.director))
    step = Step(f"{rs} killed", f"{rs}'s server killed; the daemon removes it", {
        "health_down_s": r3(t_down - t_kill), "detection_s": r3(t_out - t_kill),
        **failed(reqs, t_kill),
        "failed_after_removal": late, "removed": True,
        "responses": traffic.distribution(reqs), "requests": len(reqs),
    })  # fmt: skip
    if late:
        raise LabError(f"{late} requests failed after {rs} left the table")
    return step


def restart_server(c: Cluster, watch: Watch, say: Say, rs: str = "rs2") -> Step:
    """``rs`` starts again under continuous load: when it is back in the table, when it first
    answers the client, and how many requests failed meanwhile (none should)."""
    address = REAL_SERVERS[rs]
    load = continuous(c)
    t_start = time.monotonic()
    c.start_backend(rs)
    say(f"{rs} restarted")
    t_in, _ = watch.until(lambda d: in_table(d, address), t_start, 30, f"{rs} back in the table")
    t_first = wait_server(load, rs, t_start, 30)
    reqs = traffic.between(finish(load, t_first), t_start)
    say(f"{rs} back in the table after {t_in - t_start:.2f}s, first answer after "
        f"{t_first - t_start:.2f}s")  # fmt: skip
    say.block(c.status_text(watch.director))
    return Step(f"{rs} restarted", f"{rs}'s server started again; the daemon adds it", {
        "back_in_table_s": r3(t_in - t_start), "first_answer_s": r3(t_first - t_start),
        **failed(reqs, t_start), "back": True,
        "responses": traffic.distribution(reqs), "requests": len(reqs),
    })  # fmt: skip
