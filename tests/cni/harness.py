"""Test harness for the CNI plugin: run `flannel` as a runtime would, in a node netns.

The plugin runs as a runtime runs it (env + stdin, subprocess), inside a node namespace this
fixture creates (`ip netns exec fcni-n...`), so the bridge, its veths, host-local routes and the
masquerade rules never touch the root namespace; pods are namespaces of their own. Every
namespace is deleted at teardown, also when the test fails. All state (subnet.env, the plugin's
dataDir, host-local's dataDir) lives in the test's tmp_path.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).with_name("golden")
DEBIAN_CNI = "/usr/lib/cni"
SUBNET_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\n"
    "FLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_MTU=1450\n"
    "FLANNEL_IPMASQ=true\n"
)
_names = itertools.count()


def _unique(kind: str) -> str:
    return f"fcni-{kind}{os.getpid() % 100000}-{next(_names)}"


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces)")
    if not os.path.exists(f"{DEBIAN_CNI}/bridge"):
        pytest.skip("Debian containernetworking-plugins not installed")


class Result:
    def __init__(self, proc: subprocess.CompletedProcess[bytes]) -> None:
        self.rc = proc.returncode
        self.stdout = proc.stdout
        self.stderr = proc.stderr.decode(errors="replace")

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)

    def __repr__(self) -> str:
        return f"Result(rc={self.rc}, stdout={self.stdout!r}, stderr={self.stderr[-500:]!r})"


class Node:
    """One flannel node: a netns, its subnet.env, the plugin's and host-local's data dirs."""

    def __init__(self, netns: str, root: Path, flannel: str) -> None:
        self.netns = netns
        self.root = root
        self.flannel = flannel
        self.subnet_file = root / "subnet.env"
        self.data_dir = root / "flannel"
        self.ipam_dir = root / "ipam"
        self.subnet_file.write_text(SUBNET_ENV)
        self.pods: list[str] = []

    def netconf(self, version: str = "0.3.1", **extra: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": version,
            "name": "cbr0",
            "type": "flannel",
            "subnetFile": str(self.subnet_file),
            "dataDir": str(self.data_dir),
            "delegate": {"bridge": "fcnibr0", "hairpinMode": True, "isDefaultGateway": True},
            "ipam": {"dataDir": str(self.ipam_dir)},
        }
        conf.update(extra)
        return conf

    def pod(self) -> str:
        name = _unique("p")
        _ip("netns", "add", name)
        self.pods.append(name)
        return name

    def env(
        self, command: str, cid: str | None = None, pod: str | None = None,
        ifname: str | None = "eth0", path: str | None = DEBIAN_CNI, **extra: str,
    ) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CNI_")}
        env["CNI_COMMAND"] = command
        for key, value in (
            ("CNI_CONTAINERID", cid), ("CNI_NETNS", f"/run/netns/{pod}" if pod else None),
            ("CNI_IFNAME", ifname), ("CNI_PATH", path),
        ):
            if value is not None:
                env[key] = value
        env.update(extra)
        return env

    def run(self, env: dict[str, str], stdin: bytes | str | dict[str, Any]) -> Result:
        data = json.dumps(stdin).encode() if isinstance(stdin, dict) else (
            stdin.encode() if isinstance(stdin, str) else stdin)
        proc = subprocess.run(
            ["ip", "netns", "exec", self.netns, self.flannel],
            input=data, env=env, capture_output=True, timeout=60,
        )
        return Result(proc)

    def call(
        self, command: str, conf: dict[str, Any], cid: str | None = None,
        pod: str | None = None, **kw: Any,
    ) -> Result:
        return self.run(self.env(command, cid, pod, **kw), conf)

    def in_pod(self, pod: str, *args: str) -> Any:
        out = subprocess.run(["ip", "-n", pod, "-j", *args], check=True, capture_output=True)
        return json.loads(out.stdout or b"[]")

    def host_local_ips(self, network: str = "cbr0") -> set[str]:
        """host-local's reservations: one file per address (IPv4 or IPv6) in its data dir."""
        directory = self.ipam_dir / network
        if not directory.exists():
            return set()
        out: set[str] = set()
        for p in directory.iterdir():
            try:
                ipaddress.ip_address(p.name)
            except ValueError:
                continue  # lock, last_reserved_ip.<range set>
            out.add(p.name)
        return out
