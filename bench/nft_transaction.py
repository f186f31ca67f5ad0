"""The cost of one per-event nftables transaction, by how it is sent and by the table's size.

In a fresh network namespace, our table with S services x 10 real servers (rendered by
``NftDataplane``, in as many service tables as the plane gives S: one up to 64, 16 at 1,000),
then the transaction of one health change (one real server of one service goes to weight 0 and
back: ``nft_delta``'s commands: a weight element deleted and added, the
service's chain flushed and its rule added) sent ``--reps`` times, alternating, each way:

* ``binary-json``: ``ip netns exec NS nft -j -f -`` (a fork + exec per transaction; the plane
  before issue 8's in-process change, and its fallback);
* ``lib-json``: the same JSON through libnftables in this process (what the plane does now);
* ``lib-native``: the same commands in nft's native syntax through libnftables (the rule text as
  nft lists it);
* ``netlink``: the same commands as our own nf_tables netlink batch (``hacontrol.dataplane.
  nftnl``: what the plane does now), every ack read.

Prints the median and minimum in ms per size and way. What grows with S through nft is its cache:
before every transaction it dumps every chain and set of the namespace (1,000 service chains and
their 1,000 anonymous slot maps at S = 1,000) because the kernel's generation moved on with the
last commit. Our own batch lists nothing.

    python3 bench/nft_transaction.py [--sizes 10,1000] [--reps 30]

As root; the namespace is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from hacontrol.dataplane.nft import NftDataplane
from hacontrol.dataplane.nft_delta import address_refs, delta
from hacontrol.dataplane.nft_exec import LibNft, enter_netns
from hacontrol.dataplane.nft_render import chain_name
from hacontrol.dataplane.nft_shards import target_count
from hacontrol.dataplane.nftnl import Channel, open_socket
from hacontrol.dataplane.nftnl_rule import encode
from hacontrol.dataplane.table import DestKey, DestSpec, ServiceKey, ServiceSpec, Table
from hacontrol.dataplane.table import TableService as TS
from hacontrol.lab.netns import NetnsLab, Ns

TABLE = "hctx"


def table(services: int) -> Table:
    out: Table = {}
    for i in range(services):
        key = ServiceKey("tcp", f"198.51.100.{1 + i // 250}", 1000 + i % 250)
        dests = {DestKey(f"192.0.2.{j}", 8080): DestSpec(1) for j in range(1, 11)}
        out[key] = TS(ServiceSpec("wrr"), dests)
    return out


class LibIn:
    """A libnftables context in ``ns``, called on one thread of its own that entered it (as
    the plane's worker does: a call renews the context on the calling thread)."""

    def __init__(self, ns: Ns) -> None:
        self.pool = ThreadPoolExecutor(1, initializer=enter_netns, initargs=(ns.name,))
        self.lib = self.pool.submit(LibNft, None).result()

    def run(self, text: bytes, as_json: bool) -> tuple[int, str, str]:
        return self.pool.submit(self.lib.run, text, as_json).result()

    def close(self) -> None:
        self.pool.submit(self.lib.close).result()
        self.pool.shutdown()


def channel_in(ns: Ns) -> Channel:
    """Our netlink writer's socket opened in ``ns`` (by a thread that enters it)."""
    got: list[Channel] = []
    t = threading.Thread(target=lambda: got.append(Channel(open_socket(ns.name), 10.0)))
    t.start()
    t.join()
    return got[0]


def nft_f(ns: Ns, batch: bytes) -> None:
    """``nft -j -f -`` in ``ns``: the binary, a fork + exec."""
    subprocess.run(ns.argv("nft", "-j", "-f", "-"), input=batch, check=True, capture_output=True)


def timed(send: Callable[[int], None], reps: int) -> tuple[float, float]:
    took = []
    for i in range(reps):
        start = time.perf_counter()
        send(i)
        took.append((time.perf_counter() - start) * 1000)
    return statistics.median(took), min(took)


def measure(ns: Ns, services: int, reps: int) -> dict[str, tuple[float, float]]:
    plane = NftDataplane(TABLE, shards=target_count(services))  # as the plane lays them out
    full = table(services)
    nft_f(ns, json.dumps(plane.render(full)).encode())
    key, dest = sorted(full)[0], DestKey("192.0.2.1", 8080)
    drained = dict(full)
    drained[key] = TS(full[key].spec, {**full[key].dests, dest: DestSpec(0)})
    docs = [
        json.dumps({"nftables": delta(plane, a, b, [key], address_refs(a, plane))}).encode()
        for a, b in ((full, drained), (drained, full))
    ]
    lib = LibIn(ns)
    chain, shard = chain_name(key), plane.shard(key)
    rules = []
    for doc in docs:
        assert lib.run(doc, as_json=True)[0] == 0
        listed = ns.run("nft", "list", "chain", "inet", shard, chain).stdout
        rules.append(next(line.strip() for line in listed.splitlines() if "dnat" in line))
    elem = f"tcp . {key.address} . {key.port} . {dest.address} . {dest.port}"
    native = [
        (f"delete element inet {TABLE} weights4 {{ {elem} }}\n"
         f"flush chain inet {shard} {chain}\nadd rule inet {shard} {chain} {rule}\n"
         f"add element inet {TABLE} weights4 {{ {elem} : {weight} }}\n").encode()
        for rule, weight in zip(rules, (0, 1), strict=True)
    ]  # fmt: skip

    def binary(i: int) -> None:
        nft_f(ns, docs[i % 2])

    def lib_json(i: int) -> None:
        assert lib.run(docs[i % 2], as_json=True)[0] == 0

    def lib_native(i: int) -> None:
        rc, _, err = lib.run(native[i % 2], as_json=False)
        assert rc == 0, err

    chan = channel_in(ns)
    commands = [json.loads(doc)["nftables"] for doc in docs]

    def netlink(i: int) -> None:
        batch = encode(plane.tables(), commands[i % 2], 1 + i * 64)
        assert not [a for a in chan.roundtrip(batch) if a.error]

    try:
        return {
            name: timed(send, reps)
            for name, send in (
                ("binary-json", binary),
                ("lib-json", lib_json),
                ("lib-native", lib_native),
                ("netlink", netlink),
            )
        }
    finally:
        lib.close()
        chan.close()
        for name in plane.shards(full) | {TABLE}:
            ns.run("nft", "delete", "table", "inet", name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", default="10,1000")
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root (a network namespace, nftables)")
    with NetnsLab() as lab:
        ns = lab.add("tx")
        for size in (int(s) for s in args.sizes.split(",")):
            got = measure(ns, size, args.reps)
            cells = ", ".join(f"{k} {m:.2f} ms (min {lo:.2f})" for k, (m, lo) in got.items())
            print(f"{size} services: {cells}", flush=True)


if __name__ == "__main__":
    main()
