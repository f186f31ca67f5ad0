"""``hacontrol lab``: build the seed's cluster in namespaces, run the daemon on it, measure, report.

The first form (one director) builds client, director, rs1..rs3 (and a switch namespace with the
bridges), starts ``hacontrol run`` on the director, shows round-robin from the client's answers and
the servers' own counts, kills rs2 and measures how long it takes to leave the table and the
traffic (and how many requests failed meanwhile), restarts it and measures its return, then prints
a report and removes everything, also on Ctrl-C, SIGTERM or a failure. The two-director form
(``--ha``, the default when the HA pair is installed) is ``hacontrol.lab.pair.run_pair``; both
share ``hacontrol.lab.scenario``.

Entry point: ``main(argv) -> int`` (``hacontrol lab [options]``). Exit status: 0 when every step
showed what it should, 1 when a step failed, 2 on bad usage, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from hacontrol.lab.netns import NetnsLab, Ns, cleanup_stale
from hacontrol.lab.pair import run_pair
from hacontrol.lab.scenario import (
    LabError,
    Report,
    Say,
    Step,
    Watch,
    in_table,
    kill_server,
    r3,
    restart_server,
    round_robin,
)
from hacontrol.lab.topology import REAL_SERVERS, Cluster

KEEP_PREFIX = "hclab"
KEEP_DIR = Path(tempfile.gettempdir()) / "hacontrol-lab"


class Interrupted(KeyboardInterrupt):
    """SIGTERM or SIGHUP: stop and clean up, like Ctrl-C."""


# ------------------------------------------------------------------ the first form


def run_single(c: Cluster, report: Report, say: Say, n: int) -> None:
    t = time.monotonic()
    c.build()
    say(f"built namespaces {', '.join(ns.name for ns in c.lab.namespaces.values())}")
    report.steps.append(Step("build", "client, director, rs1..rs3 on two bridges; backends up",
                             {"seconds": r3(time.monotonic() - t)}))  # fmt: skip

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
                             {"all_up_s": r3(t_up - t)}))  # fmt: skip

    report.steps.append(round_robin(c, n, "round-robin", say))

    report.steps.append(kill_server(c, watch, say))
    report.steps.append(restart_server(c, watch, say))
    report.steps.append(round_robin(c, n, "round-robin again", say))
    watch.stop()


# ------------------------------------------------------------------ report


def _fmt(v: Any) -> str:
    if isinstance(v, dict):
        return " ".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    if isinstance(v, float):
        return f"{v:.3f}".rstrip("0").rstrip(".") if v < 10 else f"{v:.1f}"
    return str(v)


def render(report: Report, width: int = 64) -> str:
    """The report as a table: step, what happened, what was measured (wrapped)."""
    rows: list[tuple[str, str, list[str]]] = [("STEP", "WHAT HAPPENED", ["MEASURED"])]
    for s in report.steps:
        items = [f"{k}={_fmt(v)}" for k, v in s.measured.items()]
        rows.append((s.step, s.what, textwrap.wrap(", ".join(items), width) or ["-"]))
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    out = [f"hacontrol lab report ({report.form} form, data plane {report.dataplane or '?'})", ""]
    for step, what, measured in rows:
        out.append(f"{step.ljust(w0)}  {what.ljust(w1)}  {measured[0]}")
        out += [f"{'':{w0}}  {'':{w1}}  {more}" for more in measured[1:]]
    out.append("")
    if report.cleanup:
        out.append(f"cleanup: {_fmt(report.cleanup)}")
    if report.interrupted:
        out.append("result: INTERRUPTED")
    else:
        first = (report.error or "").splitlines()[:1]
        out.append("result: OK" if report.ok else f"result: FAILED: {''.join(first)}")
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
        help="the first form: one director",
    )
    form.add_argument(
        "--ha",
        dest="form",
        action="store_const",
        const="pair",
        help="two directors with the VIP group moving between them (the default when this "
        "installation has the HA pair, hacontrol.ha.runner)",
    )
    p.set_defaults(form="pair" if importlib.util.find_spec("hacontrol.ha.runner") else "single")
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
    say(f"{args.form} form; work directory (configs, logs) {workdir}")
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
