"""IPVS apply benchmark: IpvsDataplane against ``ipvsadm -R``, in the same boot of a real kernel.

Measures, on a kernel with IPVS (on a host without it, the script re-runs itself inside the qemu
guest of tests/vm, one boot; see docs/testing.md):

1. full load: 1,000 services x 10 destinations from an empty table, ``ipvsadm -R`` of the same
   table vs ``IpvsDataplane.apply`` of the diff (timed with and without computing the diff); the
   table is cleared between runs and each result is checked against the desired table;
2. one change: a weight change in a table of 100 vs 10,000 destinations, timing only the apply of
   that one action (median of repeats), plus one ``ipvsadm -e`` for scale.

Usage: python3 bench/ipvs_apply_bench.py [--services N] [--dests N] [--repeats N] [--json FILE]
Under TCG emulation absolute times are inflated (CPU-bound code ~25x); the ratios are the point.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import guest

REPO = Path(__file__).resolve().parents[1]


def vip(i: int) -> tuple[str, int]:
    """Service i's VIP and port: 250 addresses of 198.51.100.0/24 times ports 80, 81, ..."""
    return f"198.51.100.{i % 250 + 1}", 80 + i // 250


def build_table(services: int, dests: int) -> Any:
    from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, TableService

    table = {}
    for i in range(services):
        addr, port = vip(i)
        ds = {DestKey(f"192.0.2.{j + 1}", 8080): DestSpec(1, "nat") for j in range(dests)}
        table[ServiceKey("tcp", addr, port)] = TableService(ServiceSpec("wrr"), ds)
    return table


def restore_text(table: Any) -> str:
    lines = []
    for k, svc in table.items():
        lines.append(f"-A -t {k.address}:{k.port} -s {svc.spec.scheduler}")
        for d, spec in svc.dests.items():
            lines.append(f"-a -t {k.address}:{k.port} -r {d.address}:{d.port} -m -w {spec.weight}")
    return "\n".join(lines) + "\n"


def ipvsadm(*args: str, input: str | None = None) -> None:
    subprocess.run(["ipvsadm", *args], input=input, text=True, check=True, capture_output=True)


async def full_load(services: int, dests: int, repeats: int) -> dict[str, Any]:
    from hacontrol.dataplane.diff import diff
    from hacontrol.dataplane.ipvs import IpvsDataplane

    table = build_table(services, dests)
    text = restore_text(table)
    plane = IpvsDataplane()
    await plane.open()
    runs: dict[str, list[float]] = {"ipvsadm_restore": [], "apply": [], "diff_apply": []}
    try:
        for _ in range(repeats):
            ipvsadm("-C")
            t = time.perf_counter()
            ipvsadm("-R", input=text)
            runs["ipvsadm_restore"].append(time.perf_counter() - t)
            assert await plane.snapshot(set()) == table, "ipvsadm -R result differs"
            ipvsadm("-C")
            t = time.perf_counter()
            actions = diff(table, {}, set())
            t_apply = time.perf_counter()
            await plane.apply(table, actions)
            end = time.perf_counter()
            runs["apply"].append(end - t_apply)
            runs["diff_apply"].append(end - t)
            assert await plane.snapshot(set()) == table, "IpvsDataplane result differs"
        t = time.perf_counter()
        await plane.snapshot(set())
        runs["snapshot"] = [time.perf_counter() - t]
    finally:
        await plane.close()
        ipvsadm("-C")
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "services": services,
        "dests": services * dests,
        "runs": runs,
        "median": med,
        "ratio_apply": med["apply"] / med["ipvsadm_restore"],
        "ratio_diff_apply": med["diff_apply"] / med["ipvsadm_restore"],
    }


async def one_change(services: int, dests: int, repeats: int) -> dict[str, Any]:
    from hacontrol.dataplane.diff import Action, diff
    from hacontrol.dataplane.ipvs import IpvsDataplane
    from hacontrol.dataplane.table import DestSpec

    table = build_table(services, dests)
    plane = IpvsDataplane()
    await plane.open()
    times: list[float] = []
    try:
        ipvsadm("-C")
        await plane.apply(table, diff(table, {}, set()))
        key = sorted(table)[len(table) // 2]
        dest = sorted(table[key].dests)[dests // 2]
        for i in range(repeats):
            action = Action("update_dest", key, dest=dest, dest_spec=DestSpec(2 + i % 2, "nat"))
            t = time.perf_counter()
            await plane.apply(table, [action])
            times.append(time.perf_counter() - t)
        edits = []
        for i in range(5):
            addr = f"{key.address}:{key.port}"
            t = time.perf_counter()
            ipvsadm("-e", "-t", addr, "-r", f"{dest.address}:{dest.port}", "-m", "-w", str(5 + i))
            edits.append(time.perf_counter() - t)
    finally:
        await plane.close()
        ipvsadm("-C")
    return {
        "dests": services * dests,
        "apply_times": times,
        "median": statistics.median(times),
        "ipvsadm_e_median": statistics.median(edits),
    }


def machine() -> dict[str, str]:
    cpu = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"kernel": platform.release(), "cpu": cpu, "cpus": str(os.cpu_count())}


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    full = await full_load(args.services, args.dests, args.repeats)
    print(
        f"full load {full['services']} services x {args.dests} dests = {full['dests']} dests:\n"
        f"  ipvsadm -R          {full['median']['ipvsadm_restore']:8.3f} s (median of "
        f"{args.repeats})\n"
        f"  IpvsDataplane.apply {full['median']['apply']:8.3f} s  ratio {full['ratio_apply']:.2f}\n"
        f"  diff + apply        {full['median']['diff_apply']:8.3f} s  ratio "
        f"{full['ratio_diff_apply']:.2f}\n"
        f"  snapshot            {full['median']['snapshot']:8.3f} s",
        flush=True,
    )
    small = await one_change(10, 10, args.change_repeats)
    big = await one_change(1000, 10, args.change_repeats)
    ratio = big["median"] / small["median"]
    print(
        f"one weight change (median of {args.change_repeats}):\n"
        f"  in {small['dests']:5} dests: {small['median'] * 1000:7.2f} ms "
        f"(ipvsadm -e {small['ipvsadm_e_median'] * 1000:.1f} ms)\n"
        f"  in {big['dests']:5} dests: {big['median'] * 1000:7.2f} ms "
        f"(ipvsadm -e {big['ipvsadm_e_median'] * 1000:.1f} ms)\n"
        f"  ratio 10,000 / 100: {ratio:.2f}",
        flush=True,
    )
    return {"machine": machine(), "full_load": full, "one_change": {"small": small, "big": big,
                                                                   "ratio": ratio}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--services", type=int, default=1000)
    p.add_argument("--dests", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="full-load runs of each side")
    p.add_argument("--change-repeats", type=int, default=15)
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if (
        not os.path.exists("/proc/net/ip_vs")
        and subprocess.run(["modprobe", "ip_vs"], capture_output=True).returncode
    ):
        return guest.in_vm("ipvs_apply_bench.py", argv)
    subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_wrr"], capture_output=True)
    from hacontrol import logs

    logs.configure("warning", "console")  # keep the report readable
    started = time.time()
    result = asyncio.run(bench(args))
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started))
    result["command"] = "python3 bench/ipvs_apply_bench.py " + " ".join(argv)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
