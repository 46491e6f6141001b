"""--ip-masq of the real daemon in a 2-node vxlan lab, for nftables and the iptables fallback.

An "outside" namespace (198.19.0.2) hangs off node 1 by a veth; it has no route to the pod
network, so a pod of node 1 gets an answer from it only when masqueraded to node 1's address
(198.19.0.1). Pod-to-pod traffic across nodes keeps the pod's address. Our rules deleted by
hand come back within the daemon's --iptables-resync interval (1 s here), are counted in
``flannel_drift_repairs_total{kind="masq_rules"}``, and masquerading works again.
"""

from __future__ import annotations

import time

import pytest
from ops_lab import (
    HEALTHZ_PORT,
    LabHandle,
    Outside,
    http_get,
    lab_running,
    outside_network,
    poll,
    require_flanneld,
    sh,
)
from udp_probe import udp_probe

pytestmark = pytest.mark.lab

LAB = "flabo2"
RESYNC = 1  # --iptables-resync, seconds (an int flag)
REPAIR_TIMEOUT = 15.0  # generous: the machine is shared; the figure is printed


def ns_exec(ns: str, *argv: str, check: bool = True) -> str:
    return sh("ip", "netns", "exec", ns, *argv, check=check).stdout


def nft_table(ns: str) -> str:
    """Our nft table as listed in ``ns`` ('' when absent)."""
    return ns_exec(ns, "nft", "list", "table", "ip", "flannel-ipv4", check=False)


def iptables_ours(ns: str) -> str:
    """The iptables-save lines of ``ns`` that mention flannel's chains."""
    return "\n".join(line for line in ns_exec(ns, "iptables-save").splitlines() if "FLANNEL-" in line)


def rules_in_place(mode: str, ns: str) -> bool:
    if mode == "nftables":
        return "masquerade" in nft_table(ns)
    ours = iptables_ours(ns)
    return all(
        part in ours
        for part in (
            '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG',
            '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD',
            "-j MASQUERADE",
        )
    )


def masquerading_chains(ns: str) -> set[tuple[str, str]]:
    """(table, chain) of every masquerade rule of ``ns`` (iptables-nft rules are listed too)."""
    owners: set[tuple[str, str]] = set()
    table = chain = ""
    for line in ns_exec(ns, "nft", "list", "ruleset").splitlines():
        words = line.split()
        if words[:1] == ["table"]:
            table = " ".join(words[1:3])
        elif words[:1] == ["chain"]:
            chain = words[1]
        elif "masquerade" in line.lower():
            owners.add((table, chain))
    return owners


def delete_by_hand(mode: str, ns: str) -> None:
    """Remove all of our rules, as an operator (or another tool) would."""
    if mode == "nftables":
        ns_exec(ns, "nft", "delete", "table", "ip", "flannel-ipv4")
        return
    for table, hook, chain, comment in (
        ("nat", "POSTROUTING", "FLANNEL-POSTRTG", "flanneld masq"),
        ("filter", "FORWARD", "FLANNEL-FWD", "flanneld forward"),
    ):
        ns_exec(ns, "iptables", "-t", table, "-D", hook, "-m", "comment", "--comment", comment, "-j", chain)
        ns_exec(ns, "iptables", "-t", table, "-F", chain)
        ns_exec(ns, "iptables", "-t", table, "-X", chain)


def masq_repairs(ns: str) -> float:
    status, text = http_get(ns, f"http://127.0.0.1:{HEALTHZ_PORT}/metrics")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith('flannel_drift_repairs_total{kind="masq_rules"}'):
            return float(line.split()[-1])
    return 0.0


def check_masquerading(lab: LabHandle, out: Outside, port: int) -> None:
    pod1, pod2 = lab.pod(1).name, lab.pod(2).name
    ip1, ip2 = lab.pod_ip(1), lab.pod_ip(2)
    # pod of node 1 -> outside: masqueraded to node 1's address there, and the answer returns
    assert udp_probe(pod1, out.ns, out.address, port=port) == (out.node_address, True)
    # pod -> pod across nodes (vxlan), both ways: the receiving pod sees the sender's pod IP
    assert udp_probe(pod1, pod2, ip2, port=port + 1) == (ip1, True)
    assert udp_probe(pod2, pod1, ip1, port=port + 2) == (ip2, True)


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_masquerade_and_repair_in_lab(mode: str) -> None:
    require_flanneld()
    args = (
        "--ip-masq",
        f"--masq-mode={mode}",
        f"--iptables-resync={RESYNC}",
        "--healthz-ip=127.0.0.1",
        f"--healthz-port={HEALTHZ_PORT}",
    )
    with (
        lab_running(LAB, nodes=2, backend="vxlan", pods_per_node=1, flanneld_args=args) as lab,
        outside_network(lab, node=1) as out,
    ):
        node1 = lab.node_ns(1)
        poll(lambda: rules_in_place(mode, node1), 10, interval=0.1, what=f"{mode} rules on n1")
        # The mode asked for, and only that one; nothing else masquerades (with --ip-masq the
        # CNI plugin turns the bridge plugin's own ipMasq off), so what the outside sees below
        # is the work of these rules.
        if mode == "nftables":
            assert iptables_ours(node1) == ""
            assert masquerading_chains(node1) == {("ip flannel-ipv4", "postrtg")}
        else:
            assert nft_table(node1) == ""
            assert masquerading_chains(node1) == {("ip nat", "FLANNEL-POSTRTG")}
        check_masquerading(lab, out, port=5400)

        repairs = masq_repairs(node1)
        delete_by_hand(mode, node1)
        t0 = time.monotonic()
        assert not rules_in_place(mode, node1)
        poll(lambda: rules_in_place(mode, node1), REPAIR_TIMEOUT, interval=0.02, what=f"{mode} rules repaired")
        took = time.monotonic() - t0
        print(f"{mode}: rules deleted by hand were back after {took:.2f}s (--iptables-resync={RESYNC})")
        poll(lambda: masq_repairs(node1) >= repairs + 1, 10, interval=0.1, what="masq_rules repair counted")
        check_masquerading(lab, out, port=5410)
