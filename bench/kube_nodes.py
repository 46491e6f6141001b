"""Kubernetes mode at 1000 and 5000 nodes beside etcd mode with as many peers: daemon start ->
every route in the kernel, one peer's change -> kernel (p50/p99), the daemon's peak RSS.

Run as root:  .venv/bin/python bench/kube_nodes.py [--peers 1000,5000] [--changes 50]
              [--modes kube,etcd] [--quick]

kube mode (lab ``kbk``): the real kube-apiserver v1.20.2 (tests/kube_server.py) in a netns-lab
underlay, one node namespace running our flanneld with ``--kube-subnet-mgr`` (vxlan, the flannel
ServiceAccount's token; tests/kube/kubelab.py), and N fake peers as Node objects with Go-style
annotations (public-ip, backend-data with a VtepMAC) and podCIDRs 10.224.0.0/24 and up, created
before the daemon starts through the API (POSTs over a few keep-alive connections made inside
the underlay namespace).  etcd mode (lab ``kbe``, bench/lease_change.py's lab): the same N fake
peers as lease keys in the lab's etcd.

For each mode and N:

* start: the node's datapath is made empty (``ip link del flannel.1``: its routes, neighbours
  and fdb entries go with it) and the daemon is started (etcd mode: restarted on the same
  node, the leases already stored); the figure is from the spawn to the moment the last of the
  N routes is in the kernel, stamped by lease_change.py's rtnetlink monitor in the node's
  namespace;
* change: ``--changes`` times (after one more right after the start, reported apart: the
  daemon may still be opening its watch then), one peer's PublicIP is changed (kube: a strategic merge patch of
  its ``flannel.alpha.coreos.com/public-ip`` annotation, as an operator or the peer's flanneld
  would write it; etcd: a put of its lease with the new PublicIP) and the time from the request
  sent to the fdb entry rewritten (``fdb+ MAC newIP``) is measured (lease_change.run_round);
* RSS: the daemon's VmHWM at the end.

p99 of 50 changes is the slowest of them (nearest rank); ``--changes 200`` for a steadier one.

Then a table with kube/etcd ratios.  Nothing is asserted about speed; exit 1 only when a change
never reached the kernel or the start did not complete.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests" / "kube"))

import lease_change as lc  # noqa: E402
from kubelab import KubeLab, kube_lab, node_object  # noqa: E402
from netnslab import daemon as labdaemon  # noqa: E402
from netnslab import lab as labmod  # noqa: E402
from netnslab.names import LabNames  # noqa: E402
from netnslab.proc import ProcRef, alive  # noqa: E402

KUBE_LAB = "kbk"
ETCD_LAB = "kbe"
NETWORK = lc.NETWORK  # 10.224.0.0/11
OWN_CIDR = "10.255.255.0/24"  # the kube node's own podCIDR (the etcd node picks one itself)
PREFIX = "flannel.alpha.coreos.com"
START_TIMEOUT = 300.0
NEW_IP_START = IPv4Address("198.18.1.1")  # the changes' new PublicIPs


def peer_subnets(count: int) -> list[IPv4Network]:
    return lc.fake_subnets(set(), count, lc.BACKGROUND_START)


def peer_mac(i: int) -> str:
    return f"0a:59:00:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}"  # as lease_change's


def peer_ip(i: int) -> IPv4Address:
    return lc.FAKE_PUBLIC_IP_START + i % 150  # as lease_change.load_background


def peer_annotations(i: int) -> dict[str, str]:
    return {f"{PREFIX}/backend-type": "vxlan",
            f"{PREFIX}/backend-data": json.dumps({"VNI": 1, "VtepMAC": peer_mac(i)}, separators=(",", ":")),
            f"{PREFIX}/kube-subnet-manager": "true", f"{PREFIX}/public-ip": str(peer_ip(i))}


@dataclass
class Figures:
    start_s: float = math.nan
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    rss_mb: float = math.nan
    rtt_ms: float = math.nan  # the change request's own round trip (p50)
    lost: int = 0


# ---------------------------------------------------------------- the kube side


class KubeWriter:
    """Admin requests to the apiserver over one keep-alive TLS connection opened inside the
    underlay namespace; ``put(node, patch)``/``delete`` have lease_change's EtcdWriter's
    shape, so lease_change.run_round drives it."""

    def __init__(self, kl: KubeLab) -> None:
        server = kl.server
        ctx = ssl.create_default_context(cafile=str(server.ca_file))
        raw = lc.connect_in_netns(kl.names.underlay_ns, server.host, server.port)
        self.conn = http.client.HTTPSConnection(server.host, server.port, timeout=30, context=ctx)
        self.conn.sock = ctx.wrap_socket(raw, server_hostname=server.host)
        self.conn.auto_open = 0  # a reconnect would happen in the root namespace: fail instead
        self.token = server.admin_token

    def request(self, method: str, path: str, body: object, content_type: str = "application/json"
                ) -> tuple[float, float, dict[str, object]]:
        payload = json.dumps(body, separators=(",", ":"))
        sent = time.monotonic()
        self.conn.request(method, path, payload, {"Content-Type": content_type,
                                                  "Authorization": f"Bearer {self.token}"})
        resp = self.conn.getresponse()
        raw = resp.read()
        acked = time.monotonic()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {raw[:300]!r}")
        obj: dict[str, object] = json.loads(raw)
        return sent, acked, obj

    def put(self, name: str, patch: str) -> tuple[float, float, int]:
        sent, acked, obj = self.request("PATCH", f"/api/v1/nodes/{name}", json.loads(patch),
                                        "application/strategic-merge-patch+json")
        meta = obj.get("metadata")
        return sent, acked, int(str(meta.get("resourceVersion", 0))) if isinstance(meta, dict) else 0

    def delete(self, name: str) -> tuple[float, float, int]:
        raise NotImplementedError

    def close(self) -> None:
        self.conn.close()


def create_peers(kl: KubeLab, subnets: list[IPv4Network], workers: int = 4) -> float:
    """N Node objects through the API, ``workers`` connections in parallel; seconds taken."""
    t0 = time.monotonic()
    chunks = [list(range(k, len(subnets), workers)) for k in range(workers)]

    def work(indexes: list[int]) -> None:
        writer = KubeWriter(kl)
        try:
            for i in indexes:
                writer.request("POST", "/api/v1/nodes",
                               node_object(f"p{i:05d}", str(subnets[i]), peer_annotations(i)))
        finally:
            writer.close()

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(work, chunks))
    return time.monotonic() - t0


# ---------------------------------------------------------------- measuring


def wait_routes(mon: lc.NodeMonitor, cond: threading.Condition, want: set[str], since: float,
                ref: ProcRef) -> float | None:
    """Stamp of the last of the ``want`` routes added after ``since`` (None: not all within
    START_TIMEOUT, or the daemon died)."""
    seen: set[str] = set()
    last = since
    scanned = 0
    deadline = time.monotonic() + START_TIMEOUT
    with cond:
        while True:
            for ev in mon.events[scanned:]:
                if ev.op == "route+" and ev.stamp >= since and ev.a in want and ev.a not in seen:
                    seen.add(ev.a)
                    last = max(last, ev.stamp)
            scanned = len(mon.events)
            if len(seen) == len(want):
                return last
            if time.monotonic() > deadline or not alive(ref):
                print(f"  start: {len(seen)}/{len(want)} routes after {time.monotonic() - since:.0f}s", flush=True)
                return None
            cond.wait(1.0)


def changes_plan(count: int, peers: int, key: object) -> list[lc.Change]:
    """``count`` PublicIP changes of peers spread over the N; ``key(i, new_ip)`` -> (key, value)."""
    out = []
    for k in range(count):
        i = (k * max(1, peers // count) + 1) % peers
        new_ip = NEW_IP_START + k
        name, value = key(i, new_ip)  # type: ignore[operator]
        out.append(lc.Change("ip", name, value, (("fdb+", peer_mac(i), str(new_ip)),)))
    return out


def peak_rss_mb(ref: ProcRef) -> float:
    for line in Path(f"/proc/{ref.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return math.nan


def measure_changes(writer: object, mons: list[lc.NodeMonitor], cond: threading.Condition,
                    plan: list[lc.Change], what: str) -> lc.RoundResult:
    """The first change right after the start apart (the daemon may still be opening its watch:
    reported, not counted), then the others."""
    first = lc.run_round(writer, mons, cond, plan[:1])  # type: ignore[arg-type]
    print(f"{what}: the first change after the start {lc.pct(first.slowest, 0.5):.1f} ms (not counted)",
          flush=True)
    res = lc.run_round(writer, mons, cond, plan[1:])  # type: ignore[arg-type]
    res.lost += first.lost
    return res


def figures_of(res: lc.RoundResult) -> tuple[float, float]:
    if res.slowest:
        worst = max(range(len(res.slowest)), key=res.slowest.__getitem__)
        print(f"  slowest change: #{worst + 1} of {len(res.slowest)}, {res.slowest[worst]:.1f} ms; "
              f"the next {sorted(res.slowest)[-2] if len(res.slowest) > 1 else math.nan:.1f} ms", flush=True)
    return lc.pct(res.slowest, 0.5), lc.pct(res.slowest, 0.99)


def empty_datapath(names: LabNames, node: int) -> None:
    subprocess.run(["ip", "-n", names.node_ns(node), "link", "del", "flannel.1"], check=False,
                   capture_output=True)


def bench_kube(peers: int, changes: int) -> Figures:
    fig = Figures()
    subnets = peer_subnets(peers)
    with kube_lab(KUBE_LAB, "vxlan", network=str(NETWORK)) as kl:
        kl.drift_interval = None  # the daemon's defaults, as in etcd mode
        kl.create(node_object("n1", OWN_CIDR))
        took = create_peers(kl, subnets)
        print(f"kube/{peers}: {peers} Node objects created in {took:.1f}s", flush=True)
        kl.add_node(1)
        cond = threading.Condition()
        mons = lc.start_monitors(kl.names, [1], cond)
        writer: KubeWriter | None = None
        try:
            since = time.monotonic()
            ref = kl.start(1)
            done = wait_routes(mons[0], cond, {str(s) for s in subnets}, since, ref)
            if done is None:
                fig.lost += 1
                print(kl.dump())
                return fig
            fig.start_s = done - since
            print(f"kube/{peers}: daemon start -> {peers} routes in {fig.start_s:.2f}s", flush=True)
            writer = KubeWriter(kl)

            def patch(i: int, ip: IPv4Address) -> tuple[str, str]:
                return f"p{i:05d}", json.dumps({"metadata": {"annotations": {f"{PREFIX}/public-ip": str(ip)}}})

            measure_into(fig, writer, mons, cond, changes_plan(changes + 1, peers, patch), ref,
                         f"kube/{peers}", "patch")
        finally:
            if writer is not None:
                writer.close()
            lc.stop_monitors(mons)
    return fig


def measure_into(fig: Figures, writer: object, mons: list[lc.NodeMonitor],
                 cond: threading.Condition, plan: list[lc.Change], ref: ProcRef, label: str,
                 verb: str) -> None:
    """The changes of ``plan`` timed to the kernel, and the daemon's peak RSS, into ``fig``."""
    res = measure_changes(writer, mons, cond, plan, label)
    fig.p50_ms, fig.p99_ms = figures_of(res)
    fig.rtt_ms = lc.pct(res.put_rtt, 0.5)
    fig.lost += res.lost
    fig.rss_mb = peak_rss_mb(ref)
    print(f"{label}: change -> kernel p50 {fig.p50_ms:.1f} ms p99 {fig.p99_ms:.1f} ms "
          f"({verb} round trip p50 {fig.rtt_ms:.1f} ms), peak RSS {fig.rss_mb:.1f} MB", flush=True)


def bench_etcd(peers: int, changes: int) -> Figures:
    fig = Figures()
    with lc.lab(ETCD_LAB, "vxlan", 1, ()) as names:
        used = {IPv4Network(k.rsplit("/", 1)[-1].replace("-", "/")) for k in lc.labetcd.leases(names)}
        subnets = [s for s in peer_subnets(peers + len(used)) if s not in used][:peers]
        writer = lc.EtcdWriter(names)
        cond = threading.Condition()
        mons: list[lc.NodeMonitor] = []
        try:
            took = lc.load_background(writer, names, "vxlan", [1], subnets)
            print(f"etcd/{peers}: {peers} leases put and routed in {took:.1f}s", flush=True)
            lab = labmod.load(ETCD_LAB)
            labdaemon.kill(lab, 1, signal.SIGTERM)
            empty_datapath(names, 1)
            mons = lc.start_monitors(names, [1], cond)
            since = time.monotonic()
            ref = labdaemon.start(lab, 1)
            done = wait_routes(mons[0], cond, {str(s) for s in subnets}, since, ref)
            if done is None:
                fig.lost += 1
                print(labdaemon.log_tail(lab, 1, 40))
                return fig
            fig.start_s = done - since
            print(f"etcd/{peers}: daemon start -> {peers} routes in {fig.start_s:.2f}s", flush=True)

            def put(i: int, ip: IPv4Address) -> tuple[str, str]:
                s = subnets[i]
                return (lc.SUBNETS_PREFIX + f"{s.network_address}-{s.prefixlen}",
                        lc.lease_json("vxlan", ip, peer_mac(i)))

            measure_into(fig, writer, mons, cond, changes_plan(changes + 1, peers, put), ref,
                         f"etcd/{peers}", "put")
        finally:
            writer.close()
            lc.stop_monitors(mons)
    return fig


# ---------------------------------------------------------------- main


def ratio(a: float, b: float) -> str:
    return "-" if math.isnan(a) or math.isnan(b) or b == 0 else f"{a / b:.2f}x"


def print_table(results: dict[tuple[str, int], Figures], peers: list[int]) -> None:
    print("\nkube mode beside etcd mode, one vxlan daemon, N fake peers (Node objects / lease keys):")
    print("(start: spawn -> last route in the kernel; chg: request sent -> fdb entry rewritten; req: "
          "the request's own round trip, p50; RSS: peak, VmHWM)")
    print(f"{'peers':>6}  {'mode':5}{'start s':>9}{'chg p50 ms':>12}{'chg p99 ms':>12}{'req ms':>8}{'RSS MB':>8}")
    for n in peers:
        for mode in ("kube", "etcd"):
            f = results.get((mode, n))
            if f is not None:
                print(f"{n:>6}  {mode:5}{f.start_s:9.2f}{f.p50_ms:12.1f}{f.p99_ms:12.1f}{f.rtt_ms:8.1f}"
                      f"{f.rss_mb:8.1f}")
        k, e = results.get(("kube", n)), results.get(("etcd", n))
        if k is not None and e is not None:
            print(f"{n:>6}  {'k/e':5}{ratio(k.start_s, e.start_s):>9}{ratio(k.p50_ms, e.p50_ms):>12}"
                  f"{ratio(k.p99_ms, e.p99_ms):>12}{ratio(k.rtt_ms, e.rtt_ms):>8}{ratio(k.rss_mb, e.rss_mb):>8}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--peers", type=lambda t: [int(x) for x in t.split(",")], default=[1000, 5000])
    ap.add_argument("--changes", type=int, default=50)
    ap.add_argument("--modes", default="kube,etcd")
    ap.add_argument("--quick", action="store_true", help="smoke: 200 peers, 10 changes")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("kube_nodes bench needs root (it builds netns labs)")
    if args.quick:
        args.peers, args.changes = [200], 10
    signal.signal(signal.SIGTERM, lc._on_sigterm)
    modes = args.modes.split(",")
    results: dict[tuple[str, int], Figures] = {}
    for n in args.peers:
        for mode in modes:
            t0 = time.monotonic()
            results[(mode, n)] = bench_kube(n, args.changes) if mode == "kube" else bench_etcd(n, args.changes)
            print(f"{mode}/{n}: done in {time.monotonic() - t0:.0f}s\n", flush=True)
    print_table(results, args.peers)
    lost = sum(f.lost for f in results.values())
    if lost:
        print(f"FAIL: {lost} change(s) or start(s) never reached the kernel")
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (KeyboardInterrupt, lc.Interrupted):
        print("interrupted: labs torn down", file=sys.stderr)
        sys.exit(130)
