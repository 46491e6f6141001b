"""Dual stack (IPv4 + IPv6) across a 3-node netns lab, for vxlan and host-gw.

The lab comes up with ``dual_stack=True`` (``netns-lab/lab up --dual-stack``): every node has
198.18.0.<n>/24 and 2001:db8:18::<n>/64 on its uplink (DAD off, IPv6 forwarding on), the etcd
config is ``{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd10:244::/56",...}``
(IPv6SubnetLen: the default 64), and every pod gets an IPv4 and an IPv6 address through our CNI
plugin.  What flanneld must then do, as Go flannel does: a lease key ``a.b.c.d-24&<ipv6>-64``
with PublicIPv6 (and, for vxlan, BackendV6Data.VtepMAC of ``flannel-v6.1``); per peer an IPv6
route (vxlan: via the peer subnet's network address, onlink, dev flannel-v6.1, plus neigh and fdb
entries on flannel-v6.1; host-gw: via the peer's PublicIPv6 on the uplink).

The first two tests check the lab's own half without the daemon (lab ``flabt6pl``: underlay,
config, synthetic dual-stack subnet.env, CNI pods with both families).  Then one lab per backend
serves the rest of the module; tests run in file order, the destructive ones last.  Those need
the daemon's dual-stack support: without it the fixture fails at ``lab up`` (flanneld refuses
the config: "dual stack (IPv4 + IPv6) is not supported yet").
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from ipaddress import IPv4Network, IPv6Address, IPv6Network, ip_address

import pytest
from labkit import (
    DRIFT_INTERVAL,
    FLANNELD_TEST_ARGS,
    REPO,
    LabHandle,
    Pinger,
    lab_running,
    poll,
    require_flanneld,
)
from netnslab import lab as labmod
from netnslab import pingmatrix
from netnslab import pods as pods_mod
from netnslab.etcd import CONFIG_KEY
from netnslab.pingmatrix import PingResult
from netnslab.proc import nsexec, run
from netnslab.state import PodState, read_subnet_env
from udp_probe import udp_probe

pytestmark = pytest.mark.lab

NAMES = {"vxlan": "flabt6vx", "host-gw": "flabt6hg"}
LAB = REPO / "netns-lab" / "lab"
IPV6_NETWORK = IPv6Network("fd10:244::/56")
VXLAN6 = "flannel-v6.1"
DRIFT_DEADLINE = 3 * DRIFT_INTERVAL + 5.0
JOIN_DEADLINE = 10.0  # generous: this module checks that state appears, the 1 s budget is datapath's


class DualStackLab(LabHandle):
    """LabHandle plus the IPv6 half: subnets, addresses, routes, neigh/fdb on flannel-v6.1."""

    @property
    def backend(self) -> str:
        return self.state.backend

    def env(self, node: int) -> dict[str, str]:
        return read_subnet_env(self.state.subnet_file(node))

    def subnet6(self, node: int) -> IPv6Network:
        return IPv6Network(self.env(node)["FLANNEL_IPV6_SUBNET"], strict=False)

    def public_ip6(self, node: int) -> str:
        return f"2001:db8:18::{node}"

    def pod_ip6(self, node: int, index: int = 1) -> str:
        return self.pod(node, index).address6.split("/")[0]

    def vtep_mac6(self, node: int) -> str:
        links = self.ipj(self.node_ns(node), "link", "show", VXLAN6)
        return str(links[0]["address"]) if links else ""

    def route6(self, node: int, subnet: IPv6Network) -> dict[str, object] | None:
        for r in self.ipj(self.node_ns(node), "-6", "route"):
            if r.get("dst") == str(subnet):
                return r
        return None

    def has_route6(self, node: int, subnet: IPv6Network) -> bool:
        return self.route6(node, subnet) is not None

    def fdb6(self, node: int) -> list[dict[str, object]]:
        return self.fdb(node, VXLAN6)

    def has_fdb6(self, node: int, mac: str, dst: str | None = None) -> bool:
        return any(
            str(e.get("mac", "")).lower() == mac.lower()
            and (dst is None or _same_ip(e.get("dst"), dst))
            for e in self.fdb6(node)
        )

    def neigh6(self, node: int, addr: str) -> dict[str, object] | None:
        for n in self.ipj(self.node_ns(node), "-6", "neigh", "show", "dev", VXLAN6):
            if _same_ip(n.get("dst"), addr):
                return n
        return None

    def lease6_of(self, node: int) -> tuple[str, dict[str, object]]:
        for key, value in self.leases().items():
            obj = json.loads(value)
            if _same_ip(obj.get("PublicIPv6"), self.public_ip6(node)):
                return key, obj
        raise AssertionError(f"no lease with PublicIPv6 {self.public_ip6(node)} for n{node}: {self.leases()}")

    def ping6(self, src_ns: str, dst: str, timeout: float = 1.0) -> bool:
        return self.ping_run(src_ns, dst, "-6", "-q", timeout=timeout).returncode == 0


def _same_ip(a: object, b: str) -> bool:
    try:
        return isinstance(a, str) and ip_address(a) == ip_address(b)
    except ValueError:
        return False


def _key_subnets(key: str) -> tuple[IPv4Network, IPv6Network | None]:
    """``.../10.244.1.0-24&fd10:244:0:1::-64`` -> (10.244.1.0/24, fd10:244:0:1::/64)."""
    v4, amp, v6 = key.rsplit("/", 1)[-1].partition("&")
    addr, _, plen = v4.partition("-")
    net4 = IPv4Network(f"{addr}/{plen}")
    if not amp:
        return net4, None
    addr6, _, plen6 = v6.rpartition("-")
    return net4, IPv6Network(f"{addr6}/{plen6}")


@pytest.fixture(scope="module", params=["vxlan", "host-gw"])
def cluster(request: pytest.FixtureRequest) -> Iterator[DualStackLab]:
    require_flanneld()
    backend = str(request.param)
    with lab_running(
        NAMES[backend], nodes=3, backend=backend, pods_per_node=2, dual_stack=True,
        flanneld_args=(*FLANNELD_TEST_ARGS, "--ip-masq"),  # as kube-flannel runs it
    ) as h:  # fmt: skip
        yield DualStackLab(h.name)


def _others(h: DualStackLab, node: int) -> list[int]:
    return [n for n in sorted(h.state.nodes) if n != node]


# ---------------------------------------------------------------- the lab's half (no daemon)


def test_matrix_names_the_family() -> None:
    pods = [PodState("flab-n1p1", 1, 1, "10.244.1.2/24", "fd10:244:0:1::2/64"),
            PodState("flab-n2p1", 2, 1, "10.244.2.2/24", "")]  # fmt: skip
    results = [PingResult("flab-n1p1", "flab-n2p1", False), PingResult("flab-n2p1", "flab-n1p1", True)]
    rows = pingmatrix.render(pods, results, "flab", 6).splitlines()
    assert rows[0].startswith("IPv6: src")
    assert rows[2].split() == ["n1p1", "-", "X"] and rows[-1] == "IPv6: 1/2 pod pairs reachable"
    assert pingmatrix.pod_ip(pods[0], 6) == "fd10:244:0:1::2" and pingmatrix.pod_ip(pods[1], 6) == ""
    assert _key_subnets("/coreos.com/network/subnets/10.244.1.0-24&fd10:244:0:1::-64") == (
        IPv4Network("10.244.1.0/24"), IPv6Network("fd10:244:0:1::/64"))  # fmt: skip


def test_dual_stack_plumbing_without_flanneld() -> None:
    """``up --dual-stack --no-flanneld``: IPv6 underlay (no tentative address, DAD off,
    forwarding on), the dual-stack config in etcd, a synthetic dual-stack subnet.env, and pods
    that get both families from our CNI plugin and reach each other on one node."""
    if not pods_mod.cni_available():
        pytest.skip("CNI plugin .venv/bin/flannel not installed")
    with lab_running("flabt6pl", nodes=2, flanneld=False, attach="cni", dual_stack=True) as h:
        lab = DualStackLab(h.name)
        st = lab.state
        assert st.dual_stack and st.ipv6_network == str(IPV6_NETWORK)
        conf = json.loads(lab.etcdctl("get", CONFIG_KEY, "--print-value-only"))
        assert conf["EnableIPv6"] is True and conf["IPv6Network"] == str(IPV6_NETWORK)
        for node in (1, 2):
            ns = lab.node_ns(node)
            _check_underlay6(lab, node)
            knobs = run(nsexec(ns, ["sysctl", "-n", "net.ipv6.conf.all.forwarding",
                                    "net.ipv6.conf.default.accept_dad",
                                    f"net.ipv6.conf.{lab.names.uplink}.accept_dad"])).stdout.split()  # fmt: skip
            assert knobs == ["1", "0", "0"], knobs
            assert lab.subnet6(node) == IPv6Network(f"fd10:244:0:{node}::/64")
            for j in (1, 2):
                pod = lab.pod(node, j)
                assert IPv6Address(pod.address6.split("/")[0]) in lab.subnet6(node), pod
                assert pods_mod.pod_address6(pod) == pod.address6
            a, b = lab.pod(node, 1), lab.pod(node, 2)
            assert lab.ping6(a.name, lab.pod_ip6(node, 2)) and lab.ping6(b.name, lab.pod_ip6(node, 1))
            assert lab.ping(a.name, lab.pod_ip(node, 2))
        # Without flanneld nothing routes between nodes: ping-all says so for each family.
        res = subprocess.run([str(LAB), "--name", h.name, "ping-all", "--timeout", "0.3", "--tries", "1"],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert res.returncode == 1
        assert "IPv4: 4/12 pod pairs reachable" in res.stdout and "IPv6: 4/12 pod pairs reachable" in res.stdout
        out = subprocess.run([str(LAB), "--name", h.name, "status"], capture_output=True, text=True,
                             check=False).stdout  # fmt: skip
        assert "2001:db8:18::2" in out and "fd10:244:0:2::1/64" in out and lab.pod(2, 2).address6 in out


def _check_underlay6(h: DualStackLab, node: int) -> None:
    ns = h.node_ns(node)
    addrs = h.ipj(ns, "-6", "addr", "show", "dev", h.names.uplink, "scope", "global")
    infos = [a for link in addrs for a in link.get("addr_info", []) if a.get("local")]
    assert [(a["local"], a["prefixlen"]) for a in infos] == [(h.public_ip6(node), 64)]
    assert not any(a.get("tentative") or a.get("dadfailed") for a in infos), infos
    for peer in _others(h, node):
        assert h.ping6(ns, h.public_ip6(peer)), f"n{node} -> {h.public_ip6(peer)}"
    assert h.ping6(ns, "2001:db8:18::254"), f"n{node} -> underlay gateway"


# ---------------------------------------------------------------- with flanneld


def test_lab_state_and_config_are_dual_stack(cluster: DualStackLab) -> None:
    st = cluster.state
    assert st.dual_stack and st.ipv6_network == str(IPV6_NETWORK)
    conf = json.loads(cluster.etcdctl("get", CONFIG_KEY, "--print-value-only"))
    assert conf["EnableIPv6"] is True and conf["IPv6Network"] == str(IPV6_NETWORK)
    assert "IPv6SubnetLen" not in conf  # flannel's default, 64
    for node in (1, 2, 3):
        _check_underlay6(cluster, node)


def test_subnet_env_has_both_families(cluster: DualStackLab) -> None:
    seen: set[IPv6Network] = set()
    for node in (1, 2, 3):
        env = cluster.env(node)
        assert env.get("FLANNEL_NETWORK") == "10.244.0.0/16", env
        assert IPv6Network(env["FLANNEL_IPV6_NETWORK"]) == IPV6_NETWORK, env
        sub6 = cluster.subnet6(node)
        assert sub6.prefixlen == 64 and sub6.subnet_of(IPV6_NETWORK), env
        assert sub6 not in seen, f"n{node} got {sub6} twice"
        seen.add(sub6)
        key, lease = cluster.lease_of(node)
        assert _key_subnets(key) == (cluster.subnet(node), sub6), key
        assert _same_ip(lease.get("PublicIPv6"), cluster.public_ip6(node)), lease
        assert cluster.lease6_of(node)[0] == key
        if cluster.backend == "vxlan":
            mac6 = cluster.vtep_mac6(node)
            assert mac6 and mac6 != cluster.vtep_mac(node)
            assert lease["BackendV6Data"]["VtepMAC"] == mac6, lease
            assert lease["BackendData"]["VtepMAC"] == cluster.vtep_mac(node), lease


def test_pods_have_an_address_of_each_family(cluster: DualStackLab) -> None:
    for pod in cluster.state.pods():
        assert ip_address(pod.address.split("/")[0]) in cluster.subnet(pod.node), pod
        assert pod.address6, f"{pod.name} has no IPv6 address"
        assert IPv6Address(pod.address6.split("/")[0]) in cluster.subnet6(pod.node), pod


def test_every_pod_reaches_every_other_pod_over_both_families(cluster: DualStackLab) -> None:
    plist = cluster.state.pods()
    report = []
    for family in (4, 6):
        results = pingmatrix.ping_all(plist, timeout=1.0, tries=3, family=family)
        if not all(r.ok for r in results):
            report.append(pingmatrix.render(plist, results, cluster.name, family))
    assert not report, "\n" + "\n\n".join(report)


def test_ipv6_routes_neigh_fdb_match_leases(cluster: DualStackLab) -> None:
    for node in (1, 2, 3):
        for peer in _others(cluster, node):
            sub6 = cluster.subnet6(peer)
            route = cluster.route6(node, sub6)
            assert route is not None, f"n{node} has no IPv6 route to n{peer}'s {sub6}"
            assert cluster.has_route(node, cluster.subnet(peer)), f"n{node}: IPv4 route to n{peer} gone"
            if cluster.backend == "vxlan":
                assert route["dev"] == VXLAN6, route
                assert _same_ip(route.get("gateway"), str(sub6.network_address)), route
                assert "onlink" in route.get("flags", []), route  # type: ignore[operator]
                mac6 = cluster.vtep_mac6(peer)
                neigh = cluster.neigh6(node, str(sub6.network_address))
                assert neigh is not None and str(neigh.get("lladdr", "")).lower() == mac6.lower(), neigh
                assert cluster.has_fdb6(node, mac6, cluster.public_ip6(peer)), cluster.fdb6(node)
            else:
                assert route["dev"] == cluster.names.uplink, route
                assert _same_ip(route.get("gateway"), cluster.public_ip6(peer)), route


def test_flanneld_sigkill_restart_keeps_both_families(cluster: DualStackLab) -> None:
    """SIGKILL + restart of n2's then n1's flanneld under a 10 ms ping per family: the kernel
    datapath outlives the daemon, so nothing is lost; subnets, lease keys and (vxlan) both VTEP
    MACs stay the same."""
    vx = cluster.backend == "vxlan"

    def facts(n: int) -> tuple[object, ...]:
        return (cluster.subnet(n), cluster.subnet6(n), cluster.lease_of(n)[0],
                cluster.vtep_mac(n) if vx else "", cluster.vtep_mac6(n) if vx else "")  # fmt: skip

    before = {n: facts(n) for n in (1, 2)}
    src = cluster.pod(1, 1).name
    d = cluster.state.dir
    ping4 = Pinger(src, cluster.pod_ip(2, 1), d / "ping4-dual.log")
    ping6 = Pinger(src, cluster.pod_ip6(2, 1), d / "ping6-dual.log")
    try:
        ping4.wait_flowing()
        ping6.wait_flowing()
        for node in (2, 1):
            cluster.kill_flanneld(node)
            # The daemon is gone; its kernel state is not.
            for peer in _others(cluster, node):
                assert cluster.has_route6(node, cluster.subnet6(peer)), f"n{node}: IPv6 route to n{peer}"
                assert cluster.has_route(node, cluster.subnet(peer)), f"n{node}: IPv4 route to n{peer}"
            cluster.start_flanneld(node)  # returns once subnet.env is rewritten
            time.sleep(DRIFT_INTERVAL + 0.5)  # one full reconcile pass after the restart
    finally:
        r4, r6 = ping4.stop(), ping6.stop()
    for fam, res in (("IPv4", r4), ("IPv6", r6)):
        assert res.sent > 200, f"{fam}: {res.text[-500:]}"
        assert res.lost == 0, f"{fam}: lost {res.lost} of {res.sent} pings:\n{res.text[-800:]}"
    for node in (1, 2):
        assert facts(node) == before[node], f"n{node}: {before[node]} -> {facts(node)}"
        if vx:
            lease = cluster.lease_of(node)[1]
            assert lease["BackendData"]["VtepMAC"] == cluster.vtep_mac(node), lease
            assert lease["BackendV6Data"]["VtepMAC"] == cluster.vtep_mac6(node), lease


def test_deleted_ipv6_route_comes_back(cluster: DualStackLab) -> None:
    sub6 = cluster.subnet6(2)
    cluster.ip(cluster.node_ns(1), "-6", "route", "del", str(sub6))
    assert not cluster.has_route6(1, sub6)
    took = poll(lambda: cluster.has_route6(1, sub6), DRIFT_DEADLINE, 0.05, f"IPv6 route {sub6} back on n1")
    print(f"{cluster.backend}: deleted IPv6 route repaired after {took:.2f}s")
    poll(lambda: cluster.ping6(cluster.pod(1, 1).name, cluster.pod_ip6(2, 1), 0.5), 5.0, 0.1,
         "n1p1 -> n2p1 over IPv6 after the repair")  # fmt: skip


def test_node_joins_and_leaves(cluster: DualStackLab) -> None:
    """A 4th node joins: every other node gets its IPv6 route (vxlan: + neigh + fdb on
    flannel-v6.1 to its PublicIPv6; host-gw: via its PublicIPv6) and pods reach it over both
    families.  Then it leaves (daemon killed for good, lease deleted): all of it vanishes."""
    vx = cluster.backend == "vxlan"
    node = labmod.add_node(cluster.name, labmod.UpOptions(pods_per_node=1), converge=False)
    old = _others(cluster, node)
    sub4, sub6 = cluster.subnet(node), cluster.subnet6(node)
    pub6 = cluster.public_ip6(node)
    if vx:
        poll(lambda: bool(cluster.vtep_mac6(node)), JOIN_DEADLINE, 0.01, f"{VXLAN6} on n{node}")
    mac6 = cluster.vtep_mac6(node) if vx else ""

    def programmed(n: int) -> bool:
        route = cluster.route6(n, sub6)
        if route is None or not cluster.has_route(n, sub4):
            return False
        if not vx:
            return route.get("dev") == cluster.names.uplink and _same_ip(route.get("gateway"), pub6)
        neigh = cluster.neigh6(n, str(sub6.network_address))
        return (
            route.get("dev") == VXLAN6
            and neigh is not None
            and str(neigh.get("lladdr", "")).lower() == mac6.lower()
            and cluster.has_fdb6(n, mac6, pub6)
        )

    took = poll(lambda: all(programmed(n) for n in old), JOIN_DEADLINE, 0.01, f"n{node} ({sub6}) programmed on {old}")
    print(f"{cluster.backend}: n{node} {sub4} + {sub6} programmed on {old} after {took:.3f}s")
    poll(lambda: all(cluster.has_route6(node, cluster.subnet6(n)) for n in old), JOIN_DEADLINE, 0.01,
         f"n{node} has IPv6 routes to {old}")  # fmt: skip
    for n in old:
        a, b = cluster.pod(n, 1).name, cluster.pod(node, 1).name
        assert cluster.ping(a, cluster.pod_ip(node, 1)) and cluster.ping(b, cluster.pod_ip(n, 1)), n
        assert cluster.ping6(a, cluster.pod_ip6(node, 1)), f"n{n}p1 -> n{node}p1 over IPv6"
        assert cluster.ping6(b, cluster.pod_ip6(n, 1)), f"n{node}p1 -> n{n}p1 over IPv6"

    # It leaves: nobody renews or re-creates the lease.
    key, _ = cluster.lease_of(node)
    cluster.kill_flanneld(node)
    cluster.etcdctl("del", key)

    def gone(n: int) -> bool:
        return (
            not cluster.has_route6(n, sub6)
            and not cluster.has_route(n, sub4)
            and not (vx and cluster.neigh6(n, str(sub6.network_address)) is not None)
            and not (vx and cluster.has_fdb6(n, mac6))
        )

    took = poll(lambda: all(gone(n) for n in old), 5.0, 0.01, f"n{node}'s {sub6} cleared on {old}")
    print(f"{cluster.backend}: n{node} cleared on {old} {took:.3f}s after its lease was deleted")
    assert cluster.ping6(cluster.pod(1, 1).name, cluster.pod_ip6(2, 1))
    assert cluster.ping(cluster.pod(1, 1).name, cluster.pod_ip(2, 1))


def test_ipv6_masquerade_rules_and_effect(cluster: DualStackLab) -> None:
    """--ip-masq programs flannel's rules for the IPv6 half too (table ip6 flannel-ipv6, or
    ip6tables when the firewall in use is iptables): a pod's IPv6 packet to an address outside
    the IPv6 network leaves with the node's address; pod to pod keeps the pod's."""
    for node in (1, 2, 3):
        ns = cluster.node_ns(node)
        nft = run(nsexec(ns, ["nft", "list", "table", "ip6", "flannel-ipv6"]), check=False).stdout
        ip6t = run(nsexec(ns, ["ip6tables-save"]), check=False).stdout
        assert ("masquerade" in nft and str(IPV6_NETWORK) in nft) or (
            "FLANNEL-POSTRTG" in ip6t and "MASQUERADE" in ip6t and str(IPV6_NETWORK) in ip6t), (
            f"n{node}: no IPv6 masquerade rules:\n{nft}\n{ip6t}")
    pod1 = cluster.pod(1).name
    # to n2's underlay address (outside the IPv6 network): masqueraded to n1's address
    seen, answered = udp_probe(pod1, cluster.node_ns(2), cluster.public_ip6(2), 5361)
    assert answered and _same_ip(seen, cluster.public_ip6(1)), seen
    # pod to pod across nodes: the receiving pod sees the sending pod's address
    seen, answered = udp_probe(pod1, cluster.pod(2).name, cluster.pod_ip6(2), 5362)
    assert answered and _same_ip(seen, cluster.pod_ip6(1)), seen
