"""Lease events applied as events: only the named peers are planned (O(changes)), the kernel
ends as a full pass would leave it, and the next full pass finds nothing to repair.
vxlan and host-gw, in a namespace per test, 1000 other peers present."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

import flanneld.backends.hostgw as hostgw_module
import flanneld.backends.vxlan as vxlan_module
from flanneld.backends.hostgw import HostGWBackend
from flanneld.backends.vxlan import VXLANBackend
from flanneld.lease import Lease, LeaseAttrs, make_backend_data
from flanneld.netlink import Netlink

from .backend_helpers import SUBNETS, context, lease
from .conftest import TwoNodes, bridge_json, ip_json

pytestmark = pytest.mark.netlink
PEERS = 1000


def peer(i: int, backend: str, mac: str | None = None) -> Lease:
    subnet = IPv4Network((int(IPv4Network("10.244.0.0/16").network_address) + (i + 10) * 256, 24))
    data = make_backend_data({"VNI": 1, "VtepMAC": mac or f"0a:00:00:00:{i >> 8:02x}:{i & 255:02x}"})
    return lease(subnet, LeaseAttrs(IPv4Address("198.18.0.2"), backend,
                                    data if backend == "vxlan" else ""))


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    calls = [0]
    real: Callable[..., Any] = getattr(module, name)

    def wrapped(*args: Any) -> Any:
        calls[0] += 1
        return real(*args)

    monkeypatch.setattr(module, name, wrapped)
    return calls


@pytest.mark.parametrize("backend", ["vxlan", "host-gw"])
def test_events_plan_only_their_peers(two_nodes: TwoNodes, backend: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    t = two_nodes

    async def main() -> None:
        async with Netlink(t.n1) as nl:
            cls = VXLANBackend if backend == "vxlan" else HostGWBackend
            b = cls(await context(nl, t.link1, {"Type": backend}), nl)
            own = lease(SUBNETS[0], await b.prepare())
            net = await b.register_network(own)
            peers = {p.subnet: p for p in (peer(i, backend) for i in range(PEERS))}
            first = await net.repair(peers)
            per_peer = 3 if backend == "vxlan" else 1
            assert (first.applied, first.failed) == (PEERS * per_peer, 0)

            # one peer added, one changed, one removed: planned alone
            module = vxlan_module if backend == "vxlan" else hostgw_module
            calls = counting(monkeypatch, module, "peer_objects" if backend == "vxlan" else "Route")
            new = peer(PEERS + 1, backend)
            changed = peer(5, backend, mac="0a:11:00:00:00:05") if backend == "vxlan" else lease(
                peer(5, backend).subnet, LeaseAttrs(IPv4Address("198.18.0.3"), backend))
            gone = peer(7, backend).subnet
            peers[new.subnet], peers[changed.subnet] = new, changed
            del peers[gone]
            result = await net.apply({new.subnet: new, changed.subnet: changed, gone: None})
            assert result.failed == 0
            assert calls[0] <= 8, f"planned {calls[0]} objects for 3 changes among {PEERS} peers"

            routes = {r["dst"]: r for r in ip_json(t.n1, "route")}
            assert str(new.subnet) in routes and str(gone) not in routes
            if backend == "vxlan":
                fdb = {f["mac"]: f.get("dst") for f in bridge_json(t.n1, "fdb", "show", "dev", "flannel.1")}
                assert fdb.get("0a:11:00:00:00:05") == "198.18.0.2" and "0a:00:00:00:00:05" not in fdb
                assert "0a:00:00:00:00:07" not in fdb
            else:
                assert routes[str(changed.subnet)]["gateway"] == "198.18.0.3"

            # what the events left is what a full pass wants: nothing to repair
            monkeypatch.undo()
            again = await net.repair(peers)
            assert (again.applied, again.repaired, again.failed) == (0, 0, 0)

    asyncio.run(main())
