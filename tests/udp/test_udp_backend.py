"""The udp Backend driven as the daemon drives it, in the fudp netns nodes (root)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import udp_topology as topo

from flanneld.backends.base import BackendContext, ExternalInterface
from flanneld.backends.udp.backend import UDPBackend
from flanneld.errors import NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netconfig import network_config_from_dict

pytestmark = [
    pytest.mark.netlink,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, TUN)"),
]


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[Path]:
    topo.setup(pod_mtu=1472)
    try:
        yield tmp_path
    finally:
        topo.teardown()


def context(port: int = 8285) -> BackendContext:
    netconf = network_config_from_dict(
        {"Network": topo.NETWORK, "Backend": {"Type": "udp", "Port": port}})
    idx = int(topo.sh("cat", "/sys/class/net/fudp-u1/ifindex", ns=topo.NODES[0]).stdout)
    ext = ExternalInterface("fudp-u1", idx, IPv4Address(topo.UNDERLAY[0]),
                            IPv4Address(topo.UNDERLAY[0]), 1500)
    return BackendContext(ext=ext, netconf=netconf)


@pytest.mark.unit
def test_bad_port_option_rejected() -> None:
    with pytest.raises(NetworkConfigError, match=r"Backend\.Port"):
        UDPBackend.validate_options({"Port": 70000})
    with pytest.raises(NetworkConfigError, match=r"Backend\.Offload"):
        UDPBackend.validate_options({"offload": "yes"})
    UDPBackend.validate_options({"port": 8285, "Offload": False})


@pytest.mark.parametrize("offload", [False, True], ids=["plain", "offload"])
def test_backend_forwards_to_a_standalone_peer(nodes: Path, offload: bool) -> None:
    peer = topo.start_ours(1, nodes, offload=offload)

    async def scenario() -> None:
        ctx = context()
        ctx.netconf.backend.options["Offload"] = offload
        be = UDPBackend(ctx, netns=topo.NODES[0])
        try:
            assert be.mtu() == 1472
            attrs = await be.prepare()
            assert attrs.to_json() == '{"PublicIP":"198.18.0.1","PublicIPv6":null}'
            own = Lease(IPv4Network(topo.SUBNETS[0]), attrs)
            net = await be.register_network(own)
            other = Lease(IPv4Network(topo.SUBNETS[1]),
                          LeaseAttrs(public_ip=IPv4Address(topo.UNDERLAY[1])))
            vx = Lease(IPv4Network("10.244.9.0/24"),
                       LeaseAttrs(public_ip=IPv4Address("198.18.0.9"), backend_type="vxlan"))
            res = await net.repair({own.subnet: own, other.subnet: other, vx.subnet: vx})
            assert res.applied == 1 and res.failed == 0
            assert be.stats()["routes"] == {topo.SUBNETS[1]: topo.UNDERLAY[1]}
            addr = topo.sh("ip", "-4", "addr", "show", "flannel0", ns=topo.NODES[0]).stdout
            assert "10.244.1.0/32" in addr
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", topo.PODS[0], "ping", "-n", "-c", "3", "-i", "0.05",
                "-W", "2", topo.POD_IPS[1], stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
            assert proc.returncode == 0, out.decode()
            assert be.stats()["peers"][topo.UNDERLAY[1]]["rx_packets"] >= 3
            res = await net.apply({other.subnet: None})
            assert res.applied == 1 and be.stats()["routes"] == {} and net.peer_count == 0
        finally:
            await be.close()

    try:
        asyncio.run(scenario())
    finally:
        peer.stop()


def test_moving_to_another_subnet_keeps_one_thread_and_one_address(nodes: Path) -> None:
    """The daemon re-acquired a different subnet: it retires the old network (its datapath
    thread stops, its /32 leaves flannel0) and registers a new one that forwards for the new
    subnet (activating twice once ran two threads and kept both addresses).  Registering a
    second network while one runs is refused."""
    import threading

    async def scenario() -> None:
        be = UDPBackend(context(), netns=topo.NODES[0])
        try:
            attrs = await be.prepare()
            old = await be.register_network(Lease(IPv4Network(topo.SUBNETS[0]), attrs))
            first = be.datapath
            with pytest.raises(RuntimeError, match="another udp network"):
                await be.register_network(Lease(IPv4Network("10.244.77.0/24"), attrs))
            await old.retire()
            new = await be.register_network(Lease(IPv4Network("10.244.77.0/24"), attrs))
            threads = [t for t in threading.enumerate() if t.name == "udp-datapath"]
            assert len(threads) == 1, threads
            assert be.datapath is not first and first is not None and first._thread is None
            addr = topo.sh("ip", "-4", "-o", "addr", "show", "flannel0", ns=topo.NODES[0]).stdout
            assert "10.244.77.0/32" in addr and "10.244.1.0/32" not in addr, addr
            assert be.datapath is not None and be.datapath.local.contains(
                int(IPv4Address("10.244.77.5")))
            await old.close()  # a retired network's close leaves the new one running
            assert be.datapath is new.datapath and new.datapath._thread is not None
        finally:
            await be.close()
        assert not [t for t in threading.enumerate() if t.name == "udp-datapath"]

    asyncio.run(scenario())
