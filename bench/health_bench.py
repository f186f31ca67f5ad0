"""Health-check benchmark: hacontrol's HealthChecker (uvloop) against a C epoll baseline.

On demand, not in CI. Real servers are one C epoll process (bench/epoll_responder.c) listening on
127.1.x.y addresses x ports (loopback only). For each target count and check type, the real
``HealthChecker`` runs under uvloop in a child process (1 s interval, default jitter, metrics on),
then the C checker (bench/epoll_checker.c) does the same checks; each is measured alone after a
warm-up. Reported: CPU per check (user+sys of the checker process), fraction of one core,
achieved checks/s, p50/p99 latency, RSS, and ratios ours / C. Bounded: every child has a hard
time limit and the responder exits on its own after the whole run.

    python3 bench/health_bench.py                      # 1,000 and 10,000 targets, tcp and http
    python3 bench/health_bench.py --targets 10000 --modes http --seconds 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
PORT_BASE = 21000
PORTS = 100  # ports per address; targets = addresses x PORTS


def child(mode: str, n_addrs: int, warmup: float, seconds: float) -> None:
    """Run the real HealthChecker on uvloop and print one JSON line of measurements."""
    import asyncio

    import uvloop

    from hacontrol import logs
    from hacontrol.health.scheduler import CheckKey, HealthChecker
    from hacontrol.metrics import Metrics
    from hacontrol.model import CheckConfig

    logs.configure(level="info", fmt="json", stream=open(os.devnull, "w"))  # noqa: SIM115
    check = CheckConfig(type=mode, interval=1.0, timeout=0.5)  # type: ignore[arg-type]
    keys = [
        CheckKey(check, f"127.1.{a // 250}.{1 + a % 250}", PORT_BASE + p)
        for a in range(n_addrs)
        for p in range(PORTS)
    ]

    def cpu() -> tuple[float, float]:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return ru.ru_utime, ru.ru_stime

    async def run() -> dict[str, Any]:
        metrics = Metrics()
        hc = HealthChecker(metrics=metrics)
        hc.set_targets(keys)
        await hc.start()
        await asyncio.sleep(warmup)
        fails0 = (
            metrics.registry.get_sample_value(
                "hacontrol_health_checks_total", {"type": mode, "result": "fail"}
            )
            or 0.0
        )
        c0, n0, t0 = cpu(), hc.checks_run, time.monotonic()
        await asyncio.sleep(seconds)
        c1, n1, t1 = cpu(), hc.checks_run, time.monotonic()
        fails1 = (
            metrics.registry.get_sample_value(
                "hacontrol_health_checks_total", {"type": mode, "result": "fail"}
            )
            or 0.0
        )
        snap = hc.snapshot().values()
        lat = sorted(s.last_latency for s in snap if s.last_latency is not None)
        up = sum(1 for s in snap if s.state.value == "up")
        reasons: dict[str, int] = {}
        for s in snap:
            if not s.last_ok:
                reasons[s.last_reason] = reasons.get(s.last_reason, 0) + 1
        await hc.stop()
        return {
            "impl": "hacontrol-uvloop",
            "mode": mode,
            "targets": len(keys),
            "wall_s": t1 - t0,
            "checks": n1 - n0,
            "failed": int(fails1 - fails0),
            "usr_s": c1[0] - c0[0],
            "sys_s": c1[1] - c0[1],
            "cpu_s": sum(c1) - sum(c0),
            "p50_s": lat[len(lat) // 2] if lat else 0.0,
            "p99_s": lat[int(len(lat) * 0.99)] if lat else 0.0,
            "rss_kb": _rss_kb(),
            "up": up,
            "last_fail_reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])[:3]),
        }

    print(json.dumps(uvloop.run(run())), flush=True)


def _rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def build(tmp: Path) -> tuple[Path, Path]:
    if shutil.which("gcc") is None:
        sys.exit("gcc is needed to build the C responder and baseline")
    out = []
    for name in ("epoll_responder", "epoll_checker"):
        exe = tmp / name
        subprocess.run(["gcc", "-O2", "-o", str(exe), str(HERE / f"{name}.c")], check=True)
        out.append(exe)
    return out[0], out[1]


def run_json(argv: list[str], limit: float) -> dict[str, Any]:
    r = subprocess.run(argv, capture_output=True, text=True, timeout=limit)
    if r.returncode != 0:
        raise RuntimeError(f"{argv[0]} exit {r.returncode}: {r.stderr.strip()[-500:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def derive(r: dict[str, Any]) -> dict[str, Any]:
    n = max(r["checks"], 1)
    r["us_per_check"] = r["cpu_s"] / n * 1e6
    r["us_usr"] = r["usr_s"] / n * 1e6
    r["us_sys"] = r["sys_s"] / n * 1e6
    r["core"] = r["cpu_s"] / r["wall_s"]
    r["rate"] = r["checks"] / r["wall_s"]
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", default="1000,10000", help="comma list, multiples of 100")
    p.add_argument("--modes", default="tcp,http")
    p.add_argument("--seconds", type=float, default=20.0, help="measured window per run")
    p.add_argument("--warmup", type=float, default=3.0)
    p.add_argument(
        "--child", nargs=4, metavar=("MODE", "N_ADDRS", "WARMUP", "SECONDS"), help=argparse.SUPPRESS
    )
    args = p.parse_args(argv)
    if args.child:
        mode, n_addrs, warmup, seconds = args.child
        child(mode, int(n_addrs), float(warmup), float(seconds))
        return 0
    counts = [int(x) for x in args.targets.split(",")]
    modes = args.modes.split(",")
    if any(n % PORTS or not 0 < n <= 250 * PORTS * 4 for n in counts) or not set(modes) <= {
        "tcp",
        "http",
    }:
        p.error("targets: multiples of 100 up to 100000; modes: tcp,http")
    per_run = args.warmup + args.seconds
    budget = len(counts) * len(modes) * 2 * (per_run + 15) + 30
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="hc-bench-") as tmpdir:
        responder_exe, checker_exe = build(Path(tmpdir))
        n_addrs = max(counts) // PORTS
        resp = subprocess.Popen(
            [str(responder_exe), str(n_addrs), str(PORT_BASE), str(PORTS), str(int(budget))],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            line = resp.stdout.readline() if resp.stdout else ""
            if not line.startswith("ready"):
                raise RuntimeError(f"responder did not start: {line!r}")
            for n in counts:
                for mode in modes:
                    a = n // PORTS
                    ours = derive(
                        run_json(
                            [
                                sys.executable,
                                str(Path(__file__).resolve()),
                                "--child",
                                mode,
                                str(a),
                                str(args.warmup),
                                str(args.seconds),
                            ],
                            per_run + 60,
                        )
                    )
                    c = derive(
                        run_json(
                            [
                                str(checker_exe),
                                mode,
                                str(a),
                                str(PORT_BASE),
                                str(PORTS),
                                "1",
                                "0.5",
                                str(args.warmup),
                                str(args.seconds),
                            ],
                            per_run + 60,
                        )
                    )
                    results += [ours, c]
                    report(ours, c)
        finally:
            resp.terminate()
            resp.wait(timeout=10)
    print()
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cpus, "
        f"{_cpu_model()}, kernel {platform.release()}, python {platform.python_version()}"
    )
    print(f"date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(
        "| targets | check | impl | checks/s | µs CPU/check (usr+sys) | core | ours/C |"
        " p50 ms | p99 ms | RSS MB | failed |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ours, c in zip(results[::2], results[1::2], strict=True):
        ratio = ours["us_per_check"] / max(c["us_per_check"], 1e-9)
        for r in (ours, c):
            print(
                f"| {r['targets']} | {r['mode']} | {r['impl']} | {r['rate']:.0f} | "
                f"{r['us_per_check']:.1f} ({r['us_usr']:.1f}+{r['us_sys']:.1f}) | "
                f"{r['core']:.3f} | {f'{ratio:.2f}x' if r is ours else ''} | "
                f"{r['p50_s'] * 1e3:.2f} | {r['p99_s'] * 1e3:.2f} | {r['rss_kb'] / 1024:.1f} | "
                f"{r['failed']} |"
            )
    return 0


def report(ours: dict[str, Any], c: dict[str, Any]) -> None:
    for label, r in (("ours", ours), ("C", c)):
        print(
            f"{r['targets']:>6} {r['mode']:<4} {label:<4}: {r['rate']:7.0f}/s "
            f"{r['us_per_check']:6.1f} µs/check (usr {r['us_usr']:.1f} sys {r['us_sys']:.1f}) "
            f"core {r['core']:.3f} p50 {r['p50_s'] * 1e3:.2f} ms p99 {r['p99_s'] * 1e3:.2f} ms "
            f"rss {r['rss_kb'] / 1024:.0f} MB failed {r['failed']} "
            f"{r.get('last_fail_reasons') or ''}",
            flush=True,
        )
    ratio = ours["us_per_check"] / max(c["us_per_check"], 1e-9)
    print(f"{'':>6} {'':<4} ratio ours/C CPU per check: {ratio:.2f}x", flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown cpu"


if __name__ == "__main__":
    sys.exit(main())
