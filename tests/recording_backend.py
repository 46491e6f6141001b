"""A backend that records what the daemon asks of it (no kernel), for control-plane tests."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network

from flanneld.backends.base import Backend, Network, ReconcileResult
from flanneld.lease import Lease, LeaseAttrs

# ("prepare", None), ("register", subnet), ("retire", subnet), ("close", subnet),
# ("repair", sorted peer subnets), ("apply", sorted peer subnets after the changes)
CALLS: list[tuple[str, object]] = []


class RecordingBackend(Backend):
    type_name = "recording"
    needs_net_admin = False
    peer_types = frozenset({"recording"})

    def mtu(self) -> int:
        return self.ctx.ext.mtu - 50

    async def prepare(self) -> LeaseAttrs:
        CALLS.append(("prepare", None))
        return LeaseAttrs(self.ctx.ext.public_ip, "recording")

    async def register_network(self, lease: Lease) -> RecordingNetwork:
        CALLS.append(("register", lease.subnet))
        return RecordingNetwork(self, lease)


class RecordingNetwork(Network):
    """Keeps the peer set as a real network would (through ``wanted``)."""

    def __init__(self, backend: Backend, lease: Lease) -> None:
        super().__init__(backend, lease)
        self.peers: dict[IPv4Network, Lease] = {}

    @property
    def peer_count(self) -> int:
        return len(self.peers)

    def _names(self) -> list[str]:
        return sorted(str(s) for s in self.peers)

    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        for subnet, lease in changes.items():
            peer = self.wanted(lease)
            if peer is None:
                self.peers.pop(subnet, None)
            else:
                self.peers[subnet] = peer
        CALLS.append(("apply", self._names()))
        return ReconcileResult(applied=len(changes))

    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        self.peers = {s: p for s, lease in leases.items() if (p := self.wanted(lease)) is not None}
        CALLS.append(("repair", self._names()))
        return ReconcileResult(applied=len(self.peers))

    async def retire(self) -> None:
        CALLS.append(("retire", self.lease.subnet))

    async def close(self) -> None:
        CALLS.append(("close", self.lease.subnet))
