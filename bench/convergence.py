"""Convergence bench: 5000 vxlan peer leases -> 15000 kernel objects, ours beside ``ip -batch``.

Run as root:  .venv/bin/python bench/convergence.py [--peers 5000] [--rounds 1] [--variants]

Each round builds two fresh namespaces (prefix ``fknl-bench``) with the same underlay and
``flannel.1``.  In the first, a child process (so its peak RSS is the backend's alone) runs the
vxlan backend as the daemon does at start: ``prepare`` (device), ``register_network``
(address) and the network's ``repair`` over N peer leases, then checks the N routes, N neighbours and N fdb
entries are in the kernel.  In the second, ``ip -batch`` and ``bridge -batch`` install the same
objects (batch files written before the clock starts).  Goals: <= 0.8x ``ip -batch``, <= 80 MB.

Also printed: a drift pass with nothing to repair, 200 single-lease changes applied
incrementally (MAC change of one peer: 3 ops) as p50/p99 kernel-side latency, and the same
changes applied while drift passes run beside them, as the daemon runs them (the repair in a
task of its own): how long an event waits behind a full pass.

``--variants`` times the same 15000 requests on the raw socket three ways (what was tried):
one request per send (like ``ip -batch``), pipelined with an ack per request, and pipelined
with one ack per chunk (what the applier uses).

Lab-dependent parts of issue 3's bench (lease change -> kernel on every lab node via etcd, p50/p99
over 200 changes; iperf3 / 64-byte pps / RTT per backend beside the raw underlay) need netns-lab;
hook: ``single_change_latencies()`` below is the per-node kernel half of that measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

NETWORK = IPv4Network("10.64.0.0/10")  # room for 16383 /24 leases, used only in namespaces
OWN_SUBNET = IPv4Network("10.64.0.0/24")
UNDERLAY = "198.18.0.1"
EXT = "fknlb0"
OWN_MAC = "0a:00:00:00:00:01"


def sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, timeout=120)


def peer(i: int) -> tuple[IPv4Network, IPv4Address, str]:
    """Peer i: subnet, PublicIP, VtepMAC."""
    subnet = IPv4Network((int(OWN_SUBNET.network_address) + (i + 1) * 256, 24))
    public_ip = IPv4Address(int(IPv4Address("198.18.1.0")) + i)
    mac = f"0a:{i >> 24:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:01"
    return subnet, public_ip, mac


def make_namespace(ns: str, with_device: bool) -> None:
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "add", EXT, "type", "veth", "peer", "name", "fknlb1")
    sh("ip", "-n", ns, "addr", "add", f"{UNDERLAY}/15", "dev", EXT)
    sh("ip", "-n", ns, "link", "set", EXT, "up")
    if with_device:
        sh("ip", "-n", ns, "link", "add", "flannel.1", "address", OWN_MAC, "mtu", "1450", "type",
           "vxlan", "id", "1", "local", UNDERLAY, "dev", EXT, "dstport", "8472", "nolearning")
        sh("ip", "-n", ns, "link", "set", "flannel.1", "up")
        sh("ip", "-n", ns, "addr", "add", f"{OWN_SUBNET.network_address}/32", "dev", "flannel.1")


def ip_batch_seconds(ns: str, peers: int) -> float:
    with tempfile.TemporaryDirectory(prefix="fknl-bench-") as tmp:
        ipf, brf = Path(tmp, "ip.batch"), Path(tmp, "bridge.batch")
        ip_lines, br_lines = [], []
        for i in range(peers):
            subnet, public_ip, mac = peer(i)
            vtep = subnet.network_address
            br_lines.append(f"fdb replace {mac} dev flannel.1 dst {public_ip} self permanent\n")
            ip_lines.append(f"neigh replace {vtep} lladdr {mac} dev flannel.1 nud permanent\n")
            ip_lines.append(f"route replace {subnet} via {vtep} dev flannel.1 onlink\n")
        ipf.write_text("".join(ip_lines))
        brf.write_text("".join(br_lines))
        start = time.perf_counter()
        sh("bridge", "-n", ns, "-batch", str(brf))
        sh("ip", "-n", ns, "-batch", str(ipf))
        elapsed = time.perf_counter() - start
    counts = [
        len(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines())
        for cmd in (["ip", "-n", ns, "route", "show", "dev", "flannel.1"],
                    ["ip", "-n", ns, "neigh", "show", "dev", "flannel.1"],
                    ["bridge", "-n", ns, "fdb", "show", "dev", "flannel.1"])
    ]
    assert all(c >= peers for c in counts), f"ip -batch installed only {counts}"
    return elapsed


def rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def child(ns: str, peers: int) -> dict[str, Any]:
    """Runs in its own process: the vxlan backend converging ``peers`` leases."""
    from flanneld.backends.base import BackendContext
    from flanneld.backends.vxlan import VXLANBackend
    from flanneld.iface import select_external_interface
    from flanneld.lease import Lease, LeaseAttrs, make_backend_data
    from flanneld.netconfig import network_config_from_dict
    from flanneld.netlink import Netlink

    rss_imports = rss_kb()
    netconf = network_config_from_dict(
        {"Network": str(NETWORK), "SubnetLen": 24, "Backend": {"Type": "vxlan"}})
    leases: dict[IPv4Network, Lease] = {}
    for i in range(peers):
        subnet, public_ip, mac = peer(i)
        data = make_backend_data({"VNI": 1, "VtepMAC": mac})
        leases[subnet] = Lease(subnet, LeaseAttrs(public_ip, "vxlan", data), etcd_lease_id=1)
    rss_leases = rss_kb()

    async with Netlink(ns) as nl:
        start = time.perf_counter()
        ext = await select_external_interface(nl, iface=[EXT])
        backend = VXLANBackend(BackendContext(ext=ext, netconf=netconf), nl)
        attrs = await backend.prepare()
        own = Lease(OWN_SUBNET, attrs, etcd_lease_id=1)
        network = await backend.register_network(own)
        t_ready = time.perf_counter()
        result = await network.repair(leases)
        t_done = time.perf_counter()
        dev = backend.device_index
        counts = (len([r for r in await nl.routes() if r.ifindex == dev]),
                  len(await nl.neighbours(dev)), len(await nl.fdb(dev)))
        assert counts == (peers, peers, peers), counts
        assert result.failed == 0 and result.applied == 3 * peers, result

        t0 = time.perf_counter()
        drift = await network.repair(leases)
        t_drift = time.perf_counter() - t0
        assert drift.applied == 0 and drift.repaired == 0, drift

        gc.freeze()  # as the daemon does once started (daemon.py: run)
        changes = await single_change_latencies(network, leases, 200)
        during = await changes_during_repair(network, leases, 200)
        await network.close()
        await backend.close()
    return {
        "startup_s": t_done - start,
        "device_s": t_ready - start,
        "reconcile_s": t_done - t_ready,
        "drift_noop_s": t_drift,
        "change_p50_ms": changes[len(changes) // 2] * 1000,
        "change_p99_ms": changes[int(len(changes) * 0.99) - 1] * 1000,
        "during_repair_p50_ms": during[len(during) // 2] * 1000,
        "during_repair_p99_ms": during[int(len(during) * 0.99) - 1] * 1000,
        "during_repair_max_ms": during[-1] * 1000,
        "rss_imports_mb": rss_imports / 1024,
        "rss_leases_mb": rss_leases / 1024,
        "rss_peak_mb": rss_kb() / 1024,
    }


async def changes_during_repair(network: Any, leases: dict[Any, Any], n: int) -> list[float]:
    """``single_change_latencies`` while full passes run back to back in another task."""
    stop = asyncio.Event()

    async def repairs() -> int:
        passes = 0
        while not stop.is_set():
            await network.repair(leases)
            passes += 1
        return passes

    task = asyncio.create_task(repairs())
    await asyncio.sleep(0)
    try:
        out = await single_change_latencies(network, leases, n, gap=0.002)
    finally:
        stop.set()
        passes = await task
    assert passes >= 2, passes
    return out


async def single_change_latencies(network: Any, leases: dict[Any, Any], n: int,
                                  gap: float = 0.0) -> list[float]:
    """One peer's VtepMAC changes n times; seconds per lease event applied (3 ops each).

    Lab hook: the etcd -> watch -> this call -> kernel latency on every lab node wraps this."""
    from flanneld.lease import Lease, LeaseAttrs, make_backend_data

    subnet = next(iter(leases))
    base = leases[subnet]
    out: list[float] = []
    for k in range(n):
        mac = f"0a:ff:00:00:{k >> 8:02x}:{k & 255:02x}"
        leases[subnet] = Lease(subnet, LeaseAttrs(
            base.attrs.public_ip, "vxlan", make_backend_data({"VNI": 1, "VtepMAC": mac})),
            etcd_lease_id=1)
        if gap:
            # The event "arrives" when the sleep is due: the time until the loop serves it
            # (a full pass between its steps holds the loop) counts too.
            t0 = time.perf_counter() + gap
            await asyncio.sleep(gap)
        else:
            t0 = time.perf_counter()
        result = await network.apply({subnet: leases[subnet]})  # as the daemon does
        out.append(time.perf_counter() - t0)
        assert result.failed == 0 and result.applied == 3, result
    return sorted(out)


def variants(ns: str, peers: int) -> dict[str, float]:
    """The same 3*peers requests on the raw socket, three ways (device from make_namespace)."""
    from flanneld.netlink import RawRtnl, encode_op
    from flanneld.netops import Delete, FdbEntry, KernelObject, Neighbour, Replace, Route

    out_json = subprocess.run(["ip", "-n", ns, "-j", "link", "show", "flannel.1"],
                              check=True, capture_output=True, text=True).stdout
    index = json.loads(out_json)[0]["ifindex"]
    objs: list[KernelObject] = []
    for i in range(peers):
        subnet, public_ip, mac = peer(i)
        objs += [FdbEntry(index, mac, public_ip), Neighbour(index, subnet.network_address, mac),
                 Route(subnet, index, subnet.network_address, onlink=True)]
    adds = [encode_op(Replace(o)) for o in objs]
    dels = [encode_op(Delete(o)) for o in reversed(objs)]
    timings: dict[str, float] = {}
    for name, chunk, ack_each in (("one request per send (ip -batch style)", 1, True),
                                  ("pipelined, ack per request", 512, True),
                                  ("pipelined, one ack per chunk (used)", 512, False)):
        raw = RawRtnl(ns, chunk=chunk)
        t0 = time.perf_counter()
        results = raw.execute(adds, ack_each=ack_each)
        timings[name] = time.perf_counter() - t0
        assert all(err == 0 for err, _ in results)
        assert all(err == 0 for err, _ in raw.execute(dels))
        raw.close()
    return timings


def route_scaling(sizes: list[int]) -> list[dict[str, float]]:
    """Seconds ``ip -batch`` takes to add N routes to a vxlan device in a fresh namespace,
    three ways: Go flannel's shape (``S via S.0 dev flannel.1 onlink``: a gateway per route),
    the same N routes through one gateway, and through nexthop objects (``nexthop add id K via
    S.0 dev flannel.1 onlink`` + ``route add S nhid K``).  The kernel shares a fib_info among
    routes with equal attributes and finds a match in a hash that leaves the gateway out, so
    every route of Go's shape is compared with every earlier one on the device: its cost grows
    with N (quadratic in all), which the other two ways show by not growing."""
    ns = "fknl-bench-s"
    out: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="fknl-bench-") as tmp:
        for n in sizes:
            ways: dict[str, list[str]] = {"gateway per route": [], "one gateway": [],
                                          "nexthop objects": []}
            for i in range(n):
                subnet, _, _ = peer(i)
                vtep = subnet.network_address
                ways["gateway per route"].append(f"route add {subnet} via {vtep} dev flannel.1 onlink\n")
                ways["one gateway"].append(f"route add {subnet} via {peer(0)[0].network_address} dev flannel.1 onlink\n")
                ways["nexthop objects"] += [
                    f"nexthop add id {i + 1} via {vtep} dev flannel.1 onlink\n",
                    f"route add {subnet} nhid {i + 1}\n"]
            row: dict[str, float] = {"n": n}
            for way, lines in ways.items():
                path = Path(tmp, "routes.batch")
                path.write_text("".join(lines))
                settle()
                make_namespace(ns, with_device=True)
                try:
                    start = time.perf_counter()
                    sh("ip", "-n", ns, "-batch", str(path))
                    row[way] = time.perf_counter() - start
                finally:
                    subprocess.run(["ip", "netns", "del", ns], capture_output=True)
            out.append(row)
    return out


def settle(timeout: float = 15.0) -> float:
    """Wait until the machine is quiet again: a deleted namespace is torn down by a kernel
    worker after ``ip netns del`` returns (15000 routes, neighbours and fdb entries freed),
    and a run beside that teardown measured ~20% slower.  Polls /proc/stat until a 100 ms
    sample shows under 3% of one core busy; returns the seconds waited."""
    def busy() -> tuple[int, int]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        return sum(fields) - idle, sum(fields)

    t0 = time.monotonic()
    cores = os.cpu_count() or 1
    while time.monotonic() - t0 < timeout:
        b0, a0 = busy()
        time.sleep(0.1)
        b1, a1 = busy()
        if a1 > a0 and (b1 - b0) / (a1 - a0) * cores < 0.03:
            break
    return time.monotonic() - t0


def run_round(peers: int, with_variants: bool, ours_first: bool) -> dict[str, Any]:
    """One round: ours and ``ip -batch``, each in a namespace of its own that is deleted (and
    the machine settled) before the other starts, so neither runs beside the other's objects
    or their teardown; ``ours_first`` alternates which goes first."""
    ours, theirs = "fknl-bench-a", "fknl-bench-b"
    figures: dict[str, Any] = {}

    def run_ours() -> None:
        make_namespace(ours, with_device=False)
        proc = subprocess.run(
            [sys.executable, __file__, "--child", ours, "--peers", str(peers)],
            check=True, capture_output=True, text=True, timeout=600)
        figures.update(json.loads(proc.stdout.strip().splitlines()[-1]))

    def run_theirs() -> None:
        make_namespace(theirs, with_device=True)
        figures["ip_batch_s"] = ip_batch_seconds(theirs, peers)

    try:
        for step in ((run_ours, run_theirs) if ours_first else (run_theirs, run_ours)):
            settle()
            step()
            for ns in (ours, theirs):
                subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        if with_variants:
            settle()
            make_namespace(theirs, with_device=True)
            figures["variants"] = variants(theirs, peers)
        return figures
    finally:
        for ns in (ours, theirs):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--variants", action="store_true")
    parser.add_argument("--kernel-scaling", action="store_true",
                        help="only time the kernel's route insertion at 1250..10000 routes, "
                             "three ways (see route_scaling)")
    parser.add_argument("--child", metavar="NETNS", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(asyncio.run(child(args.child, args.peers))))
        return
    if os.geteuid() != 0:
        sys.exit("convergence bench needs root (it creates network namespaces)")
    if args.kernel_scaling:
        print("kernel route insertion, ip -batch, fresh namespace per run (seconds; us per route)")
        rows = route_scaling([1250, 2500, 5000, 10000])
        ways = [k for k in rows[0] if k != "n"]
        print(f"{'routes':>7}" + "".join(f"{w:>26}" for w in ways))
        for row in rows:
            n = int(row["n"])
            print(f"{n:7d}" + "".join(
                f"{row[w]:>15.3f} ({row[w] / n * 1e6:5.1f} us)" for w in ways))
        return
    n = args.peers
    print(f"convergence: {n} vxlan peer leases -> {3 * n} kernel objects "
          f"({n} routes, {n} neighbours, {n} fdb entries)")
    ratios: list[float] = []
    for r in range(args.rounds):
        f = run_round(n, args.variants, ours_first=r % 2 == 0)
        ratio = f["reconcile_s"] / f["ip_batch_s"]
        ratios.append(ratio)
        print(f"round {r + 1} ({'ours' if r % 2 == 0 else 'ip -batch'} first):")
        print(f"  ours, reconcile(full) of {n} peers : {f['reconcile_s']:.3f} s")
        print(f"  ours, incl. device+address setup   : {f['startup_s']:.3f} s")
        print(f"  ip -batch + bridge -batch          : {f['ip_batch_s']:.3f} s")
        print(f"  ratio ours/ip-batch                : {ratio:.2f}x  (goal <= 0.8x)")
        print(f"  startup ratio (incl. device)       : {f['startup_s'] / f['ip_batch_s']:.2f}x")
        print(f"  peak RSS of the backend process    : {f['rss_peak_mb']:.1f} MB  (goal <= 80 MB;"
              f" after imports {f['rss_imports_mb']:.1f}, after leases "
              f"{f['rss_leases_mb']:.1f})")
        print(f"  drift pass, nothing to repair      : {f['drift_noop_s']:.3f} s")
        print(f"  one lease change (3 ops) p50 / p99 : {f['change_p50_ms']:.2f} / "
              f"{f['change_p99_ms']:.2f} ms (kernel side only, no etcd)")
        print(f"  the same during full passes        : p50 {f['during_repair_p50_ms']:.2f} / "
              f"p99 {f['during_repair_p99_ms']:.2f} / max {f['during_repair_max_ms']:.2f} ms")
        for name, seconds in f.get("variants", {}).items():
            print(f"  raw socket, {name:38}: {seconds:.3f} s")
        if "variants" in f:
            floor = f["variants"]["pipelined, one ack per chunk (used)"]
            print(f"  kernel floor (raw socket, requests encoded beforehand) / ip-batch: "
                  f"{floor / f['ip_batch_s']:.2f}x")
    if len(ratios) > 1:
        print(f"median ratio ours/ip-batch over {len(ratios)} rounds: "
              f"{sorted(ratios)[len(ratios) // 2]:.2f}x  (goal <= 0.8x)")


if __name__ == "__main__":
    main()
