"""``netns-lab/lab``: command line of the netns lab (exit 0 ok, 1 failure, 2 usage error)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from collections.abc import Sequence

from netnslab import daemon, lab, pingmatrix, underlay
from netnslab.names import (
    DEFAULT_IPV6_NETWORK,
    DEFAULT_NAME,
    LabNames,
    NameError_,
    check_name,
    parse_target,
)
from netnslab.proc import CommandError, nsexec, progress
from netnslab.state import VENV_BIN

EPILOG = """examples:
  netns-lab/lab up --nodes 3 --backend vxlan
  netns-lab/lab ping-all
  netns-lab/lab exec n1 -- ip route
  netns-lab/lab exec n2p1 -- ping -c1 10.244.5.2
  netns-lab/lab --name flabt1 up --nodes 2 --backend host-gw
  netns-lab/lab up --dual-stack --backend vxlan     IPv4 + IPv6 (ping-all checks both)
  netns-lab/lab up --backend wireguard; netns-lab/lab wg n1 -- show
  netns-lab/lab down
"""


class UsageError(Exception):
    pass


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--name",
        default=argparse.SUPPRESS,
        help=f"lab name = prefix of every namespace/link (default {DEFAULT_NAME}, env FLAB_NAME)",
    )
    p = argparse.ArgumentParser(
        prog="lab",
        description="A multi-node flannel cluster built from network namespaces on this machine.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common],
    )
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND")

    def add(name: str, help_: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=help_, parents=[common])

    up = add("up", "create underlay, etcd, N nodes running flanneld, K pods per node")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--backend", choices=lab.BACKENDS, default="vxlan")
    up.add_argument("--pods-per-node", type=int, default=2)
    up.add_argument("--network", default="10.244.0.0/16")
    up.add_argument("--attach", choices=("auto", "cni", "bridge"), default="auto",
                    help="pods via our CNI plugin, or plain bridge+veth (auto: cni if it works)")
    up.add_argument("--config", default="", help="raw network config JSON for etcd")
    up.add_argument("--no-flanneld", action="store_true",
                    help="plumbing only: no daemon, synthetic subnet.env per node")
    up.add_argument("--flanneld-arg", action="append", default=[], metavar="ARG",
                    help="extra flanneld argument (repeatable), e.g. --flanneld-arg=--ip-masq")
    up.add_argument("--ip-masq", action="store_true",
                    help="run flanneld with --ip-masq (as kube-flannel does): pod IPs kept across nodes")
    up.add_argument("--timeout", type=float, default=30.0)
    up.add_argument("--keep-on-failure", action="store_true")
    up.add_argument("--dual-stack", action="store_true",
                    help="IPv6 too: underlay 2001:db8:18::<i>/64, EnableIPv6 + IPv6Network in the "
                         "config, dual-stack pods (vxlan, host-gw, wireguard)")
    up.add_argument("--ipv6-network", default=DEFAULT_IPV6_NETWORK,
                    help=f"IPv6Network of a --dual-stack config (default {DEFAULT_IPV6_NETWORK})")
    # Hidden: a dual-stack underlay with an IPv4-only config (checks the lab without daemon IPv6).
    up.add_argument("--no-ipv6-config", action="store_true", help=argparse.SUPPRESS)

    add("down", "remove every namespace, link, process and file of the lab")
    add("status", "nodes, flanneld pids, subnets, leases, pod addresses")

    pa = add("ping-all", "every pod pings every other pod; matrix; exit 0 iff all reached")
    pa.add_argument("--timeout", type=float, default=1.0, help="per ping, seconds")
    pa.add_argument("--tries", type=int, default=2)

    ex = add("exec", "run a command in the underlay (ul), a node (n1) or a pod (n1p2)")
    ex.add_argument("target")
    ex.add_argument("command", nargs=argparse.REMAINDER)

    an = add("add-node", "a new node joins (flanneld + pods)")
    an.add_argument("--pods-per-node", type=int, default=-1, help="default: as in lab up")
    an.add_argument("--timeout", type=float, default=30.0)

    kf = add("kill-flanneld", "signal a node's flanneld (default SIGKILL)")
    kf.add_argument("node")
    kf.add_argument("--signal", default="KILL")
    sf = add("start-flanneld", "start a node's flanneld again")
    sf.add_argument("node")
    sf.add_argument("--flanneld-arg", action="append", default=[], metavar="ARG",
                    help="extra flanneld argument for this run only (repeatable)")

    es = add("etcd-stop", "stop the lab's etcd (data kept): flanneld loses its store")
    es.add_argument("--signal", default="TERM")
    add("etcd-start", "start the lab's etcd again on the same data (waits until healthy)")

    lg = add("logs", "show a node's flanneld log (or etcd's: logs etcd)")
    lg.add_argument("node")
    lg.add_argument("-f", "--follow", action="store_true")
    lg.add_argument("-n", "--lines", type=int, default=100)

    wg = add("wg", "run wg on a node (its namespace and its own /var/run/wireguard): "
                   "lab wg n1 -- show")
    wg.add_argument("node")
    wg.add_argument("args", nargs=argparse.REMAINDER, help="wg's arguments (default: show)")

    ct = add("ctl", "run flannelctl against the lab's etcd: lab ctl -- subnets")
    ct.add_argument("args", nargs=argparse.REMAINDER)

    demo = add("demo", "up 3 nodes (vxlan unless --backend), ping-all, flannelctl subnets; how "
                       "to explore and stop")
    demo.add_argument("--backend", choices=lab.BACKENDS, default="vxlan")
    return p


def _node(ref: str, names: LabNames) -> int:
    t = parse_target(ref, names)
    if t.node is None or t.pod is not None:
        raise UsageError(f"{ref!r} is not a node (use n<i>)")
    return t.node


def _ping_all(name: str, timeout: float, tries: int) -> int:
    plist = lab.pod_list(name)
    if len(plist) < 2:
        print("fewer than two pods: nothing to ping")
        return 1
    st = lab.load(name)
    if not (st.dual_stack and st.ipv6_network):
        progress(f"pinging {len(plist) * (len(plist) - 1)} pod pairs")
        results = pingmatrix.ping_all(plist, timeout, tries)
        print(pingmatrix.render(plist, results, name))
        return 0 if all(r.ok for r in results) else 1
    progress(f"pinging {len(plist) * (len(plist) - 1)} pod pairs over IPv4 and IPv6")
    summary, ok = [], True
    for family in (4, 6):
        results = pingmatrix.ping_all(plist, timeout, tries, family=family)
        print(pingmatrix.render(plist, results, name, family))
        print()
        good = sum(r.ok for r in results)
        summary.append(f"IPv{family} {good}/{len(results)}")
        ok = ok and good == len(results)
    print(f"dual stack: {', '.join(summary)} pod pairs reachable")
    return 0 if ok else 1


def _ctl(name: str, args: Sequence[str]) -> int:
    names = LabNames(name)
    args = list(args[1:] if args and args[0] == "--" else args)
    cmd = [str(VENV_BIN / "flannelctl"), "--etcd-endpoints", names.etcd_endpoint, *args]
    return subprocess.run(nsexec(names.underlay_ns, cmd), check=False).returncode


def _demo(name: str, backend: str = "vxlan") -> int:
    if lab.exists(name):
        progress(f"lab {name!r} exists: tearing it down first")
        lab.down(name)
    lab.up(name, lab.UpOptions(nodes=3, backend=backend))
    print(lab.status(name))
    print()
    rc = _ping_all(name, 1.0, 2)
    print()
    print("$ flannelctl subnets")
    sys.stdout.flush()
    _ctl(name, ["subnets"])
    nflag = "" if name == DEFAULT_NAME else f" --name {name}"
    plist = lab.pod_list(name)
    far = plist[-1].address.split("/")[0] if plist else "<pod address>"
    print(
        f"""
Explore:
  netns-lab/lab{nflag} status                    nodes, leases, pod addresses
  netns-lab/lab{nflag} exec n1 -- ip route       routes flanneld programmed on node 1
  {_demo_fabric_line(backend, nflag)}
  netns-lab/lab{nflag} exec n1p1 -- ping -c3 {far}
  netns-lab/lab{nflag} add-node                  a 4th node joins
  netns-lab/lab{nflag} kill-flanneld n2; netns-lab/lab{nflag} start-flanneld n2
  netns-lab/lab{nflag} logs n1
  netns-lab/lab{nflag} ctl -- subnets
Tear down:
  netns-lab/lab{nflag} down"""
    )
    return rc


def _demo_fabric_line(backend: str, nflag: str) -> str:
    """The demo's "look at the fabric" hint for the backend."""
    return {
        "vxlan": f"netns-lab/lab{nflag} exec n1 -- bridge fdb show dev flannel.1",
        "wireguard": f"netns-lab/lab{nflag} wg n1                     peers, handshakes, "
                     "transfer (wg show)",
        "udp": f"netns-lab/lab{nflag} exec n1 -- ip addr show flannel0",
    }.get(backend, f"netns-lab/lab{nflag} exec n1 -- ip route get 10.244.0.1")


def dispatch(a: argparse.Namespace, name: str) -> int:
    names = LabNames(name)
    if a.cmd == "up":
        opts = lab.UpOptions(
            nodes=a.nodes,
            backend=a.backend,
            pods_per_node=a.pods_per_node,
            network=a.network,
            attach=a.attach,
            flanneld=not a.no_flanneld,
            config=a.config,
            flanneld_args=(*(["--ip-masq"] if a.ip_masq else []), *a.flanneld_arg),
            timeout=a.timeout,
            dual_stack=a.dual_stack,
            ipv6_network=a.ipv6_network,
            ipv6_config=not a.no_ipv6_config,
        )
        if (a.no_ipv6_config or a.ipv6_network != DEFAULT_IPV6_NETWORK) and not a.dual_stack:
            raise UsageError("--ipv6-network / --no-ipv6-config need --dual-stack")
        if a.nodes < 1 or a.pods_per_node < 0:
            raise UsageError("--nodes must be >= 1 and --pods-per-node >= 0")
        try:
            lab.up(name, opts)
        except lab.LabExists:
            raise
        except (lab.LabError, CommandError):
            if not a.keep_on_failure:
                progress("up failed: tearing down (use --keep-on-failure to inspect)")
                lab.down(name)
            raise
        print(lab.status(name))
        return 0
    if a.cmd == "down":
        lab.down(name)
        return 0
    if a.cmd == "status":
        print(lab.status(name))
        return 0
    if a.cmd == "ping-all":
        return _ping_all(name, a.timeout, a.tries)
    if a.cmd == "exec":
        cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
        if not cmd:
            raise UsageError("exec needs a command: lab exec n1 -- ip route")
        ns = parse_target(a.target, names).ns(names)
        if ns not in underlay.netns_list():
            raise lab.LabError(f"no namespace {ns}")
        os.execvp("ip", nsexec(ns, cmd))
    if a.cmd == "add-node":
        i = lab.add_node(name, lab.UpOptions(pods_per_node=a.pods_per_node, timeout=a.timeout))
        print(f"node n{i} joined")
        return 0
    if a.cmd == "kill-flanneld":
        sig = signal.Signals[f"SIG{a.signal.upper().removeprefix('SIG')}"]
        if not lab.kill_flanneld(name, _node(a.node, names), sig):
            print(f"flanneld on {a.node} was not running", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "start-flanneld":
        ref = lab.start_flanneld(name, _node(a.node, names), extra_args=a.flanneld_arg)
        print(f"flanneld on {a.node} pid {ref.pid}")
        return 0
    if a.cmd == "etcd-stop":
        sig = signal.Signals[f"SIG{a.signal.upper().removeprefix('SIG')}"]
        if not lab.stop_etcd(name, sig):
            print("etcd was not running", file=sys.stderr)
            return 1
        return 0
    if a.cmd == "etcd-start":
        ref = lab.start_etcd(name)
        print(f"etcd pid {ref.pid}")
        return 0
    if a.cmd == "logs":
        st = lab.load(name)
        etcd_log = a.node in ("etcd", "ul")
        path = st.dir / "etcd.log" if etcd_log else daemon.log_file(st, _node(a.node, names))
        tail = ["tail", "-n", str(a.lines), *(["-F"] if a.follow else []), str(path)]
        os.execvp("tail", tail)
    if a.cmd == "wg":
        st = lab.load(name)
        node = _node(a.node, names)
        if node not in st.nodes:
            raise lab.LabError(f"no node n{node} in lab {name!r} (nodes: {sorted(st.nodes)})")
        args = list(a.args[1:] if a.args[:1] == ["--"] else a.args) or ["show"]
        os.execvp("ip", daemon.wg_command(st, node, args))
    if a.cmd == "ctl":
        return _ctl(name, a.args)
    if a.cmd == "demo":
        return _demo(name, a.backend)
    raise UsageError("a command is required (see lab --help)")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    a = parser.parse_args(argv)  # exits 2 on usage errors
    try:
        name = check_name(getattr(a, "name", None) or os.environ.get("FLAB_NAME", DEFAULT_NAME))
        if a.cmd is None:
            parser.print_usage(sys.stderr)
            raise UsageError("a command is required")
        if os.geteuid() != 0:
            raise lab.LabError("the lab needs root (network namespaces)")
        return dispatch(a, name)
    except (UsageError, NameError_) as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    except (lab.LabError, CommandError) as exc:
        print(f"lab: error: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:
        print(f"lab: unknown signal {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
