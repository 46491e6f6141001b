"""Golden op lists for the pure planners (no root, no kernel)."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network as N

import pytest

from flanneld.backends.base import BackendContext, ExternalInterface
from flanneld.backends.hostgw import plan_routes
from flanneld.backends.planner import AppliedState, count_repaired, plan_address, plan_changed
from flanneld.backends.vxlan import (
    VXLANBackend,
    VxlanNetwork,
    VxlanPeer,
    choose_mac,
    parse_options,
    peer_objects,
    peer_specs,
    plan_device,
    plan_peers,
    random_vtep_mac,
    vxlan_peer,
)
from flanneld.errors import NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs, make_backend_data
from flanneld.netconfig import network_config_from_dict
from flanneld.netlink import Netlink
from flanneld.netops import (
    Address,
    CreateVxlan,
    Delete,
    DeleteLink,
    FdbEntry,
    KernelObject,
    LinkInfo,
    Neighbour,
    Op,
    OpResult,
    Outcome,
    Replace,
    Route,
    SetLink,
    VxlanLink,
)

pytestmark = pytest.mark.unit

DEV, EXT = 7, 2
NET = N("10.244.0.0/16")
MAC_B = "0a:00:00:00:00:0b"
MAC_C = "0a:00:00:00:00:0c"


def vx_lease(subnet: str, public_ip: str, mac: str, btype: str = "vxlan") -> Lease:
    data = make_backend_data({"VNI": 1, "VtepMAC": mac}) if btype == "vxlan" else ""
    return Lease(N(subnet), LeaseAttrs(A(public_ip), btype, data))


OWN = vx_lease("10.244.1.0/24", "198.18.0.1", "0a:00:00:00:00:0a")
B = vx_lease("10.244.2.0/24", "198.18.0.2", MAC_B)
C = vx_lease("10.244.3.0/24", "198.18.0.3", MAC_C)


def peers(*leases: Lease) -> list[VxlanPeer]:
    return [p for lease in leases if (p := vxlan_peer(lease)) is not None]


def plan(observed: list[KernelObject], *leases: Lease, direct: bool = False,
         on_link: frozenset[A] = frozenset()) -> list[Op]:
    return plan_peers(OWN, peers(*leases), observed, device_index=DEV, ext_index=EXT,
                      network=NET, direct_routing=direct, on_link=on_link)


def b_objects(mac: str = MAC_B) -> list[KernelObject]:
    return [
        FdbEntry(DEV, mac, A("198.18.0.2")),
        Neighbour(DEV, A("10.244.2.0"), mac),
        Route(N("10.244.2.0/24"), DEV, A("10.244.2.0"), onlink=True),
    ]


def test_add_two_peers_golden() -> None:
    assert plan([], C, B) == [
        Replace(FdbEntry(DEV, MAC_B, A("198.18.0.2"))),
        Replace(FdbEntry(DEV, MAC_C, A("198.18.0.3"))),
        Replace(Neighbour(DEV, A("10.244.2.0"), MAC_B)),
        Replace(Neighbour(DEV, A("10.244.3.0"), MAC_C)),
        Replace(Route(N("10.244.2.0/24"), DEV, A("10.244.2.0"), onlink=True)),
        Replace(Route(N("10.244.3.0/24"), DEV, A("10.244.3.0"), onlink=True)),
    ]


def test_nothing_to_do_when_kernel_matches() -> None:
    assert plan(b_objects(), B) == []


def test_remove_peer_golden() -> None:
    assert plan(b_objects()) == [
        Delete(Route(N("10.244.2.0/24"), DEV, A("10.244.2.0"), onlink=True)),
        Delete(Neighbour(DEV, A("10.244.2.0"), MAC_B)),
        Delete(FdbEntry(DEV, MAC_B, A("198.18.0.2"))),
    ]


def test_changed_mac_golden() -> None:
    new = vx_lease("10.244.2.0/24", "198.18.0.2", MAC_C)
    assert plan(b_objects(), new) == [
        Replace(FdbEntry(DEV, MAC_C, A("198.18.0.2"))),
        Replace(Neighbour(DEV, A("10.244.2.0"), MAC_C)),
        Delete(FdbEntry(DEV, MAC_B, A("198.18.0.2"))),
    ]


def test_direct_routing_golden() -> None:
    on_link = frozenset({A("198.18.0.2")})
    assert plan([], B, C, direct=True, on_link=on_link) == [
        Replace(FdbEntry(DEV, MAC_C, A("198.18.0.3"))),
        Replace(Neighbour(DEV, A("10.244.3.0"), MAC_C)),
        Replace(Route(N("10.244.2.0/24"), EXT, A("198.18.0.2"))),
        Replace(Route(N("10.244.3.0/24"), DEV, A("10.244.3.0"), onlink=True)),
    ]
    # a peer that became directly reachable: the vxlan route is replaced, its entries go
    assert plan(b_objects(), B, direct=True, on_link=on_link) == [
        Replace(Route(N("10.244.2.0/24"), EXT, A("198.18.0.2"))),
        Delete(Neighbour(DEV, A("10.244.2.0"), MAC_B)),
        Delete(FdbEntry(DEV, MAC_B, A("198.18.0.2"))),
    ]


def test_stale_cleanup_touches_only_our_entries() -> None:
    foreign: list[KernelObject] = [
        Route(N("0.0.0.0/0"), EXT, A("198.18.0.254")),  # default route
        Route(N("198.18.0.0/24"), EXT),  # underlay
        Route(N("10.244.1.0/24"), 9),  # own subnet on cni0
        Route(N("10.244.8.0/25"), EXT, A("198.18.0.8")),  # not lease-sized, no refused lease
        Neighbour(DEV, A("10.244.9.0"), "", permanent=False),  # kernel-managed
        Neighbour(5, A("10.244.9.0"), MAC_B),  # another device
        FdbEntry(5, MAC_B, A("198.18.0.2")),
    ]
    stale: list[KernelObject] = [
        # our own subnet via a gateway: what a peer's lease left when its subnet became ours
        Route(N("10.244.1.0/24"), EXT, A("198.18.0.9")),
        Route(N("10.244.4.0/24"), DEV, A("10.244.4.0"), onlink=True),
        Route(N("10.244.5.0/24"), EXT, A("198.18.0.5")),  # old host-gw / DirectRouting route
        # on our device, outside the Network (a hostile lease an older daemon accepted)
        Route(N("198.18.0.0/25"), DEV, A("198.18.0.0"), onlink=True),
        Neighbour(DEV, A("10.244.4.0"), MAC_C),
        FdbEntry(DEV, MAC_C, A("198.18.0.4")),
    ]
    assert plan(foreign + stale + b_objects(), B) == [
        Delete(Route(N("10.244.1.0/24"), EXT, A("198.18.0.9"))),
        Delete(Route(N("10.244.4.0/24"), DEV, A("10.244.4.0"), onlink=True)),
        Delete(Route(N("10.244.5.0/24"), EXT, A("198.18.0.5"))),
        Delete(Route(N("198.18.0.0/25"), DEV, A("198.18.0.0"), onlink=True)),
        Delete(Neighbour(DEV, A("10.244.4.0"), MAC_C)),
        Delete(FdbEntry(DEV, MAC_C, A("198.18.0.4"))),
    ]


def test_wrong_values_under_our_keys_are_replaced() -> None:
    observed: list[KernelObject] = [
        FdbEntry(DEV, MAC_B, A("198.18.0.2")),
        Neighbour(DEV, A("10.244.2.0"), "", permanent=False),  # an ARP attempt, not ours
        Route(N("10.244.2.0/24"), 9, A("10.244.2.9")),  # someone else's route in our slot
    ]
    assert plan(observed, B) == [
        Replace(Neighbour(DEV, A("10.244.2.0"), MAC_B)),
        Replace(Route(N("10.244.2.0/24"), DEV, A("10.244.2.0"), onlink=True)),
    ]


def test_peer_selection() -> None:
    udp = vx_lease("10.244.4.0/24", "198.18.0.4", "", btype="")
    hgw = vx_lease("10.244.5.0/24", "198.18.0.5", "", btype="host-gw")
    broken = Lease(N("10.244.6.0/24"), LeaseAttrs(A("198.18.0.6"), "vxlan", '{"VNI":1}'))
    same_ip = vx_lease("10.244.7.0/24", "198.18.0.1", MAC_C)  # our PublicIP: not a peer
    table = {lease.subnet: lease for lease in (OWN, B, C, udp, hgw, broken, same_ip)}
    ctx = BackendContext(ExternalInterface("eth0", EXT, A("198.18.0.1"), A("198.18.0.1"), 1500),
                         network_config_from_dict({"Network": str(NET), "Backend": {"Type": "vxlan"}}))
    net = VxlanNetwork(VXLANBackend(ctx, Netlink()), OWN)
    chosen = [lease for lease in table.values() if net.wanted(lease) is not None]
    assert [lease.subnet for lease in chosen] == [B.subnet, C.subnet, broken.subnet]
    specs = [net.peer_spec(lease, None) for lease in chosen]
    assert [s.peer.subnet if s else None for s in specs] == [B.subnet, C.subnet, None]
    assert [p.subnet for p in peers(*chosen)] == [B.subnet, C.subnet]


def test_hostgw_golden() -> None:
    own = Lease(N("10.244.1.0/24"), LeaseAttrs(A("198.18.0.1"), "host-gw"))
    b = Lease(N("10.244.2.0/24"), LeaseAttrs(A("198.18.0.2"), "host-gw"))
    observed: list[KernelObject] = [
        Route(N("10.244.3.0/24"), EXT, A("198.18.0.3")),  # stale
        Route(N("198.18.0.0/24"), EXT),
        Route(N("10.244.1.0/24"), 9),
    ]
    assert plan_routes(own, [b], observed, ext_index=EXT, network=NET) == [
        Replace(Route(N("10.244.2.0/24"), EXT, A("198.18.0.2"))),
        Delete(Route(N("10.244.3.0/24"), EXT, A("198.18.0.3"))),
    ]


def want_link(mac: str = "0a:00:00:00:00:0a") -> VxlanLink:
    return VxlanLink("flannel.1", 1, A("198.18.0.1"), EXT, 8472, mac, 1450)


def test_device_plan() -> None:
    want = want_link()
    assert plan_device(want, None) == [CreateVxlan(want), SetLink("flannel.1")]
    same = LinkInfo("flannel.1", DEV, want.mac, 1450, True, "vxlan", want)
    assert plan_device(want, same) == []
    down_small = LinkInfo("flannel.1", DEV, want.mac, 1400, False, "vxlan", want)
    assert plan_device(want, down_small) == [SetLink("flannel.1", mtu=1450)]
    other_vni = VxlanLink("flannel.1", 2, A("198.18.0.1"), EXT, 8472, want.mac, 1450)
    incompatible = LinkInfo("flannel.1", DEV, want.mac, 1450, True, "vxlan", other_vni)
    assert plan_device(want, incompatible) == [
        DeleteLink("flannel.1"), CreateVxlan(want), SetLink("flannel.1")]
    l3miss = LinkInfo("flannel.1", DEV, want.mac, 1450, True, "vxlan", want, l3miss=True)
    assert plan_device(want, l3miss)[0] == DeleteLink("flannel.1")


def test_mac_survives() -> None:
    existing = LinkInfo("flannel.1", DEV, "0a:00:00:00:00:99", 1450, True, "vxlan", want_link())
    assert choose_mac(None, existing) == "0a:00:00:00:00:99"
    assert choose_mac("0a:00:00:00:00:0a", None) == "0a:00:00:00:00:0a"
    assert choose_mac("0a:00:00:00:00:0a", existing) == "0a:00:00:00:00:0a"
    for _ in range(50):
        first = int(random_vtep_mac()[:2], 16)
        assert first & 0x02 and not first & 0x01  # locally administered unicast


def test_address_plan() -> None:
    observed = [Address(DEV, A("10.244.7.0"), 32), Address(EXT, A("198.18.0.1"), 24)]
    assert plan_address(OWN, DEV, observed) == [
        Replace(Address(DEV, A("10.244.1.0"), 32)),
        Delete(Address(DEV, A("10.244.7.0"), 32)),
    ]


def test_options() -> None:
    opts = parse_options({"vni": 4, "PORT": 4789, "GBP": True, "DirectRouting": True})
    assert (opts.vni, opts.port, opts.gbp, opts.direct_routing, opts.learning) == (
        4, 4789, True, True, False)
    assert opts.device_name == "flannel.4"
    assert parse_options({}).port == 8472 and parse_options({"Port": 0}).port == 8472
    with pytest.raises(NetworkConfigError, match=r"Backend\.VNI"):
        parse_options({"VNI": 1 << 24})
    with pytest.raises(NetworkConfigError, match=r"Backend\.Learning"):
        parse_options({"Learning": "yes"})


def test_applied_state_and_repair_count() -> None:
    state = AppliedState()
    ops = plan([], B)
    state.record([Outcome(ops[0], OpResult.OK), Outcome(ops[1], OpResult.FAILED, 19),
                  Outcome(ops[2], OpResult.OK)])
    # the failed neighbour is retried by the next incremental plan
    assert plan(list(state.objects.values()), B) == [ops[1]]
    # drift: the route went missing in the kernel, the fdb entry is still there
    applied = {o.key: o for o in b_objects()}
    full = plan([b_objects()[0], b_objects()[1]], B)
    assert count_repaired(full, applied) == 1
    # a stale entry we never applied counts; a removal we had not applied yet does not
    stale = plan(b_objects())
    assert count_repaired(stale, {}) == 3 and count_repaired(stale, applied) == 0


def test_incremental_plans_only_changed_peers() -> None:
    old = peer_specs(peers(B, C), DEV, EXT, False, frozenset())
    applied = {o.key: o for spec in old.values() for o in peer_objects(spec)}
    moved = vx_lease("10.244.2.0/24", "198.18.0.2", "0a:00:00:00:00:0d")
    d = vx_lease("10.244.4.0/24", "198.18.0.4", "0a:00:00:00:00:0e")
    new = peer_specs(peers(moved, d), DEV, EXT, False, frozenset())
    assert plan_changed(old, new, peer_objects, applied) == [
        Replace(FdbEntry(DEV, "0a:00:00:00:00:0d", A("198.18.0.2"))),
        Replace(FdbEntry(DEV, "0a:00:00:00:00:0e", A("198.18.0.4"))),
        Replace(Neighbour(DEV, A("10.244.2.0"), "0a:00:00:00:00:0d")),
        Replace(Neighbour(DEV, A("10.244.4.0"), "0a:00:00:00:00:0e")),
        Replace(Route(N("10.244.4.0/24"), DEV, A("10.244.4.0"), onlink=True)),
        Delete(Route(N("10.244.3.0/24"), DEV, A("10.244.3.0"), onlink=True)),
        Delete(Neighbour(DEV, A("10.244.3.0"), MAC_C)),
        Delete(FdbEntry(DEV, MAC_B, A("198.18.0.2"))),
        Delete(FdbEntry(DEV, MAC_C, A("198.18.0.3"))),
    ]
    assert plan_changed(new, new, peer_objects, applied) == []


def test_ipv6_half_golden() -> None:
    """The IPv6 half of a dual-stack lease on flannel-v6.1 (DEV6): what Go's handleSubnetEvents
    adds for it (neigh S6:: lladdr M6, fdb M6 dst PublicIPv6, route S6 via S6:: onlink), and
    what a full pass deletes (stale entries on the device; a /64 of the IPv6Network via a
    gateway on the external interface) or keeps (another length, the kernel's own routes)."""
    from ipaddress import IPv6Address as A6
    from ipaddress import IPv6Network as N6

    from flanneld.backends.family import V6

    dev6, mac6 = 8, "0a:00:00:00:06:0b"
    own = Lease(N("10.244.1.0/24"), OWN.attrs, ipv6_subnet=N6("fd10:244:0:1::/64"))
    peer = Lease(N("10.244.2.0/24"), LeaseAttrs(
        A("198.18.0.2"), "vxlan", make_backend_data({"VNI": 1, "VtepMAC": MAC_B}),
        public_ipv6=A6("2001:db8:18::2"),
        backend_v6_data=make_backend_data({"VNI": 1, "VtepMAC": mac6})),
        ipv6_subnet=N6("fd10:244:0:2::/64"))
    v6 = vxlan_peer(peer, V6)
    assert v6 is not None and (v6.subnet, v6.public_ip, v6.vtep_mac) == (
        N6("fd10:244:0:2::/64"), A6("2001:db8:18::2"), mac6)
    assert vxlan_peer(Lease(peer.subnet, OWN.attrs), V6) is None  # an IPv4-only lease
    observed: list[KernelObject] = [
        Route(N6("fd10:244:0:9::/64"), dev6, A6("fd10:244:0:9::"), onlink=True),  # stale
        Neighbour(dev6, A6("fd10:244:0:9::"), "0a:00:00:00:06:09"),  # stale
        Route(N6("fd10:244:0:7::/64"), EXT, A6("2001:db8:18::7")),  # old host-gw route
        Route(N6("fd10:244:0:8::/80"), EXT, A6("2001:db8:18::8")),  # another length: kept
        Neighbour(dev6, A6("fe80::1"), "0a:00:00:00:06:01", permanent=False),  # the kernel's
    ]
    ops = plan_peers(own, [v6], observed, device_index=dev6, ext_index=EXT,
                     network=N6("fd10:244::/56"), subnet_len=64)
    assert ops == [
        Replace(FdbEntry(dev6, mac6, A6("2001:db8:18::2"))),
        Replace(Neighbour(dev6, A6("fd10:244:0:2::"), mac6)),
        Replace(Route(N6("fd10:244:0:2::/64"), dev6, A6("fd10:244:0:2::"), onlink=True)),
        Delete(Route(N6("fd10:244:0:7::/64"), EXT, A6("2001:db8:18::7"))),
        Delete(Route(N6("fd10:244:0:9::/64"), dev6, A6("fd10:244:0:9::"), onlink=True)),
        Delete(Neighbour(dev6, A6("fd10:244:0:9::"), "0a:00:00:00:06:09")),
    ]
    assert all(op.obj.family == 10 for op in ops if isinstance(op, (Replace, Delete)))
    assert plan_address(own, dev6, [Address(dev6, A6("fe80::1"), 64)], V6) == [
        Replace(Address(dev6, A6("fd10:244:0:1::"), 128))]  # link-local left to the kernel
