"""A backend that records what the daemon asks of it (no kernel), for control-plane tests."""

from __future__ import annotations

from collections.abc import Mapping
from ipaddress import IPv4Network

from flanneld.backends.base import Backend, ReconcileResult
from flanneld.lease import Lease, LeaseAttrs

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

    async def activate(self, lease: Lease) -> None:
        CALLS.append(("activate", lease.subnet))

    async def reconcile(self, peers: Mapping[IPv4Network, Lease], full: bool) -> ReconcileResult:
        CALLS.append(("reconcile", (full, sorted(str(s) for s in peers))))
        return ReconcileResult(applied=len(peers))
