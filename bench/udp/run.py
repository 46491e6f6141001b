"""Side-by-side benchmark of the udp backend datapath (run as root; ~3-4 minutes).

Two netns nodes (fudpb-n1/fudpb-n2: `--prefix`, so it can run beside the netlink tests' fudp-*)
with one pod namespace each (tests/udp/udp_topology.py);
for each forwarder, pod-to-pod: TCP throughput (iperf3), 64-byte UDP packets per second
(iperf3 -u -l 64 -b 0, received packets), ping RTT p50/p99 (300 pings, 10 ms apart) and CPU
per forwarded 64-byte packet (user+sys of both forwarder processes / packets delivered).
Forwarders: ours with offload (IFF_VNET_HDR + UDP GSO/GRO), ours plain, bench/udp/cfwd.c
(flannel's proxy design) and kernel vxlan; "ours[-plain]-loop" runs ours with `--io loop` (the
asyncio readers instead of the datapath thread). The RTT is measured twice: on the idle pair
first (`rtt_*`), then again after the throughput runs (`rtt_*_after`). Modes are interleaved
run by run, so machine noise hits all of them alike; medians of --runs runs and the medians of
the per-run ratios are printed, JSON in bench/out/.

    sudo .venv/bin/python bench/udp/run.py [--runs 3] [--seconds 5] [--modes ours,ours-loop,cfwd]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "udp"))
import udp_topology as topo  # noqa: E402

MODES = ("ours", "ours-plain", "cfwd", "vxlan")
# extra datapath arguments of experimental modes: "ours-<name>" / "ours-plain-<name>"
VARIANTS: dict[str, list[str]] = {
    "loop": ["--io", "loop"],
    "poll": ["--io", "poll"],
    "threads": ["--io", "threads"],  # the asyncio readers instead of the datapath threads
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def setup_vxlan() -> None:
    macs = ("02:fd:00:00:00:01", "02:fd:00:00:00:02")
    for i, node in enumerate(topo.NODES):
        o = 1 - i
        dev = f"{topo.PREFIX}-vx{i + 1}"
        topo.sh("ip", "link", "add", dev, "address", macs[i], "type", "vxlan", "id", "1", "local",
                topo.UNDERLAY[i], "dev", f"{topo.PREFIX}-u{i + 1}", "dstport", "8472", "nolearning",
                ns=node)
        topo.sh("ip", "link", "set", dev, "mtu", "1450", "up", ns=node)
        topo.sh("ip", "addr", "add", topo.SUBNETS[i].split("/")[0] + "/32", "dev", dev, ns=node)
        ogw = topo.SUBNETS[o].split("/")[0]
        topo.sh("ip", "neigh", "replace", ogw, "lladdr", macs[o], "dev", dev, "nud", "permanent",
                ns=node)
        topo.sh("bridge", "fdb", "append", macs[o], "dev", dev, "dst", topo.UNDERLAY[o], "self",
                "permanent", ns=node)
        topo.sh("ip", "route", "add", topo.SUBNETS[o], "via", ogw, "dev", dev, "onlink", ns=node)


def start(mode: str, work: Path, cfwd: Path) -> list[topo.Proc]:
    if mode == "vxlan":
        setup_vxlan()
        return []
    if mode == "cfwd":
        return [topo.start_cfwd(i, cfwd, work) for i in (0, 1)]
    offload, extra = ours_args(mode)
    return [topo.start_ours(i, work, offload=offload, extra=extra) for i in (0, 1)]


def ours_args(mode: str) -> tuple[bool, list[str]]:
    """"ours[-plain][-<variant>]" -> (offload, extra datapath arguments)."""
    rest = mode.removeprefix("ours")
    offload = not rest.startswith("-plain")
    variant = rest.removeprefix("-plain").removeprefix("-")
    return offload, (VARIANTS[variant] if variant else [])


def iperf(work: Path, args: list[str], seconds: int) -> dict[str, object]:
    srv = topo.node_exec(topo.PODS[1], ["iperf3", "-s", "-1"], work / "iperf-s.log")
    try:
        topo.wait_for(lambda: ":5201" in topo.sh("ss", "-ltn", ns=topo.PODS[1]).stdout, 10,
                      "iperf3 server")
        r = topo.sh("iperf3", "-c", topo.POD_IPS[1], "-t", str(seconds), "-J", *args,
                    ns=topo.PODS[0], check=False)
    finally:
        srv.stop()
    result: dict[str, object] = json.loads(r.stdout)
    return result


def measure_rtt(pings: int) -> dict[str, float]:
    ping = topo.ping(0, topo.POD_IPS[1], count=pings, interval="0.01")
    rtts = sorted(float(x) for x in re.findall(r"time=([\d.]+) ms", ping.stdout))
    assert len(rtts) >= pings * 3 // 4, ping.stdout[-500:]
    return {"rtt_p50_ms": rtts[len(rtts) // 2],
            "rtt_p99_ms": rtts[min(len(rtts) - 1, int(len(rtts) * 0.99))]}


def measure(mode: str, work: Path, cfwd: Path, seconds: int, rtt_only: bool = False,
            pings: int = 200) -> dict[str, float]:
    topo.setup(pod_mtu=1450 if mode == "vxlan" else 1472)
    procs: list[topo.Proc] = []
    try:
        procs = start(mode, work, cfwd)
        pids = [p.popen.pid for p in procs]
        ping = topo.ping(0, topo.POD_IPS[1], count=5, interval="0.01")  # warm up, ARP
        assert ping.returncode == 0, f"{mode}: no connectivity: {ping.stdout}"
        rtt = measure_rtt(pings)
        if rtt_only:
            return rtt
        tcp = iperf(work, [], seconds)
        bps = float(tcp["end"]["sum_received"]["bits_per_second"])  # type: ignore[index]
        cpu0 = cpu_seconds(pids)
        udp = iperf(work, ["-u", "-l", "64", "-b", "0"], seconds)
        cpu = cpu_seconds(pids) - cpu0
        s = udp["end"]["sum"]  # type: ignore[index]
        delivered = float(s["packets"]) - float(s["lost_packets"])
        pps = delivered / float(s["seconds"])
        return {
            "tcp_gbps": bps / 1e9,
            "pps_64": pps,
            **rtt,
            **{f"{k}_after": v for k, v in measure_rtt(pings).items()},
            "cpu_us_per_pkt": (cpu / delivered * 1e6) if pids and delivered else float("nan"),
        }
    finally:
        for p in procs:
            p.stop()
        topo.teardown()


def main() -> int:
    ap = argparse.ArgumentParser(description="udp backend side-by-side benchmark")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--rtt-only", action="store_true",
                    help="only the ping RTT (quick iterations on the latency path)")
    ap.add_argument("--pings", type=int, default=300, help="pings per RTT measurement")
    ap.add_argument("--prefix", default="fudpb", help="namespace/link name prefix")
    ap.add_argument("--out", default=str(REPO / "bench" / "out" / "udp.json"))
    args = ap.parse_args()
    modes = args.modes.split(",")
    topo.set_prefix(args.prefix)
    results: dict[str, list[dict[str, float]]] = {m: [] for m in modes}
    with tempfile.TemporaryDirectory(prefix="fudp-bench-") as tmp:
        work = Path(tmp)
        cfwd = topo.build_cfwd(work / "cfwd")
        for run in range(args.runs):
            for mode in modes:
                t0 = time.monotonic()
                try:
                    r = measure(mode, work, cfwd, args.seconds, args.rtt_only, args.pings)
                except (AssertionError, KeyError, RuntimeError, TimeoutError,
                        subprocess.TimeoutExpired) as e:
                    print(f"run {run + 1} {mode}: failed: {e!r}", flush=True)
                    continue
                results[mode].append({"run": run, **r})
                print(f"run {run + 1} {mode:10s} " + " ".join(f"{k}={v:.3f}" for k, v in r.items())
                      + f" ({time.monotonic() - t0:.0f}s)", flush=True)
    keys: tuple[str, ...] = ("tcp_gbps", "pps_64", "rtt_p50_ms", "rtt_p99_ms", "rtt_p50_ms_after",
                             "cpu_us_per_pkt")
    if args.rtt_only:
        keys = ("rtt_p50_ms", "rtt_p99_ms")
    med: dict[str, dict[str, float]] = {
        m: {k: statistics.median(r[k] for r in rs) if rs else float("nan") for k in keys}
        for m, rs in results.items()}
    print(f"\nmedians of {args.runs} runs:")
    print(f"{'mode':12s}" + "".join(f"{k:>18s}" for k in keys))
    for m in modes:
        print(f"{m:12s}" + "".join(f"{med[m][k]:18.3f}" for k in keys))

    def ratio(a: str, b: str, k: str) -> float:
        """Median of the per-run ratios a/b (runs paired: the modes of one run share the
        machine's state of that moment), not the ratio of the medians."""
        by_run = {r["run"]: r[k] for r in results[b]}
        paired = [r[k] / by_run[r["run"]] for r in results[a] if by_run.get(r["run"])]
        return statistics.median(paired) if paired else float("nan")

    for base in ("cfwd", "vxlan"):
        if base not in med:
            continue
        for m in modes:
            if m == base:
                continue
            print(f"{m} / {base}: " + ", ".join(f"{k} {ratio(m, base, k):.2f}x" for k in keys
                                                if k != "cpu_us_per_pkt" or base != "vxlan"))
    if "ours" in med and "cfwd" in med and not args.rtt_only:
        goals = (ratio("ours", "cfwd", "tcp_gbps") >= 1.7, ratio("ours", "cfwd", "pps_64") >= 1.0,
                 ratio("ours", "cfwd", "rtt_p50_ms") <= 1.5,
                 ratio("ours", "cfwd", "rtt_p50_ms_after") <= 1.5)
        print("goals (TCP >= 1.7x, pps >= 1.0x, RTT p50 <= 1.5x idle and after load, vs cfwd):",
              " ".join("met" if g else "MISSED" for g in goals))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"runs": results, "medians": med}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
