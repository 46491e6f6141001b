"""The lab as a whole: bring it up, grow it, inspect it, tear it down.

``up`` order: underlay namespace + bridge, etcd, network config, node namespaces, flanneld on
every node (in parallel), wait for each subnet.env, attach pods, then wait until every node
has a kernel route covering every other node's subnet.  ``down`` trusts nothing but names:
it kills recorded pids (if they are still the processes we started), then every process left
in a namespace matching the lab's pattern, then deletes those namespaces and the state dir.

``--dual-stack`` (``UpOptions.dual_stack``): the underlay carries IPv6 as well (node i
2001:db8:18::<i>/64, DAD off, IPv6 forwarding on), the etcd config gets ``"EnableIPv6": true,
"IPv6Network": "fd10:244::/56"``, pods get an IPv4 and an IPv6 address, convergence waits for
the IPv6 routes as well, and ping-all / status cover both families.  Recorded in lab.json
(``dual_stack``, ``ipv6_network``) so later commands (add-node, ping-all, status) know.
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_network
from typing import Any

from netnslab import daemon, etcd, pods, underlay
from netnslab.names import DEFAULT_IPV6_NETWORK, MAX_NODES, LabNames, node_address, node_address6
from netnslab.proc import (
    CommandError,
    ProcRef,
    alive,
    ns_pids,
    progress,
    run,
    signal_proc,
    stop,
    wait_dead,
)
from netnslab.state import LabState, NodeState, PodState, read_subnet_env, state_dir

BACKENDS = ("vxlan", "host-gw", "udp", "wireguard")
DUAL_STACK_BACKENDS = ("vxlan", "host-gw", "wireguard")


class LabError(RuntimeError):
    """The lab could not do what was asked (message is for the user)."""


class LabExists(LabError):
    """``up`` refused: a lab of that name exists (it must not be torn down by the failure)."""


@dataclass
class UpOptions:
    nodes: int = 3
    backend: str = "vxlan"
    pods_per_node: int = 2
    network: str = "10.244.0.0/16"
    attach: str = "auto"  # auto | cni | bridge
    flanneld: bool = True  # False: plumbing only, synthetic subnet.env per node
    config: str = ""  # raw network config JSON (overrides network/backend)
    flanneld_args: tuple[str, ...] = ()
    timeout: float = 30.0
    dual_stack: bool = False  # IPv6 on the underlay, EnableIPv6 in the config, pods dual-stack
    ipv6_network: str = DEFAULT_IPV6_NETWORK  # the config's IPv6Network (with dual_stack)
    # False (hidden CLI flag --no-ipv6-config): dual-stack underlay, but the config written to
    # etcd stays IPv4-only (to check the lab itself with a daemon that lacks IPv6).
    ipv6_config: bool = True


def exists(name: str) -> bool:
    names = LabNames(name)
    return state_dir(name).exists() or any(names.owns_ns(ns) for ns in underlay.netns_list())


def load(name: str) -> LabState:
    lab = LabState.load(name)
    if lab is None:
        raise LabError(f"no lab named {name!r} (run: lab up)")
    return lab


def network_config(opts: UpOptions) -> str:
    if opts.config:
        json.loads(opts.config)  # fail early on bad JSON
        return opts.config
    conf: dict[str, Any] = {"Network": opts.network}
    if opts.dual_stack and opts.ipv6_config:
        conf["EnableIPv6"] = True
        conf["IPv6Network"] = opts.ipv6_network
    conf["Backend"] = {"Type": opts.backend}
    return json.dumps(conf, separators=(",", ":"))


def config_ipv6_network(conf: str) -> str:
    """The IPv6Network of a network config with EnableIPv6 ("" if none)."""
    try:
        obj = json.loads(conf)
    except ValueError:
        return ""
    if not isinstance(obj, dict):
        return ""
    fields = {str(k).lower(): v for k, v in obj.items()}
    if fields.get("enableipv6") is not True or not isinstance(fields.get("ipv6network"), str):
        return ""
    return str(fields["ipv6network"])


def up(name: str, opts: UpOptions) -> LabState:
    if opts.backend not in BACKENDS:
        raise LabError(f"unknown backend {opts.backend!r}: one of {', '.join(BACKENDS)}")
    if not 1 <= opts.nodes <= MAX_NODES:
        raise LabError(f"--nodes must be 1..{MAX_NODES}")
    if exists(name):
        raise LabExists(f"lab {name!r} already exists: run `lab --name {name} down` first")
    if opts.dual_stack:  # after the exists check: a failed up tears the (new) lab down
        if opts.backend not in DUAL_STACK_BACKENDS and opts.ipv6_config and not opts.config:
            raise LabError(f"--dual-stack: backend {opts.backend} has no IPv6 "
                           f"(one of {', '.join(DUAL_STACK_BACKENDS)})")
        try:
            IPv6Network(opts.ipv6_network)
        except ValueError as exc:
            raise LabError(f"--ipv6-network: {exc}") from None
    t0 = time.monotonic()
    conf = network_config(opts)
    attach = opts.attach
    if attach == "auto":
        attach = "cni" if pods.cni_available() else "bridge"
        if attach == "bridge":
            progress(f"{pods.CNI_PLUGIN} not found: attaching pods with plain bridge/veth")
    lab = LabState(
        name=name,
        backend=opts.backend,
        network=opts.network,
        attach=attach,
        pods_per_node=opts.pods_per_node,
        flanneld_args=list(opts.flanneld_args),
        dual_stack=opts.dual_stack,
        ipv6_network=config_ipv6_network(conf) if opts.dual_stack else "",
    )
    names = lab.names
    lab.dir.mkdir(parents=True, exist_ok=True)
    lab.save()
    dual = " (dual stack)" if opts.dual_stack else ""
    progress(f"underlay {names.underlay_ns} with bridge {names.bridge}{dual}")
    underlay.create_underlay(names, opts.dual_stack)
    ref = etcd.start_etcd(names, lab.dir)
    etcd.wait_healthy(names, ref)
    etcd.etcdctl(names, "put", etcd.CONFIG_KEY, conf)
    progress(f"etcd on {names.etcd_endpoint}, config {conf}")
    for i in range(1, opts.nodes + 1):
        _create_node(lab, i)
    lab.save()
    _start_daemons(lab, list(range(1, opts.nodes + 1)), opts)
    for i in range(1, opts.nodes + 1):
        _attach_pods(lab, i, opts.pods_per_node, fallback=opts.attach == "auto")
    lab.save()
    if opts.flanneld:
        wait_converged(lab, opts.timeout)
    progress(f"lab {name!r} up in {time.monotonic() - t0:.1f}s")
    return lab


def _create_node(lab: LabState, i: int) -> None:
    underlay.create_node(lab.names, i, lab.dual_stack)
    lab.node_dir(i).mkdir(parents=True, exist_ok=True)
    lab.nodes[i] = NodeState(index=i)
    six = f" {node_address6(i)}" if lab.dual_stack else ""
    progress(f"node {lab.names.node_ns(i)} {node_address(i)}{six}")


def _synthetic_subnet_env(lab: LabState, i: int) -> None:
    net = IPv4Network(lab.network)
    sub = list(net.subnets(new_prefix=24))[i]
    six = ""
    if lab.ipv6_network:
        net6 = IPv6Network(lab.ipv6_network)
        sub6 = next(s for k, s in enumerate(net6.subnets(new_prefix=64)) if k == i)
        six = f"FLANNEL_IPV6_NETWORK={net6}\nFLANNEL_IPV6_SUBNET={sub6.network_address + 1}/64\n"
    lab.subnet_file(i).write_text(
        f"FLANNEL_NETWORK={net}\nFLANNEL_SUBNET={sub.network_address + 1}/24\n{six}"
        "FLANNEL_MTU=1500\nFLANNEL_IPMASQ=false\n"
    )


def _start_daemons(lab: LabState, nodes: list[int], opts: UpOptions) -> None:
    if not opts.flanneld:
        for i in nodes:
            _synthetic_subnet_env(lab, i)
        progress("plumbing only: no flanneld, synthetic subnet.env per node")
        return
    since = time.time() - 1.0
    refs = {i: daemon.start(lab, i) for i in nodes}
    for i, ref in refs.items():
        progress(f"flanneld on n{i} pid {ref.pid}")
    for i, ref in refs.items():
        daemon.wait_subnet_file(lab, i, ref, opts.timeout, since)
        env = read_subnet_env(lab.subnet_file(i))
        six = f" {env.get('FLANNEL_IPV6_SUBNET', '(no IPv6 subnet)')}" if lab.dual_stack else ""
        progress(f"n{i}: {env.get('FLANNEL_SUBNET', '?')}{six} mtu {env.get('FLANNEL_MTU', '?')}")


def _attach_pods(lab: LabState, i: int, count: int, fallback: bool) -> None:
    node = lab.nodes[i]
    for j in range(len(node.pods) + 1, len(node.pods) + count + 1):
        try:
            pod = pods.add_pod(lab, i, j, lab.attach)
        except CommandError as exc:
            if not (fallback and lab.attach == "cni"):
                raise
            progress(f"CNI attach failed, falling back to bridge mode: {exc}")
            lab.attach = "bridge"
            underlay.delete_netns(lab.names.pod_ns(i, j))
            pod = pods.add_pod(lab, i, j, lab.attach)
        node.pods.append(pod)
        six = f" {pod.address6 or '(no IPv6)'}" if lab.dual_stack else ""
        progress(f"pod {pod.name} {pod.address}{six} ({lab.attach})")


def add_node(name: str, opts: UpOptions, converge: bool = True) -> int:
    """A new node joins: namespace, flanneld, ``opts.pods_per_node`` pods (-1: the lab's K)."""
    lab = load(name)
    i = max(lab.nodes, default=0) + 1
    count = lab.pods_per_node if opts.pods_per_node < 0 else opts.pods_per_node
    opts.flanneld_args = tuple(lab.flanneld_args)
    _create_node(lab, i)
    lab.save()
    _start_daemons(lab, [i], opts)
    _attach_pods(lab, i, count, fallback=False)
    lab.save()
    if opts.flanneld and converge:
        wait_converged(lab, opts.timeout)
    return i


def add_pods(name: str, node: int, count: int, attach: str = "") -> list[PodState]:
    """Attach ``count`` more pods to ``node`` (``attach``: cni | bridge, default the lab's)."""
    lab = load(name)
    _check_node(lab, node)
    before = len(lab.nodes[node].pods)
    saved = lab.attach
    lab.attach = attach or saved
    try:
        _attach_pods(lab, node, count, fallback=False)
    finally:
        lab.attach = saved
    lab.save()
    return lab.nodes[node].pods[before:]


def add_bare_node(name: str, node: int) -> None:
    """A node namespace on the underlay with no flanneld (programmed by hand, e.g. interop)."""
    lab = load(name)
    if node in lab.nodes:
        raise LabError(f"node n{node} already exists")
    _create_node(lab, node)
    lab.nodes[node].bare = True
    lab.save()


def start_flanneld(
    name: str, node: int, timeout: float = 30.0, extra_args: Sequence[str] = ()
) -> ProcRef:
    """Start a node's flanneld (lab args plus ``extra_args`` for this run only); returns
    once its subnet.env is (re)written."""
    lab = load(name)
    _check_node(lab, node)
    since = time.time() - 0.05
    ref = daemon.start(lab, node, extra_args)
    daemon.wait_subnet_file(lab, node, ref, timeout, since)
    return ref


def kill_flanneld(name: str, node: int, sig: int = signal.SIGKILL) -> bool:
    lab = load(name)
    _check_node(lab, node)
    return daemon.kill(lab, node, sig)


def stop_etcd(name: str, sig: int = signal.SIGTERM) -> bool:
    """Take the lab's etcd away (data kept); False if it was not running."""
    lab = load(name)
    return etcd.stop_etcd(lab.dir, sig)


def start_etcd(name: str, timeout: float = 20.0) -> ProcRef:
    """Bring the lab's etcd back on the same data dir; returns once it answers /health."""
    lab = load(name)
    if etcd.running(lab.dir):
        raise LabError(f"etcd of lab {name!r} is already running")
    ref = etcd.start_etcd(lab.names, lab.dir)
    etcd.wait_healthy(lab.names, ref, timeout)
    return ref


def _check_node(lab: LabState, node: int) -> None:
    if node not in lab.nodes:
        raise LabError(f"no node n{node} in lab {lab.name!r} (nodes: {sorted(lab.nodes)})")


# ---------------------------------------------------------------- convergence


def routes(ns: str, family: int = 4) -> list[dict[str, Any]]:
    res = run(["ip", "-n", ns, f"-{family}", "-j", "route", "show"], check=False)
    try:
        out: list[dict[str, Any]] = json.loads(res.stdout or "[]")
    except ValueError:
        return []
    return out


def wireguard_table(lab: LabState, node: int) -> list[dict[str, Any]]:
    """What the node's WireGuard devices route: their peers' allowed IPs, as route-like rows
    (``wg show all allowed-ips``).  A wireguard node's kernel routes say nothing per peer
    (one route for the whole Network, and the unreachable fallback under it)."""
    res = run(daemon.wg_command(lab, node, ["show", "all", "allowed-ips"]), check=False)
    rows = []
    for line in res.stdout.splitlines():
        for cidr in line.split()[2:]:
            rows.append({"dst": cidr, "dev": line.split()[0]})
    return rows


def covered(subnet: IPv4Network | IPv6Network, table: list[dict[str, Any]]) -> bool:
    for r in table:
        dst = r.get("dst", "")
        if dst in ("", "default") or r.get("dev") == "cni0" or r.get("type") == "unreachable":
            continue
        try:
            net = ip_network(dst if "/" in dst else f"{dst}/{subnet.max_prefixlen}")
        except ValueError:
            continue
        if net.version == subnet.version and subnet.subnet_of(net):  # type: ignore[arg-type]
            return True
    return False


def lease_subnets(lab: LabState) -> list[IPv4Network]:
    out = []
    for key in etcd.leases(lab.names):
        part = key.rsplit("/", 1)[-1].split("&")[0]
        addr, _, plen = part.partition("-")
        out.append(IPv4Network(f"{addr}/{plen}"))
    return out


def lease_subnets6(lab: LabState) -> list[IPv6Network]:
    """The IPv6 halves of the lease keys (``a.b.c.d-len&<ipv6>-len``), for dual-stack leases."""
    out = []
    for key in etcd.leases(lab.names):
        _, amp, part = key.rsplit("/", 1)[-1].partition("&")
        if amp:
            addr, _, plen = part.rpartition("-")
            out.append(IPv6Network(f"{addr}/{plen}"))
    return out


def own_subnet(lab: LabState, node: int) -> IPv4Network | None:
    env = read_subnet_env(lab.subnet_file(node))
    return IPv4Network(env["FLANNEL_SUBNET"], strict=False) if "FLANNEL_SUBNET" in env else None


def own_subnet6(lab: LabState, node: int) -> IPv6Network | None:
    env = read_subnet_env(lab.subnet_file(node))
    sub = env.get("FLANNEL_IPV6_SUBNET")
    return IPv6Network(sub, strict=False) if sub else None


def missing_routes(lab: LabState) -> dict[int, list[IPv4Network | IPv6Network]]:
    subnets = lease_subnets(lab)
    subnets6 = lease_subnets6(lab) if lab.dual_stack else []
    out: dict[int, list[IPv4Network | IPv6Network]] = {}
    for i, node in lab.nodes.items():
        if node.bare:
            continue
        mine = own_subnet(lab, i)
        wg = wireguard_table(lab, i) if lab.backend == "wireguard" else None
        table = wg if wg is not None else routes(lab.names.node_ns(i))
        gaps: list[IPv4Network | IPv6Network] = [
            s for s in subnets if s != mine and not covered(s, table)
        ]
        if subnets6:
            mine6 = own_subnet6(lab, i)
            table6 = wg if wg is not None else routes(lab.names.node_ns(i), 6)
            gaps += [s for s in subnets6 if s != mine6 and not covered(s, table6)]
        if gaps:
            out[i] = gaps
    return out


def wait_converged(lab: LabState, timeout: float) -> float:
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        gaps = missing_routes(lab)
        if not gaps:
            took = time.monotonic() - t0
            progress(f"routes converged on all nodes ({took:.2f}s)")
            return took
        if time.monotonic() >= deadline:
            detail = "; ".join(f"n{i} lacks {', '.join(map(str, s))}" for i, s in gaps.items())
            raise LabError(f"routes not converged after {timeout}s: {detail}")
        time.sleep(0.05)


# ---------------------------------------------------------------- status


def status(name: str) -> str:
    lab = load(name)
    names = lab.names
    head = f"lab {name}: backend {lab.backend}, network {lab.network}, attach {lab.attach}"
    if lab.dual_stack:
        head += f", dual stack (IPv6 network {lab.ipv6_network or 'none: IPv4-only config'})"
    lines = [head]
    eref = ProcRef.load(lab.dir / "etcd.pid")
    etcd_state = "running" if eref and alive(eref) else "DOWN"
    lines.append(f"etcd {names.etcd_endpoint} in {names.underlay_ns}: {etcd_state}")
    lines.append("")
    if lab.dual_stack:
        lines.append(f"{'node':<6}{'namespace':<14}{'underlay':<14}{'underlay IPv6':<18}"
                     f"{'flanneld':<16}{'subnet (mtu)':<22}IPv6 subnet")
    else:
        lines.append(f"{'node':<6}{'namespace':<14}{'underlay':<14}{'flanneld':<16}subnet (mtu)")
    for i in sorted(lab.nodes):
        ref = daemon.running(lab, i)
        fl = "bare" if lab.nodes[i].bare else (f"pid {ref.pid}" if ref else "not running")
        env = read_subnet_env(lab.subnet_file(i))
        sub = f"{env.get('FLANNEL_SUBNET', '-')} ({env.get('FLANNEL_MTU', '-')})"
        ip = str(node_address(i).ip)
        if lab.dual_stack:
            ip6 = str(node_address6(i).ip)
            sub6 = env.get("FLANNEL_IPV6_SUBNET", "-")
            lines.append(f"n{i:<5}{names.node_ns(i):<14}{ip:<14}{ip6:<18}{fl:<16}{sub:<22}{sub6}")
        else:
            lines.append(f"n{i:<5}{names.node_ns(i):<14}{ip:<14}{fl:<16}{sub}")
    lines.append("")
    lines.append("leases (etcd /coreos.com/network/subnets):")
    try:
        for key, value in sorted(etcd.leases(names).items()):
            lines.append(f"  {key.rsplit('/', 1)[-1]:<16} {value}")
    except CommandError as exc:
        lines.append(f"  (etcd unreachable: {exc})")
    lines.append("")
    lines.append("pods:")
    for pod in lab.pods():
        now = pods.pod_address(pod) or "(no address)"
        if lab.dual_stack:
            now = f"{now:<18} {pods.pod_address6(pod) or '(no IPv6 address)'}"
        lines.append(f"  {pod.name:<14} n{pod.node}  {now}")
    return "\n".join(lines)


def pod_list(name: str) -> list[PodState]:
    return load(name).pods()


# ---------------------------------------------------------------- down


def down(name: str) -> int:
    """Remove every namespace, process and file of lab ``name``; returns #namespaces removed."""
    names = LabNames(name)
    sdir = state_dir(name)
    recorded = [ProcRef.load(p) for p in sdir.glob("**/*.pid")] if sdir.exists() else []
    refs = [r for r in recorded if r is not None]
    if refs:
        stop(refs)
    spaces = [ns for ns in underlay.netns_list() if names.owns_ns(ns)]
    # Leftovers: anything (CNI plugins, pings, shells) still inside a lab namespace.
    left = [r for ns in spaces for r in ns_pids(ns)]
    for r in left:
        signal_proc(r, signal.SIGTERM)
    for r in wait_dead(left, 3.0):
        signal_proc(r, signal.SIGKILL)
    wait_dead(left, 2.0)

    def order(ns: str) -> int:  # pods, then nodes, then the underlay
        return 0 if "p" in ns.rsplit("-", 1)[-1] else (2 if ns.endswith("-ul") else 1)

    for ns in sorted(spaces, key=order):
        underlay.delete_netns(ns)
    for link in underlay.root_links(names):
        run(["ip", "link", "del", link], check=False)
    shutil.rmtree(sdir, ignore_errors=True)
    if spaces or refs:
        progress(f"lab {name!r} down: {len(spaces)} namespaces, {len(refs)} recorded processes")
    return len(spaces)
