"""The underlay: one namespace holding a bridge, and node namespaces plugged into it.

Every link is created from inside a lab namespace (``ip -n <ns> link add ... peer ... netns
<other>``), so nothing ever appears in the root namespace.  The underlay gateway address
198.18.0.254 lives on the bridge; nodes get 198.18.0.<i>/24 and a default route via the gateway,
which is what flanneld uses to pick its interface when --iface is not given.

Dual stack (``dual_stack=True``): the same links carry IPv6 as well, the bridge
2001:db8:18::254/64 and node ``i`` 2001:db8:18::<i>/64 with a default IPv6 route via the bridge.
Duplicate address detection is switched off in every lab namespace before its links exist
(``all``/``default`` knobs, plus the link's own knob once it exists), so an address is usable
the moment it is added; node namespaces forward IPv6 too.  Every sysctl is namespaced: it is
written from inside the lab namespace (``ip netns exec NS sysctl``).
"""

from __future__ import annotations

from collections.abc import Sequence

from netnslab.names import UNDERLAY_GW, UNDERLAY_GW6, LabNames, node_address, node_address6
from netnslab.proc import ip_batch, nsexec, run

# Per-namespace IPv6 knobs of a dual-stack lab: no DAD (addresses usable at once; hairpin
# bridges would also echo DAD probes back and fail them), IPv6 not disabled.
NO_DAD = (
    "net.ipv6.conf.all.disable_ipv6=0",
    "net.ipv6.conf.default.disable_ipv6=0",
    "net.ipv6.conf.all.accept_dad=0",
    "net.ipv6.conf.default.accept_dad=0",
)


def sysctl(ns: str, settings: Sequence[str]) -> None:
    """``sysctl -w`` inside namespace ``ns`` (namespaced knobs only: net.ipv4/net.ipv6)."""
    run(nsexec(ns, ["sysctl", "-qw", *settings]))


def link_no_dad(link: str) -> list[str]:
    """The sysctl settings that switch DAD off on one existing link (dots in names: '/')."""
    key = link.replace(".", "/")
    return [f"net.ipv6.conf.{key}.accept_dad=0", f"net.ipv6.conf.{key}.disable_ipv6=0"]


def netns_list() -> list[str]:
    res = run(["ip", "netns", "list"], check=False)
    return [line.split()[0] for line in res.stdout.splitlines() if line.strip()]


def create_underlay(names: LabNames, dual_stack: bool = False) -> None:
    ns = names.underlay_ns
    if not dual_stack:
        ip_batch(
            [
                f"netns add {ns}",
                f"-n {ns} link set lo up",
                f"-n {ns} link add {names.bridge} type bridge stp_state 0 forward_delay 0",
                f"-n {ns} addr add {UNDERLAY_GW}/24 dev {names.bridge}",
                f"-n {ns} link set {names.bridge} up",
            ]
        )
        return
    ip_batch([f"netns add {ns}", f"-n {ns} link set lo up"])
    sysctl(ns, NO_DAD)
    ip_batch(
        [
            f"-n {ns} link add {names.bridge} type bridge stp_state 0 forward_delay 0",
            f"-n {ns} addr add {UNDERLAY_GW}/24 dev {names.bridge}",
        ]
    )
    sysctl(ns, link_no_dad(names.bridge))
    ip_batch(
        [
            f"-n {ns} addr add {UNDERLAY_GW6}/64 dev {names.bridge} nodad",
            f"-n {ns} link set {names.bridge} up",
        ]
    )


def create_node(names: LabNames, node: int, dual_stack: bool = False) -> None:
    """A node namespace with its uplink on the underlay bridge, forwarding on."""
    ns, ul = names.node_ns(node), names.underlay_ns
    port = names.bridge_port(node)
    if not dual_stack:
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
        return
    # Dual stack: the knobs first (links created afterwards inherit ``default``: cni0,
    # flannel.1, flannel-v6.1), then the uplink's own knob, then the addresses.
    ip_batch([f"netns add {ns}", f"-n {ns} link set lo up"])
    sysctl(ns, [*NO_DAD, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"])
    ip_batch(
        [
            f"-n {ul} link add {port} type veth peer name {names.uplink} netns {ns}",
            f"-n {ul} link set {port} master {names.bridge} up",
        ]
    )
    sysctl(ns, link_no_dad(names.uplink))
    ip_batch(
        [
            f"-n {ns} addr add {node_address(node)} dev {names.uplink}",
            f"-n {ns} addr add {node_address6(node)} dev {names.uplink} nodad",
            f"-n {ns} link set {names.uplink} up",
            f"-n {ns} route add default via {UNDERLAY_GW}",
            f"-n {ns} route add ::/0 via {UNDERLAY_GW6} dev {names.uplink}",
        ]
    )


def create_pod_ns(ns: str, dual_stack: bool = False) -> None:
    ip_batch([f"netns add {ns}", f"-n {ns} link set lo up"])
    if dual_stack:
        sysctl(ns, NO_DAD)  # before the CNI plugin creates eth0 in here


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
