"""A real Prometheus scrapes every node of a netns lab; what it stores is what the fabric did.

Prometheus runs in the lab's underlay namespace (which reaches node i at 198.18.0.<i>) and
scrapes each flanneld's /metrics every second. After every pod pinged every other pod, the
forwarded byte counters it stored went up by at least the ping traffic, ``up`` is 1 for every
node, and (vxlan) each node's stored counter equals the kernel counter of that node's
flannel.1: the daemon reads its own namespace's device, not the root namespace's.
``promtool check metrics`` accepts a live node's /metrics.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
from ops_lab import (
    HEALTHZ_PORT,
    LabHandle,
    Prometheus,
    http_get,
    lab_running,
    ping_all,
    poll,
    prometheus_in,
    require_flanneld,
    sh,
)

pytestmark = pytest.mark.lab

LAB = "flabo1"
NODES = 3
FLANNELD_ARGS = ("--healthz-ip=0.0.0.0", f"--healthz-port={HEALTHZ_PORT}")
PING_BYTES = 84  # one ICMP echo (IPv4 20 + ICMP 8 + 56 data), the least a ping puts on the fabric


def node_target(node: int) -> str:
    return f"198.18.0.{node}:{HEALTHZ_PORT}"


def all_up(prom: Prometheus) -> bool:
    up = {s["metric"]["instance"]: s["value"][1] for s in prom.query('up{job="flannel"}')}
    return up == {node_target(i): "1" for i in range(1, NODES + 1)}


def forwarded(prom: Prometheus) -> float:
    return prom.scalar("sum(flannel_forwarded_bytes_total)") or 0.0


def sysfs_bytes(lab: LabHandle, node: int, device: str) -> int:
    """rx + tx bytes of ``device`` as the node's own namespace sees them."""
    stats = f"/sys/class/net/{device}/statistics"
    out = sh("ip", "netns", "exec", lab.node_ns(node), "cat", f"{stats}/rx_bytes", f"{stats}/tx_bytes")
    return sum(int(v) for v in out.stdout.split())


def stored_bytes(prom: Prometheus) -> dict[str, float]:
    rows = prom.query("sum by (instance) (flannel_forwarded_bytes_total)")
    return {r["metric"]["instance"]: float(r["value"][1]) for r in rows}


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_prometheus_scrapes_forwarded_bytes(backend: str, tmp_path: Path) -> None:
    require_flanneld()
    with (
        lab_running(LAB, nodes=NODES, backend=backend, pods_per_node=1, flanneld_args=FLANNELD_ARGS) as lab,
        prometheus_in(lab.names.underlay_ns, [node_target(i) for i in range(1, NODES + 1)],
                      tmp_path / "prometheus") as prom,
    ):  # fmt: skip
        poll(lambda: all_up(prom), 30, interval=0.25, what="up == 1 for every node")
        # a scrape that happened after every target was first seen: the baseline
        before = forwarded(prom)

        t0 = time.monotonic()
        results = ping_all(lab.state.pods())
        assert all(r.ok for r in results), [r for r in results if not r.ok]
        pairs = len(results)
        # every pair crosses nodes: the echo is tx on one node and rx on the other, the reply
        # too; each counts at least the IP packet (vxlan counts exactly that: 84 bytes)
        least = 4 * pairs * PING_BYTES

        poll(lambda: forwarded(prom) - before >= least, 30, interval=0.25,
             what=f"sum(flannel_forwarded_bytes_total) grows by >= {least} after ping-all")  # fmt: skip
        seen = time.monotonic() - t0
        after = forwarded(prom)
        print(f"{backend}: forwarded bytes {before:.0f} -> {after:.0f} (+{after - before:.0f}, "
              f">= {least} expected), seen by Prometheus {seen:.1f}s after ping-all started")  # fmt: skip
        assert all_up(prom)

        if backend == "vxlan":
            # Each node's stored value settles on the kernel counter of that node's own
            # flannel.1 (read in its namespace): the daemon reads the right device.
            def matches() -> bool:
                want = {node_target(i): float(sysfs_bytes(lab, i, "flannel.1")) for i in range(1, NODES + 1)}
                return stored_bytes(prom) == want and all(v > 0 for v in want.values())

            poll(matches, 20, interval=0.25, what="per-node stored bytes == own flannel.1 counters")
            print(f"vxlan: settled per node {stored_bytes(prom)}")

        # the live exposition of a node passes promtool's lint
        if shutil.which("promtool"):
            status, text = http_get(lab.names.underlay_ns, f"http://{node_target(1)}/metrics")
            assert status == 200 and "flannel_ready 1.0" in text, text
            check = subprocess.run(
                ["promtool", "check", "metrics"], input=text.encode(), capture_output=True, timeout=30
            )
            assert check.returncode == 0, (check.stdout + check.stderr).decode()
