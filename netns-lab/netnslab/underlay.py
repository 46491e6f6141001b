"""The underlay: one namespace holding a bridge, and node namespaces plugged into it.

Every link is created from inside a lab namespace (``ip -n <ns> link add ... peer ... netns
<other>``), so nothing ever appears in the root namespace.  The underlay gateway address
198.18.0.254 lives on the bridge; nodes get 198.18.0.<i>/24 and a default route via the gateway,
which is what flanneld uses to pick its interface when --iface is not given.
"""

from __future__ import annotations

from netnslab.names import UNDERLAY_GW, LabNames, node_address
from netnslab.proc import ip_batch, run


def netns_list() -> list[str]:
    res = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def create_underlay(names: LabNames) -> None:
    ns = names.underlay_ns
    ip_batch(
        [
            f"netns add {ns}",
            f"-n {ns} link set lo up",
            f"-n {ns} link add {names.bridge} type bridge stp_state 0 forward_delay 0",
            f"-n {ns} addr add {UNDERLAY_GW}/24 dev {names.bridge}",
            f"-n {ns} link set {names.bridge} up",
        ]
    )


def create_node(names: LabNames, node: int) -> None:
    """A node namespace with its uplink on the underlay bridge, forwarding on."""
    ns, ul = names.node_ns(node), names.underlay_ns
    port = names.bridge_port(node)
    ip_batch(
        [
            f"netns add {ns}",
            f"-n {ns} link set lo up",
            f"-n {ul} link add {port} type veth peer name {names.uplink} netns {ns}",
            f"-n {ul} link set {port} master {names.bridge} up",
            f"-n {ns} addr add {node_address(node)} dev {names.uplink}",
            f"-n {ns} link set {names.uplink} up",
            f"-n {ns} route add default via {UNDERLAY_GW}",
        ]
    )
    run(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])


def create_pod_ns(ns: str) -> None:
    ip_batch([f"netns add {ns}", f"-n {ns} link set lo up"])


def delete_netns(ns: str) -> None:
    run(["ip", "netns", "del", ns], check=False)


def root_links(names: LabNames) -> list[str]:
    """Links in the root namespace that match this lab's naming (normally none)."""
    res = run(["ip", "-o", "link", "show"], check=False)
    out = []
    for line in res.stdout.splitlines():
        parts = line.split(":", 2)
        if len(parts) >= 2:
            link = parts[1].strip().split("@")[0]
            if names.link_pattern.match(link):
                out.append(link)
    return out
