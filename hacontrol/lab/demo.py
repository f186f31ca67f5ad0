"""``hacontrol lab``: build the seed's cluster in namespaces, run the daemon on it, measure, report.

The first form (one director) builds client, director, rs1..rs3 (and a switch namespace with the
bridges), starts ``hacontrol run`` on the director, shows round-robin from the client's answers and
the servers' own counts, kills rs2 and measures how long it takes to leave the table and the
traffic (and how many requests failed meanwhile), restarts it and measures its return, then prints
a report and removes everything, also on Ctrl-C, SIGTERM or a failure. The two-director form
(``--ha``) lives in ``hacontrol.lab.pair``... see ``run_pair`` below.

Entry point: ``main(argv) -> int`` (``hacontrol lab [options]``). Exit status: 0 when every step
showed what it should, 1 when a step failed, 2 on bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from hacontrol.lab import traffic
from hacontrol.lab.netns import NetnsLab, Ns, cleanup_stale
from hacontrol.lab.topology import API, PORT, REAL_SERVERS, VIP, Cluster

KEEP_PREFIX = "hclab"
KEEP_DIR = Path(tempfile.gettempdir()) / "hacontrol-lab"
TARGET = f"{VIP}:{PORT}"


class LabError(Exception):
    """A step did not show what it should (the message says what and why)."""


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop and clean up, like Ctrl-C."""


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
                               + _tail(self.cluster.log_path(self.director)))  # fmt: skip
            if time.monotonic() > deadline:
                last = lines[-1] if lines else {}
                raise LabError(f"{self.director}: no {what} within {timeout:.0f}s "
                               f"(last poll: {json.dumps(last)[:300]})")  # fmt: skip
            time.sleep(0.05)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ------------------------------------------------------------------ the first form


def _round_robin(c: Cluster, n: int, name: str, say: Say) -> Step:
    before = c.served_all()
    load = traffic.Load(c.runs, c.client, TARGET, n, interval=0.05, timeout=2.0, duration=120)
    load.wait(timeout=180)
    reqs = load.requests()
    after = c.served_all()
    responses = traffic.distribution(reqs)
    served = {rs: after[rs] - before[rs] for rs in REAL_SERVERS}
    say(f"{len(reqs)} requests: answers {responses}; the servers' own counts {served}")
    step = Step(name, f"{n} client requests to {TARGET}", {
        "requests": len(reqs), "failed": traffic.failures(reqs),
        "responses": responses, "served": served,
        "spread": max(served.values()) - min(served.values()),
    })  # fmt: skip
    if len(responses) != len(REAL_SERVERS) or step.measured["failed"]:
        raise LabError(f"{name}: expected every real server to answer and no failure: {step}")
    return step


def run_single(c: Cluster, report: Report, say: Say, n: int) -> None:
    rs2 = REAL_SERVERS["rs2"]
    t = time.monotonic()
    c.build()
    say(f"built namespaces {', '.join(ns.name for ns in c.lab.namespaces.values())}")
    report.steps.append(Step("build", "client, director, rs1..rs3 on two bridges; backends up",
                             {"seconds": _r(time.monotonic() - t)}))  # fmt: skip

    t = time.monotonic()
    cfg = c.write_config("director")
    c.start_daemon("director")
    watch = Watch(c, "director")
    say(f"daemon started: {sys.executable} -m hacontrol run -c {cfg}")
    t_up, doc = watch.until(lambda d: all(in_table(d, a) for a in REAL_SERVERS.values()),
                            t, 60, "three real servers up and in the table")  # fmt: skip
    report.dataplane = doc.get("dataplane", {}).get("kind")
    say(f"all real servers up and in the kernel table ({report.dataplane})")
    say.block(c.status_text("director"))
    report.steps.append(Step("start", f"hacontrol run on the director ({report.dataplane})",
                             {"all_up_s": _r(t_up - t)}))  # fmt: skip

    report.steps.append(_round_robin(c, n, "round-robin", say))

    # rs2 dies under continuous load
    load = traffic.Load(c.runs, c.client, TARGET, 100_000, interval=0.02, timeout=1.0, duration=90)
    _wait_answers(load, 10, 0.0, 30)
    t_kill = time.monotonic()
    c.stop_backend("rs2")
    say("rs2 killed (SIGKILL) under continuous client requests")
    t_down, _ = watch.until(lambda d: is_down(d, rs2), t_kill, 30, "rs2 marked down")
    t_out, doc = watch.until(lambda d: out_of_table(d, rs2), t_kill, 30, "rs2 out of the table")
    _wait_answers(load, 30, t_out, 30)
    load.stop()
    reqs = load.requests()
    fails = [r for r in traffic.between(reqs, t_kill) if not r.ok]
    late = [r for r in traffic.between(reqs, t_out + 0.2) if r.server == "rs2"]
    say(f"rs2 down after {t_down - t_kill:.2f}s, out of the table after {t_out - t_kill:.2f}s; "
        f"{len(fails)} failed requests meanwhile")  # fmt: skip
    say.block(c.status_text("director"))
    m = {
        "health_down_s": _r(t_down - t_kill), "detection_s": _r(t_out - t_kill),
        "failed": len(fails), "last_failure_s": _r(max((r.t for r in fails), default=t_kill)
                                                    - t_kill),
        "answers_from_rs2_after_removal": len(late), "removed": True,
        "responses": traffic.distribution(traffic.between(reqs, t_kill)),
        "requests": len(traffic.between(reqs, t_kill)),
    }  # fmt: skip
    report.steps.append(Step("rs2 killed", "rs2's server killed; the daemon removes it", m))
    if late:
        raise LabError(f"rs2 still answered {len(late)} requests after it left the table")

    # rs2 comes back
    load = traffic.Load(c.runs, c.client, TARGET, 100_000, interval=0.02, timeout=1.0, duration=90)
    _wait_answers(load, 10, 0.0, 30)
    t_start = time.monotonic()
    c.start_backend("rs2")
    say("rs2 restarted")
    t_in, _ = watch.until(lambda d: in_table(d, rs2), t_start, 30, "rs2 back in the table")
    t_first = _wait_server(load, "rs2", t_start, 30)
    _wait_answers(load, 30, t_first, 30)
    load.stop()
    reqs = traffic.between(load.requests(), t_start)
    say(f"rs2 back in the table after {t_in - t_start:.2f}s, first answer after "
        f"{t_first - t_start:.2f}s")  # fmt: skip
    say.block(c.status_text("director"))
    report.steps.append(Step("rs2 restarted", "rs2's server started again; the daemon adds it", {
        "back_in_table_s": _r(t_in - t_start), "first_answer_s": _r(t_first - t_start),
        "failed": traffic.failures(reqs), "back": True,
        "responses": traffic.distribution(reqs), "requests": len(reqs),
    }))  # fmt: skip

    report.steps.append(_round_robin(c, n, "round-robin again", say))
    watch.stop()


def _wait_answers(load: traffic.Load, n: int, since: float, timeout: float) -> None:
    """Wait until ``n`` requests started after ``since`` were answered."""
    deadline = time.monotonic() + timeout
    while sum(1 for r in traffic.between(load.requests(), since) if r.ok) < n:
        if time.monotonic() > deadline or load.proc.poll() is not None:
            raise LabError(f"the client got fewer than {n} answers in {timeout:.0f}s")
        time.sleep(0.05)


def _wait_server(load: traffic.Load, server: str, since: float, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while (t := traffic.first_answer(load.requests(), server, since)) is None:
        if time.monotonic() > deadline or load.proc.poll() is not None:
            raise LabError(f"{server} did not answer within {timeout:.0f}s")
        time.sleep(0.05)
    return t


# ------------------------------------------------------------------ report


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v < 10 else f"{v:.1f}"
    return str(v)


def render(report: Report) -> str:
    rows = [("STEP", "WHAT HAPPENED", "MEASURED")]
    for s in report.steps:
        rows.append((s.step, s.what, ", ".join(f"{k}={_fmt(v)}" for k, v in s.measured.items())))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"hacontrol lab report ({report.form} form, data plane {report.dataplane or '?'})", ""]
    out += [f"{r[0].ljust(w0)}  {r[1].ljust(w1)}  {r[2]}" for r in rows]
    out.append("")
    if report.cleanup:
        out.append(f"cleanup: {_fmt(report.cleanup)}")
    if report.interrupted:
        out.append("result: INTERRUPTED")
    else:
        out.append("result: OK" if report.ok else f"result: FAILED: {report.error}")
    return "\n".join(out)


# ------------------------------------------------------------------ main


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    def handler(signum: int, frame: object) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def _signals_ignored() -> Iterator[None]:
    """Cleanup must finish: a second Ctrl-C does not abort it."""
    sigs = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    old = {s: signal.signal(s, signal.SIG_IGN) for s in sigs}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [ln.split()[0] for ln in out.splitlines() if ln.split() and
            ln.split()[0].startswith(f"{prefix}-")]  # fmt: skip


def remove_kept(out: TextIO) -> int:
    """``hacontrol lab --down``: remove a lab left by ``--keep``."""
    names = _namespaces(KEEP_PREFIX)
    with _signals_ignored():
        for name in names:
            Ns(name).kill_all()
        for name in names:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        shutil.rmtree(KEEP_DIR, ignore_errors=True)
    left = _namespaces(KEEP_PREFIX)
    print(f"removed {len(names) - len(left)} namespaces and {KEEP_DIR}" +
          (f"; still there: {' '.join(left)}" if left else ""), file=out)  # fmt: skip
    return 1 if left else 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="hacontrol lab", description=__doc__.split("\n")[0])
    p.add_argument("--requests", type=int, default=30, help="requests per round-robin step")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument(
        "--keep",
        action="store_true",
        help="leave the lab running for exploration (remove it with --down)",
    )
    p.add_argument("--down", action="store_true", help="remove a lab left by --keep")
    form = p.add_mutually_exclusive_group()
    form.add_argument(
        "--single",
        dest="form",
        action="store_const",
        const="single",
        help="one director (the default)",
    )
    form.add_argument(
        "--ha",
        dest="form",
        action="store_const",
        const="pair",
        help="two directors with the VIP group moving between them",
    )
    p.set_defaults(form="single")
    args = p.parse_args(argv)
    if not 3 <= args.requests <= 10_000:
        p.error("--requests must be between 3 and 10000")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = sys.stdout
    say = Say(sys.stderr if args.json else sys.stdout)
    if args.down:
        return remove_kept(out)
    if os.geteuid() != 0:
        print("error: the lab needs root (network namespaces, nftables)", file=sys.stderr)
        return 2
    if args.keep and _namespaces(KEEP_PREFIX):
        print(f"error: a kept lab exists ({KEEP_PREFIX}-*); remove it with "
              "`hacontrol lab --down`", file=sys.stderr)  # fmt: skip
        return 2
    cleanup_stale()
    report = Report(args.form, args.requests)
    if args.keep:
        shutil.rmtree(KEEP_DIR, ignore_errors=True)
        KEEP_DIR.mkdir(parents=True)
        workdir = KEEP_DIR
    else:
        workdir = Path(tempfile.mkdtemp(prefix="hacontrol-lab-"))
    lab = NetnsLab(KEEP_PREFIX if args.keep else None)
    cluster = Cluster(lab, workdir, ha=args.form == "pair")
    keep = False
    try:
        with _signals_raise():
            if args.form == "pair":
                run_pair(cluster, report, say, args.requests)
            else:
                run_single(cluster, report, say, args.requests)
        report.ok = True
        keep = args.keep
    except KeyboardInterrupt as e:
        report.interrupted = True
        report.error = f"interrupted ({e or 'SIGINT'})"
        say(f"interrupted ({e or 'SIGINT'}): removing everything")
    except LabError as e:
        report.error = str(e)
        say(f"FAILED: {e}")
        keep = args.keep
    except Exception as e:  # a broken environment or a bug: report it, clean up all the same
        report.error = f"{type(e).__name__}: {e}"
        say(f"FAILED: {report.error}")
        traceback.print_exc(file=sys.stderr)
    finally:
        with _signals_ignored():
            for run in cluster.runs:
                run.stop()
            if keep:
                report.cleanup = {"kept": True}
            else:
                lab.close()
                shutil.rmtree(workdir, ignore_errors=True)
                report.cleanup = {"namespaces_left": len(_namespaces(lab.prefix))}
    if args.json:
        print(json.dumps(report.as_dict(), indent=2), file=out)
    else:
        print("\n" + render(report), file=out)
    if keep:
        say("the lab is still running; to explore it:")
        say.block("\n".join(cluster.how_to_explore()))
        say("remove it with: hacontrol lab --down")
    if report.interrupted:
        return 130
    return 0 if report.ok else 1


def run_pair(c: Cluster, report: Report, say: Say, n: int) -> None:
    raise LabError("the two-director form is not wired yet")
