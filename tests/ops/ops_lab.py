"""Helpers of the lab-level ops tests: the netns lab (via tests/lab/labkit), HTTP inside a
namespace, a Prometheus server in a lab namespace, and an "outside" network behind one node.

Everything runs inside namespaces the lab or these helpers create; every helper that creates
something is a context manager that removes it however the block ends.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))

from etcd_server import free_port
from labkit import LabHandle, dump_logs, lab_running, poll, require_flanneld
from netnslab import daemon as lab_daemon
from netnslab.pingmatrix import ping_all

__all__ = [
    "HEALTHZ_PORT",
    "LabHandle",
    "Outside",
    "Prometheus",
    "dump_logs",
    "http_get",
    "lab_daemon",
    "lab_running",
    "outside_network",
    "ping_all",
    "poll",
    "prometheus_in",
    "require_flanneld",
    "sh",
]

HEALTHZ_PORT = 8471  # inside the node namespaces only
PROMETHEUS = "/usr/bin/prometheus"


def sh(*argv: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check, timeout=60, input=input_text)


def http_get(ns: str, url: str, timeout: float = 5.0) -> tuple[int, str]:
    """GET ``url`` from inside namespace ``ns``: (status, body); status 0 = no HTTP answer."""
    res = sh(
        "ip", "netns", "exec", ns, "curl", "-s", "-m", f"{timeout:g}", "-w", "\n%{http_code}", url,
        check=False,
    )  # fmt: skip
    body, _, code = res.stdout.rpartition("\n")
    try:
        return int(code), body
    except ValueError:
        return 0, body


# ---------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    """A Prometheus server inside namespace ``ns`` listening on 127.0.0.1:``port``."""

    ns: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params)}"
        status, body = http_get(self.ns, url)
        assert status == 200, f"{url}: {status} {body[:300]}"
        reply = json.loads(body)
        assert reply.get("status") == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant query; the vector's samples (``metric`` labels, ``value`` [t, "v"])."""
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float | None:
        """The value of a one-sample query, None while it has no sample."""
        result = self.query(expr)
        return float(result[0]["value"][1]) if result else None

    def targets(self) -> list[dict[str, Any]]:
        active: list[dict[str, Any]] = self.api("/api/v1/targets")["activeTargets"]
        return active

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])


def scrape_config(targets: list[str], interval: str = "1s") -> str:
    return json.dumps(  # YAML is a superset of JSON
        {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [
                {
                    "job_name": "flannel",
                    "metrics_path": "/metrics",
                    "static_configs": [{"targets": targets}],
                }
            ],
        },
        indent=2,
    )


@contextlib.contextmanager
def prometheus_in(ns: str, targets: list[str], workdir: Path, timeout: float = 45.0) -> Iterator[Prometheus]:
    """Prometheus in ``ns`` scraping ``targets`` every second (storage under ``workdir``);
    killed at the end."""
    if not Path(PROMETHEUS).exists():
        pytest.skip(f"{PROMETHEUS} not installed (Debian package prometheus)")
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(scrape_config(targets))
    log = workdir / "prometheus.log"
    port = free_port()
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, PROMETHEUS,
             f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out,
        )  # fmt: skip
    prom = Prometheus(ns, port, proc, log)
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited ({proc.returncode}):\n{prom.log_tail()}")
            return http_get(ns, f"{prom.base}/-/ready", timeout=2)[0] == 200

        poll(ready, timeout, interval=0.2, what="prometheus /-/ready")
        yield prom
    finally:
        # `ip netns exec` execs prometheus: the child is prometheus itself
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


# ---------------------------------------------------------------- outside network


@dataclass(frozen=True)
class Outside:
    """``ns`` (198.19.0.2) wired by a veth to the node namespace ``node_ns`` (198.19.0.1).

    It has no route to the pod network: a pod can talk to it only when masqueraded.
    """

    ns: str
    node_ns: str
    address: str = "198.19.0.2"
    node_address: str = "198.19.0.1"


@contextlib.contextmanager
def outside_network(lab: LabHandle, node: int) -> Iterator[Outside]:
    """Namespace ``<lab>-out`` behind node ``node``; deleted (with its veth) at the end."""
    ns = f"{lab.name}-out"
    out = Outside(ns, lab.node_ns(node))
    near, far = f"{lab.name}-o0", f"{lab.name}-o1"
    sh("ip", "netns", "del", ns, check=False)  # a leftover of an interrupted run
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        sh("ip", "-n", out.node_ns, "link", "add", near, "type", "veth", "peer", "name", far,
           "netns", ns)  # fmt: skip
        for dev_ns, dev, addr in ((out.node_ns, near, out.node_address), (ns, far, out.address)):
            sh("ip", "-n", dev_ns, "addr", "add", f"{addr}/24", "dev", dev)
            sh("ip", "-n", dev_ns, "link", "set", dev, "up")
        yield out
    finally:
        sh("ip", "-n", out.node_ns, "link", "del", near, check=False)
        sh("ip", "netns", "del", ns, check=False)
