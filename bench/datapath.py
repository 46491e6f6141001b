"""Pod-to-pod datapath per backend beside the raw underlay, on a 2-node netns lab (issue 3, bench 3).

Run as root:  .venv/bin/python bench/datapath.py [--quick] [--backends vxlan,host-gw,udp,wireguard]
              [--reps 3] [--seconds 5] [--pps-seconds 3] [--pings 200] [--json PATH]
              [--dual-stack]

For each backend a lab ``flabb2`` is built (2 nodes, one pod per node attached through our CNI
plugin, flanneld with ``--ip-masq`` as kube-flannel runs it).  Inside that lab two paths are
measured, alternating run by run (raw first on odd runs, overlay first on even ones) so the
machine's noise of the moment hits both alike:

    raw      node n1 -> node n2 over the underlay bridge (198.18.0.1 -> 198.18.0.2), no overlay
    overlay  pod n1p1 -> pod n2p1 through the backend under test

Per path and run: TCP throughput (iperf3, ``--seconds``), 64-byte UDP packets per second as
received by the server (iperf3 -u -l 64 -b 0, ``--pps-seconds``), ping RTT p50/p99
(``--pings`` pings 10 ms apart), and the CPU cost of the TCP run: busy CPU seconds of the whole
machine (all CPUs, /proc/stat user+nice+system+irq+softirq, sender, receiver, datapath and
daemons alike) while the iperf3 client ran, per GB the receiver got ("CPU s/GB", lower is
better; it also counts whatever else the shared machine did in those seconds).  Each figure is
the median of ``--reps`` runs.  The ratio of a backend to the raw underlay is taken against the
raw runs of the same lab (same minutes).

``wireguard`` here is flanneld's userspace driver, wireguard-go (this kernel has no WireGuard
module): every packet crosses a TUN device and is encrypted in a Go process, so expect it far
below the kernel datapaths and far above them in CPU per GB; kernel WireGuard would differ.

``--dual-stack`` (vxlan, host-gw and wireguard; udp has no IPv6): the lab is built with ``lab up
--dual-stack`` (node i also has 2001:db8:18::<i>/64, each pod an IPv6 address in fd10:244::/56,
recorded as ``address6``) and four paths are measured in it:

    raw4      node n1 -> node n2, 198.18.0.1 -> 198.18.0.2
    overlay4  pod n1p1 -> pod n2p1, IPv4 addresses
    raw6      node n1 -> node n2, 2001:db8:18::1 -> 2001:db8:18::2 (iperf3 -6, ping -6)
    overlay6  pod n1p1 -> pod n2p1, IPv6 addresses

in the order raw4, overlay4, raw6, overlay6 on odd runs and the reverse on even ones (so raw and
overlay of each family alternate as above, and so do the families).  Per backend a table gives
each overlay's ratio to the raw path of its own family and IPv6 against IPv4 (overlay6 /
overlay4, raw6 / raw4).  The JSON keeps ``raw``/``overlay`` for IPv4 and adds ``raw6``/
``overlay6``.  The pods' MTU is printed per lab (dual-stack vxlan: 1430, the IPv6 VTEP's
overhead, vs 1450 IPv4-only).  Without ``--dual-stack`` nothing changes.

The machine has 2 cores shared with other engineers' work and iperf3's sender and receiver
compete with the datapath for them: read ratios within one run, not absolute figures.
Exit 1 only if a datapath does not work at all (no ping reply, zero throughput or zero packets),
never for speed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "netns-lab"))

from netnslab import lab as labmod  # noqa: E402
from netnslab.names import LabNames, node_address, node_address6  # noqa: E402
from netnslab.state import LabState  # noqa: E402

LAB_NAME = "flabb2"
BACKENDS = ("vxlan", "host-gw", "udp", "wireguard")
BACKENDS_DUAL = ("vxlan", "host-gw", "wireguard")  # udp has no IPv6
DUAL_PATHS = ("raw4", "overlay4", "raw6", "overlay6")
IPERF_PORT = "5201"
METRICS = ("tcp_gbps", "pps_64", "rtt_p50_ms", "rtt_p99_ms", "cpu_s_per_gb")
HEADERS = {
    "tcp_gbps": "TCP Gbit/s",
    "pps_64": "64B pps",
    "rtt_p50_ms": "RTT p50 ms",
    "rtt_p99_ms": "RTT p99 ms",
    "cpu_s_per_gb": "CPU s/GB",
}
RATIO_HEADS = ("TCP x", "pps x", "p50 x", "p99 x", "CPU x")


class DatapathBroken(RuntimeError):
    """The path under test does not carry traffic at all."""


@dataclass(frozen=True)
class Path_:
    """Where traffic starts and where it goes: a namespace pair and the destination address."""

    name: str  # raw | overlay (dual stack: raw4 | overlay4 | raw6 | overlay6)
    src_ns: str
    dst_ns: str
    dst_ip: str
    family: int = 4  # 6: iperf3 -6, ping -6


def run(ns: str, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", ns, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def cpu_busy_seconds() -> float:
    """Busy CPU time of the whole machine since boot, all CPUs summed (/proc/stat's first line:
    user + nice + system + irq + softirq; idle, iowait and steal left out), in seconds."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    user, nice, system, _idle, _iowait, irq, softirq = (int(x) for x in fields[1:8])
    return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))]


# ---------------------------------------------------------------- one measurement


@contextlib.contextmanager
def iperf_server(ns: str) -> Iterator[None]:
    """A one-shot iperf3 server in ``ns``, listening when the block starts, gone after it."""
    srv = subprocess.Popen(
        ["ip", "netns", "exec", ns, "iperf3", "-s", "-1", "-p", IPERF_PORT],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 10
        while f":{IPERF_PORT} " not in run(ns, ["ss", "-Hltn"], 5).stdout:
            if srv.poll() is not None or time.monotonic() > deadline:
                raise DatapathBroken(f"iperf3 server in {ns} did not start")
            time.sleep(0.02)
        yield
    finally:
        if srv.poll() is None:
            srv.terminate()
        try:
            srv.wait(timeout=3)
        except subprocess.TimeoutExpired:
            srv.kill()
            srv.wait()


def iperf(path: Path_, seconds: float, extra: list[str]) -> tuple[dict[str, Any], float]:
    """iperf3's JSON and the busy CPU seconds of the machine while the client ran."""
    with iperf_server(path.dst_ns):
        cpu0 = cpu_busy_seconds()
        res = run(
            path.src_ns,
            [
                "iperf3",
                "-c",
                path.dst_ip,
                "-p",
                IPERF_PORT,
                "-t",
                f"{seconds:g}",
                "--connect-timeout",
                "3000",
                "-J",
                *(["-6"] if path.family == 6 else []),
                *extra,
            ],
            seconds + 20,
        )
        cpu = cpu_busy_seconds() - cpu0
    try:
        out: dict[str, Any] = json.loads(res.stdout)
    except ValueError:
        raise DatapathBroken(f"iperf3 {' '.join(extra)}: {res.stderr.strip()[-200:]}") from None
    if "error" in out:
        raise DatapathBroken(f"iperf3 {' '.join(extra)}: {out['error']}")
    return out, cpu


def tcp_gbps(path: Path_, seconds: float) -> tuple[float, float]:
    """Throughput in Gbit/s, and busy CPU seconds (all CPUs) per GB received."""
    out, cpu = iperf(path, seconds, [])
    received = out["end"]["sum_received"]
    gb = float(received["bytes"]) / 1e9
    return float(received["bits_per_second"]) / 1e9, (cpu / gb if gb > 0 else float("inf"))


def udp_pps(path: Path_, seconds: float) -> tuple[float, float]:
    """64-byte datagrams per second received by the server, and sent (as fast as iperf3 can)."""
    out, _ = iperf(path, seconds, ["-u", "-l", "64", "-b", "0"])
    end = out["end"]
    s = end.get("sum_received") or end["sum"]  # packets = sent, lost_packets = not received
    received = float(s["packets"]) - float(s.get("lost_packets", 0))
    return received / float(s["seconds"]), float(s["packets"]) / float(s["seconds"])


def ping_rtts(path: Path_, count: int) -> tuple[list[float], int]:
    """RTTs in ms of ``count`` pings 10 ms apart, and how many were sent."""
    six = ["-6"] if path.family == 6 else []
    res = run(
        path.src_ns,
        ["ping", *six, "-n", "-c", str(count), "-i", "0.01", "-W", "1", path.dst_ip],
        count * 0.01 + 15,
    )
    return [float(x) for x in re.findall(r"time=([\d.]+) ms", res.stdout)], count


def measure(path: Path_, seconds: float, pps_seconds: float, pings: int) -> dict[str, float]:
    warm, _ = ping_rtts(path, 5)  # ARP / neighbour resolution, and: does it work at all?
    if not warm:
        raise DatapathBroken(f"{path.name}: no ping reply from {path.dst_ip}")
    gbps, cpu_per_gb = tcp_gbps(path, seconds)
    pps, pps_sent = udp_pps(path, pps_seconds)
    rtts, sent = ping_rtts(path, pings)
    if gbps <= 0 or pps <= 0 or not rtts:
        raise DatapathBroken(f"{path.name}: TCP {gbps} Gbit/s, {pps} pps, {len(rtts)}/{sent} pings")
    return {
        "tcp_gbps": gbps,
        "pps_64": pps,
        "rtt_p50_ms": pct(rtts, 0.5),
        "rtt_p99_ms": pct(rtts, 0.99),
        "cpu_s_per_gb": cpu_per_gb,
        "ping_loss": 1 - len(rtts) / sent,
        "pps_64_sent": pps_sent,
    }


# ---------------------------------------------------------------- one lab per backend


class Interrupted(Exception):
    """SIGTERM: unwind through the finally blocks like Ctrl-C does."""


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(f"signal {signum}")


@contextlib.contextmanager
def lab(name: str, backend: str, dual_stack: bool = False) -> Iterator[LabState]:
    labmod.down(name)  # leftovers of an interrupted run
    try:
        state = labmod.up(
            name,
            labmod.UpOptions(
                nodes=2,
                backend=backend,
                pods_per_node=1,
                flanneld_args=("--ip-masq",),
                timeout=60.0,
                dual_stack=dual_stack,
            ),
        )
        yield state
    finally:
        labmod.down(name)


def mtu(ns: str, dev: str) -> int:
    m = re.search(r" mtu (\d+)", run(ns, ["ip", "-o", "link", "show", "dev", dev], 5).stdout)
    return int(m.group(1)) if m else 0


def bench_backend(
    backend: str, reps: int, seconds: float, pps_seconds: float, pings: int, dual_stack: bool = False
) -> dict[str, list[dict[str, float]]]:
    """Runs of the raw path and of the overlay path, interleaved, in one lab of ``backend``.

    ``dual_stack``: the four paths of ``DUAL_PATHS``, keyed raw/overlay (IPv4), raw6/overlay6."""
    with lab(LAB_NAME, backend, dual_stack) as state:
        names = LabNames(LAB_NAME)
        src_pod, dst_pod = state.nodes[1].pods[0], state.nodes[2].pods[0]
        n1, n2 = names.node_ns(1), names.node_ns(2)
        if not dual_stack:
            paths = {
                "raw": Path_("raw", n1, n2, str(node_address(2).ip)),
                "overlay": Path_("overlay", src_pod.name, dst_pod.name, dst_pod.address.split("/")[0]),
            }
            orders: tuple[tuple[str, ...], ...] = (("raw", "overlay"), ("overlay", "raw"))
            labels = {"raw": "raw underlay", "overlay": backend}
        else:
            if not dst_pod.address6:
                raise DatapathBroken(f"dual stack: pod {dst_pod.name} has no IPv6 address")
            paths = {
                "raw": Path_("raw4", n1, n2, str(node_address(2).ip)),
                "overlay": Path_("overlay4", src_pod.name, dst_pod.name, dst_pod.address.split("/")[0]),
                "raw6": Path_("raw6", n1, n2, str(node_address6(2).ip), family=6),
                "overlay6": Path_(
                    "overlay6", src_pod.name, dst_pod.name, dst_pod.address6.split("/")[0], family=6
                ),
            }
            forward = ("raw", "overlay", "raw6", "overlay6")
            orders = (forward, tuple(reversed(forward)))
            labels = {
                "raw": "raw IPv4",
                "overlay": f"{backend} IPv4",
                "raw6": "raw IPv6",
                "overlay6": f"{backend} IPv6",
            }
            print(
                f"  MTU: underlay {mtu(n1, names.uplink)}, pod eth0 {mtu(src_pod.name, 'eth0')} "
                f"(both families); overlay6 dst {paths['overlay6'].dst_ip}",
                flush=True,
            )
        runs: dict[str, list[dict[str, float]]] = {k: [] for k in paths}
        for rep in range(reps):
            for which in orders[rep % 2]:
                t0 = time.monotonic()
                r = measure(paths[which], seconds, pps_seconds, pings)
                runs[which].append(r)
                label = labels[which]
                print(
                    f"  run {rep + 1} {label:13} TCP {r['tcp_gbps']:7.3f} Gbit/s  "
                    f"{r['pps_64']:7.0f} pps (of {r['pps_64_sent']:6.0f} sent)  RTT p50 {r['rtt_p50_ms']:.3f} p99 {r['rtt_p99_ms']:.3f} ms"
                    f"  loss {r['ping_loss']:.1%}  CPU {r['cpu_s_per_gb']:.2f} s/GB  ({time.monotonic() - t0:.0f}s)",
                    flush=True,
                )
    return runs


def medians(runs: list[dict[str, float]]) -> dict[str, float]:
    return {k: statistics.median(r[k] for r in runs) for k in METRICS}


def print_table(results: dict[str, dict[str, list[dict[str, float]]]], reps: int) -> None:
    all_raw = [r for b in results.values() for r in b["raw"]]
    raw = medians(all_raw)
    print(
        f"\nmedians of {reps} run(s) per path; ratios = backend / raw underlay measured in the "
        "same lab (higher is better for TCP and pps, lower for RTT and CPU s/GB: busy CPU seconds of "
        "all CPUs during the TCP run per GB received)"
    )
    head = "".join(f"{HEADERS[k]:>12}" for k in METRICS)
    ratio_head = "".join(f"{label:>10}" for label in RATIO_HEADS)
    print(f"{'path':22}{head}  {ratio_head}")
    print(f"{'raw underlay (all)':22}" + "".join(_cell(k, raw[k]) for k in METRICS))
    for backend, runs in results.items():
        over, paired = medians(runs["overlay"]), medians(runs["raw"])
        ratios = "".join(f"{over[k] / paired[k]:9.2f}x" for k in METRICS)
        print(f"{backend + ' pod-to-pod':22}" + "".join(_cell(k, over[k]) for k in METRICS) + f"  {ratios}")
    print("raw underlay per lab (the pairing base of each ratio):")
    for backend, runs in results.items():
        paired = medians(runs["raw"])
        print(f"  {'in the ' + backend + ' lab':20}" + "".join(_cell(k, paired[k]) for k in METRICS))


def print_dual_tables(results: dict[str, dict[str, list[dict[str, float]]]], reps: int) -> None:
    """One table per backend: the four paths of its lab, ratios within the lab."""
    print(
        f"\nmedians of {reps} run(s) per path; 'x raw' = path / raw path of the same family in the "
        "same lab, 'v6 x v4' = IPv6 path / IPv4 path of the same kind (higher is better for TCP "
        "and pps, lower for RTT and CPU s/GB)"
    )
    head = "".join(f"{HEADERS[k]:>12}" for k in METRICS)
    ratio_head = "".join(f"{label:>8}" for label in RATIO_HEADS)
    rows = (
        ("raw IPv4 underlay", "raw", "raw", "raw"),
        ("{b} IPv4 pod-to-pod", "overlay", "raw", "overlay"),
        ("raw IPv6 underlay", "raw6", "raw6", "raw"),
        ("{b} IPv6 pod-to-pod", "overlay6", "raw6", "overlay"),
    )
    for backend, runs in results.items():
        med = {k: medians(v) for k, v in runs.items()}
        print(f"\n{backend} (dual-stack lab):")
        width = 8 * len(METRICS)
        print(f"{'path':24}{head}   {'x raw (same family)':>{width}}   {'v6 x v4':>{width}}")
        print(f"{'':24}{'':{12 * len(METRICS)}}   {ratio_head}   {ratio_head}")
        for label, key, raw_key, v4_key in rows:
            m = med[key]
            line = f"{label.format(b=backend):24}" + "".join(_cell(k, m[k]) for k in METRICS)
            if key == raw_key:
                line += f"   {'1':>8}{'':{width - 8}}"
            else:
                line += "   " + "".join(f"{m[k] / med[raw_key][k]:7.2f}x" for k in METRICS)
            if key != v4_key:
                line += "   " + "".join(f"{m[k] / med[v4_key][k]:7.2f}x" for k in METRICS)
            print(line.rstrip())


def _cell(metric: str, value: float) -> str:
    if metric == "pps_64":
        return f"{value:12.0f}"
    return f"{value:12.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--backends", help=f"default {','.join(BACKENDS)} ({','.join(BACKENDS_DUAL)} with --dual-stack)"
    )
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=5.0, help="TCP iperf3 duration")
    ap.add_argument("--pps-seconds", type=float, default=3.0, help="64-byte UDP iperf3 duration")
    ap.add_argument("--pings", type=int, default=200)
    ap.add_argument("--json", help="also write every run and the medians here")
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1 run, 1 s iperf3, 50 pings")
    ap.add_argument(
        "--dual-stack",
        action="store_true",
        help="dual-stack lab: raw and overlay paths of IPv4 and of IPv6 (vxlan, host-gw, wireguard)",
    )
    args = ap.parse_args()
    if args.backends is None:
        args.backends = ",".join(BACKENDS_DUAL if args.dual_stack else BACKENDS)
    if args.dual_stack and (bad := [b for b in args.backends.split(",") if b not in BACKENDS_DUAL]):
        ap.error(f"--dual-stack: no IPv6 in backend(s) {', '.join(bad)} (use {','.join(BACKENDS_DUAL)})")
    if os.geteuid() != 0:
        sys.exit("datapath bench needs root (it builds a netns lab)")
    if args.quick:
        args.reps, args.seconds, args.pps_seconds, args.pings = 1, 1.0, 1.0, 50
    signal.signal(signal.SIGTERM, _on_sigterm)
    backends = args.backends.split(",")
    print(
        f"datapath: 2-node {'dual-stack ' if args.dual_stack else ''}lab {LAB_NAME} per backend, "
        f"{args.reps} run(s) per path, TCP "
        f"{args.seconds:g} s, 64 B UDP {args.pps_seconds:g} s, {args.pings} pings at 10 ms",
        flush=True,
    )
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    broken: list[str] = []
    for backend in backends:
        print(f"{backend}:", flush=True)
        t0 = time.monotonic()
        try:
            results[backend] = bench_backend(
                backend, args.reps, args.seconds, args.pps_seconds, args.pings, args.dual_stack
            )
        except (DatapathBroken, subprocess.TimeoutExpired) as exc:
            print(f"  BROKEN: {exc}", flush=True)
            broken.append(backend)
            continue
        print(f"  ({time.monotonic() - t0:.0f}s)", flush=True)
    if results:
        (print_dual_tables if args.dual_stack else print_table)(results, args.reps)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        doc: dict[str, Any] = {
            "runs": results,
            "medians": {b: {k: medians(v) for k, v in runs.items()} for b, runs in results.items()},
            "broken": broken,
        }
        if args.dual_stack:
            doc["dual_stack"] = True
        Path(args.json).write_text(json.dumps(doc, indent=1))
    if broken:
        print(f"FAIL: datapath not working for {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, Interrupted):
        print("interrupted: lab torn down", file=sys.stderr)
        sys.exit(130)
