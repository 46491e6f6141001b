"""The lab's state directory: what ``lab up`` built, so later commands can find it.

Layout of ``netns-lab/.state/<name>/``::

    lab.json            backend, network, attach mode, dual stack (+ IPv6 network), nodes and
                        their pods (with addresses)
    etcd/  etcd.log  etcd.pid
    n<i>/  subnet.env  flanneld.log  flanneld.pid  cni/  ipam/  netconf.json

Everything per node lives in the node's directory because all nodes share one filesystem.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from netnslab.names import LabNames

STATE_ROOT = Path(os.environ.get("FLAB_STATE_ROOT", Path(__file__).resolve().parent.parent / ".state"))
REPO = Path(__file__).resolve().parent.parent.parent
VENV_BIN = REPO / ".venv" / "bin"


@dataclass
class PodState:
    name: str  # namespace name
    node: int
    index: int
    address: str = ""  # CIDR, e.g. 10.244.12.2/24
    address6: str = ""  # dual-stack labs: IPv6 CIDR, e.g. fd10:244:0:c::2/64 ("" if none)


@dataclass
class NodeState:
    index: int
    pods: list[PodState] = field(default_factory=list)
    bare: bool = False  # built by hand (no flanneld), e.g. the interop node


@dataclass
class LabState:
    name: str
    backend: str = "vxlan"
    network: str = "10.244.0.0/16"
    attach: str = "cni"
    pods_per_node: int = 2
    flanneld_args: list[str] = field(default_factory=list)
    nodes: dict[int, NodeState] = field(default_factory=dict)
    # ``up --dual-stack``: the underlay carries IPv6 too (node i: 2001:db8:18::<i>).
    dual_stack: bool = False
    # The overlay IPv6 network in the etcd config ("" when the config has none, e.g. a
    # dual-stack underlay with an IPv4-only config): pods get IPv6, ping-all checks it.
    ipv6_network: str = ""

    @property
    def names(self) -> LabNames:
        return LabNames(self.name)

    @property
    def dir(self) -> Path:
        return state_dir(self.name)

    def node_dir(self, node: int) -> Path:
        return self.dir / f"n{node}"

    def subnet_file(self, node: int) -> Path:
        return self.node_dir(node) / "subnet.env"

    def pods(self) -> list[PodState]:
        return [p for i in sorted(self.nodes) for p in self.nodes[i].pods]

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "lab.json.tmp"
        tmp.write_text(json.dumps(asdict(self), indent=2) + "\n")
        tmp.replace(self.dir / "lab.json")

    @staticmethod
    def load(name: str) -> LabState | None:
        try:
            raw = json.loads((state_dir(name) / "lab.json").read_text())
        except (OSError, ValueError):
            return None
        nodes = {
            int(k): NodeState(
                index=int(v["index"]),
                pods=[PodState(**p) for p in v.get("pods", [])],
                bare=bool(v.get("bare", False)),
            )
            for k, v in raw.pop("nodes", {}).items()
        }
        return LabState(**raw, nodes=nodes)


def state_dir(name: str) -> Path:
    return STATE_ROOT / name


def read_subnet_env(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of a subnet.env ({} if missing)."""
    try:
        text = path.read_text()
    except OSError:
        return {}
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out
