"""ADD+DEL latency of the `flannel` CNI plugin beside the delegate chain called directly.

Run as root: `.venv/bin/python bench/cni/bench_cni.py [--pods 200]`.

One run, same node, same rendered config: for every pod, "ours" runs the flannel plugin
(flannel netconf on stdin, which renders the delegate config, saves state and runs bridge, which
runs host-local) and "direct" runs /usr/lib/cni/bridge with the bytes the plugin renders. The
two alternate pod by pod so machine noise hits both alike. The process enters a node netns
(fcni-bn*) it creates, so the bridge and veths never touch the root namespace; pods are a small
pool of netns (fcni-bp*), ADD then DEL each time. Everything is deleted at the end.
Also printed: the floors - bare interpreter start (`python3 -IS -c pass`), the plugin's own
start (VERSION), and bridge's start - since ours can never beat direct + interpreter start.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flanneld.cni import netconf, render, subnetenv

REPO = Path(__file__).resolve().parents[2]

BRIDGE = "/usr/lib/cni/bridge"
CLONE_NEWNET = 0x40000000
SUBNET_ENV = ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


def enter_netns(name: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def timed(argv: list[str], env: dict[str, str], stdin: bytes) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True)
    elapsed = (time.perf_counter() - t0) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} {env['CNI_COMMAND']} failed: {proc.stdout!r} "
                           f"{proc.stderr[-300:]!r}")
    return elapsed


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def start_floor(argv: list[str], n: int = 30) -> float:
    env = {"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"}
    return statistics.median(
        timed(argv, env, b'{"cniVersion":"1.0.0"}') for _ in range(n)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=200)
    parser.add_argument("--pool", type=int, default=8, help="pod netns reused round-robin")
    parser.add_argument("--flannel", default=str(REPO / ".venv" / "bin" / "flannel"))
    parser.add_argument("--version", default="0.3.1", help="cniVersion of the netconf")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("bench_cni: run as root", file=sys.stderr)
        return 2
    if not os.access(args.flannel, os.X_OK):
        print(f"bench_cni: {args.flannel} missing: bash cni-plugin/install-launcher.sh .venv",
              file=sys.stderr)
        return 2
    interpreter = Path(args.flannel).read_text().splitlines()[0][2:].split()[0]
    tag = os.getpid() % 100000
    node = f"fcni-bn{tag}"
    pods = [f"fcni-bp{tag}-{i}" for i in range(args.pool)]
    work = Path(tempfile.mkdtemp(prefix="fcni-bench-"))
    created: list[str] = []
    try:
        for name in [node, *pods]:
            subprocess.run(["ip", "netns", "add", name], check=True)
            created.append(name)
        (work / "subnet.env").write_text(SUBNET_ENV)
        conf = {
            "cniVersion": args.version, "name": "cbr0", "type": "flannel",
            "subnetFile": str(work / "subnet.env"), "dataDir": str(work / "flannel"),
            "delegate": {"bridge": "fcnibr0", "hairpinMode": True, "isDefaultGateway": True},
            "ipam": {"dataDir": str(work / "ipam")},
        }
        ours_in = json.dumps(conf).encode()
        parsed = netconf.parse(netconf.decode(ours_in))
        direct_in = render.delegate_bytes(parsed, subnetenv.load(str(work / "subnet.env")))
        enter_netns(node)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)

        base = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
                "CNI_PATH": "/usr/lib/cni", "CNI_IFNAME": "eth0"}
        variants = {"ours": ([args.flannel], ours_in), "direct": ([BRIDGE], direct_in)}
        samples: dict[str, dict[str, list[float]]] = {
            v: {"ADD": [], "DEL": [], "ADD+DEL": []} for v in variants}

        def cycle(variant: str, i: int, record: bool) -> None:
            argv, stdin = variants[variant]
            env = dict(base, CNI_CONTAINERID=f"b{variant}{i}",
                       CNI_NETNS=f"/run/netns/{pods[i % len(pods)]}")
            add = timed(argv, dict(env, CNI_COMMAND="ADD"), stdin)
            dele = timed(argv, dict(env, CNI_COMMAND="DEL"), stdin)
            if record:
                samples[variant]["ADD"].append(add)
                samples[variant]["DEL"].append(dele)
                samples[variant]["ADD+DEL"].append(add + dele)

        for i in range(6):  # warm-up: bridge creation, page cache, pyc
            cycle("ours" if i % 2 else "direct", 100000 + i, record=False)
        for i in range(args.pods):
            order = ("ours", "direct") if i % 2 else ("direct", "ours")
            for variant in order:
                cycle(variant, i, record=True)

        floor_py = start_floor([interpreter, "-IS", "-c", "pass"])
        floor_ours = start_floor([args.flannel])
        floor_bridge = start_floor([BRIDGE])
    finally:
        for name in created:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(work)])

    print(f"CNI ADD/DEL latency, {args.pods} pods, cniVersion {args.version}, ms "
          f"(ours = flannel -> bridge -> host-local; direct = bridge -> host-local)")
    print(f"{'':10s}{'ours p50':>10s}{'ours p99':>10s}{'dir p50':>10s}{'dir p99':>10s}"
          f"{'p50 x':>8s}{'p99 x':>8s}")
    for op in ("ADD", "DEL", "ADD+DEL"):
        o, d = samples["ours"][op], samples["direct"][op]
        print(f"{op:10s}{pct(o, .5):10.1f}{pct(o, .99):10.1f}{pct(d, .5):10.1f}"
              f"{pct(d, .99):10.1f}{pct(o, .5) / pct(d, .5):8.2f}{pct(o, .99) / pct(d, .99):8.2f}")
    add_d = pct(samples["direct"]["ADD"], .5)
    add_o = pct(samples["ours"]["ADD"], .5)
    print(f"floors (median start-up): python3 -IS -c pass {floor_py:.1f} ms; "
          f"flannel VERSION {floor_ours:.1f} ms; bridge VERSION {floor_bridge:.1f} ms")
    floor = add_d + floor_py
    print(f"ADD p50: ours {add_o:.1f} ms = {add_o / add_d:.2f}x direct ({add_d:.1f} ms); "
          f"floor direct + interpreter = {floor:.1f} ms = {floor / add_d:.2f}x; "
          f"ours is {add_o - floor:+.1f} ms from the floor; goal <= 1.5x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
