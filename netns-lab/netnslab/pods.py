"""Pods: namespaces attached to their node's pod bridge.

Two attach modes:

* ``cni``: our CNI plugin (``.venv/bin/flannel``) run inside the node namespace, exactly as a
  kubelet would, delegating to Debian's bridge + host-local.  host-local keeps its allocations
  in the node's state directory (via the netconf's top-level ``ipam``, which flannel's plugin
  uses as the base of the delegate's ipam, as Go's plugin does).
* ``bridge``: plain iproute2 — bridge ``cni0`` with the subnet's .1, pod ``j`` gets .(j+1),
  default route via .1.  Needs only subnet.env, so the lab works before the plugin does.

Dual-stack labs: pod namespaces get IPv6 DAD switched off before eth0 exists.  With
FLANNEL_IPV6_SUBNET in subnet.env the plugin hands the delegate both ranges, so host-local gives
each pod an IPv4 and an IPv6 address (recorded as ``address`` / ``address6``); bridge mode does
the same by hand (cni0 gets the IPv6 subnet's ::1, pod ``j`` ::(j+1), default route via ::1).
"""

from __future__ import annotations

import json
import os
from ipaddress import IPv4Interface, IPv6Interface, ip_interface
from typing import Any

from netnslab.names import POD_BRIDGE, POD_IFNAME
from netnslab.proc import CommandError, ip_batch, nsexec, run
from netnslab.state import VENV_BIN, LabState, PodState, read_subnet_env
from netnslab.underlay import create_pod_ns

CNI_PATH = f"/usr/lib/cni:{VENV_BIN}"
CNI_PLUGIN = VENV_BIN / "flannel"


def netconf(lab: LabState, node: int) -> dict[str, Any]:
    d = lab.node_dir(node)
    return {
        "cniVersion": "0.3.1",
        "name": "cbr0",
        "type": "flannel",
        "subnetFile": str(lab.subnet_file(node)),
        "dataDir": str(d / "cni"),
        "ipam": {"type": "host-local", "dataDir": str(d / "ipam")},
        "delegate": {"hairpinMode": True, "isDefaultGateway": True},
    }


def _cni(lab: LabState, node: int, command: str, pod: PodState) -> dict[str, Any]:
    conf = netconf(lab, node)
    (lab.node_dir(node) / "netconf.json").write_text(json.dumps(conf, indent=2) + "\n")
    env = dict(
        os.environ,
        CNI_COMMAND=command,
        CNI_CONTAINERID=pod.name,
        CNI_NETNS=f"/run/netns/{pod.name}",
        CNI_IFNAME=POD_IFNAME,
        CNI_PATH=CNI_PATH,
    )
    res = run(
        nsexec(lab.names.node_ns(node), [str(CNI_PLUGIN)]),
        check=False,
        input_text=json.dumps(conf),
        env=env,
    )
    if res.returncode != 0:
        raise CommandError(
            f"CNI {command} for {pod.name} failed ({res.returncode}): "
            f"{res.stdout.strip()} {res.stderr.strip()}"
        )
    if command != "ADD":
        return {}
    result: dict[str, Any] = json.loads(res.stdout)
    return result


def _attach_cni(lab: LabState, node: int, pod: PodState) -> None:
    result = _cni(lab, node, "ADD", pod)
    ips = result.get("ips") or []
    if not ips:
        raise CommandError(f"CNI ADD for {pod.name} returned no ips: {result}")
    if not lab.dual_stack:
        pod.address = str(ips[0]["address"])
        return
    for entry in ips:
        addr = str(entry.get("address", ""))
        try:
            version = ip_interface(addr).version
        except ValueError:
            continue
        if version == 4 and not pod.address:
            pod.address = addr
        elif version == 6 and not pod.address6:
            pod.address6 = addr


def _attach_bridge(lab: LabState, node: int, pod: PodState) -> None:
    env = read_subnet_env(lab.subnet_file(node))
    if "FLANNEL_SUBNET" not in env:
        raise CommandError(f"no FLANNEL_SUBNET in {lab.subnet_file(node)}")
    gw = IPv4Interface(env["FLANNEL_SUBNET"])
    mtu = int(env.get("FLANNEL_MTU", "1500"))
    ns = lab.names.node_ns(node)
    host = lab.names.pod_host_veth(pod.index)
    addr = IPv4Interface(f"{gw.ip + pod.index}/{gw.network.prefixlen}")
    have_bridge = run(["ip", "-n", ns, "link", "show", POD_BRIDGE], check=False).returncode == 0
    lines = []
    if not have_bridge:
        lines += [
            f"-n {ns} link add {POD_BRIDGE} type bridge stp_state 0 forward_delay 0",
            f"-n {ns} addr add {gw} dev {POD_BRIDGE}",
            f"-n {ns} link set {POD_BRIDGE} up",
        ]
    lines += [
        f"-n {ns} link add {host} mtu {mtu} type veth peer name {POD_IFNAME} netns {pod.name}",
        f"-n {ns} link set {host} master {POD_BRIDGE} up",
        f"-n {pod.name} link set {POD_IFNAME} mtu {mtu} up",
        f"-n {pod.name} addr add {addr} dev {POD_IFNAME}",
        f"-n {pod.name} route add default via {gw.ip}",
    ]
    six = lab.dual_stack and "FLANNEL_IPV6_SUBNET" in env
    if six:
        gw6 = IPv6Interface(env["FLANNEL_IPV6_SUBNET"])
        addr6 = IPv6Interface(f"{gw6.ip + pod.index}/{gw6.network.prefixlen}")
        if not have_bridge:
            lines.insert(2, f"-n {ns} addr add {gw6} dev {POD_BRIDGE} nodad")
        lines += [
            f"-n {pod.name} addr add {addr6} dev {POD_IFNAME} nodad",
            f"-n {pod.name} route add ::/0 via {gw6.ip} dev {POD_IFNAME}",
        ]
    ip_batch(lines)
    pod.address = str(addr)
    if six:
        pod.address6 = str(addr6)


def add_pod(lab: LabState, node: int, index: int, attach: str) -> PodState:
    pod = PodState(name=lab.names.pod_ns(node, index), node=node, index=index)
    create_pod_ns(pod.name, lab.dual_stack)
    if attach == "cni":
        _attach_cni(lab, node, pod)
    else:
        _attach_bridge(lab, node, pod)
    return pod


def cni_available() -> bool:
    return CNI_PLUGIN.exists()


def pod_address(pod: PodState) -> str:
    """The pod's current eth0 IPv4 address (CIDR), '' if none."""
    res = run(["ip", "-n", pod.name, "-4", "-o", "addr", "show", "dev", POD_IFNAME], check=False)
    for line in res.stdout.splitlines():
        parts = line.split()
        if "inet" in parts:
            return parts[parts.index("inet") + 1]
    return ""


def pod_address6(pod: PodState) -> str:
    """The pod's current global IPv6 address on eth0 (CIDR), '' if none."""
    res = run(["ip", "-n", pod.name, "-6", "-o", "addr", "show", "dev", POD_IFNAME, "scope", "global"],
              check=False)  # fmt: skip
    for line in res.stdout.splitlines():
        parts = line.split()
        if "inet6" in parts:
            return parts[parts.index("inet6") + 1]
    return ""
