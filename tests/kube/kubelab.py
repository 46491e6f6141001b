"""Lab side of the kube-mode daemon tests: netns-lab's underlay, node namespaces and CNI pods,
with a real kube-apiserver (tests/kube_server.py) in the lab's underlay namespace instead of
the lab's etcd, and our flanneld in Kubernetes mode on every node.

How a node's daemon is started: netns-lab's own ``daemon.start`` (its pid and log files in the
node's state directory, so ``lab down`` kills it whatever happens), with the lab's usual flags
(its ``--etcd-endpoints`` is unused in Kubernetes mode) plus ``--kube-subnet-mgr
--kubeconfig-file --net-config-path``, and ``NODE_NAME=n<i>`` through the small ``env_extra``
hook of ``netnslab.daemon.start`` (the lab filters ``FLANNELD_*`` out of the environment and
passes nothing else).  The kubeconfig holds a real bound token of the ServiceAccount
kube-flannel/flannel (TokenRequest API), bound by deploy/base/rbac.yaml's ClusterRole: the
daemons have exactly the manifests' rights.

Names: lab ``name`` (netns-lab's naming: ``<name>-ul``, ``<name>-n<i>``, ``<name>-n<i>p<j>``);
Node objects ``n1``..``nN`` with podCIDR 10.244.<i>.0/24, as the controller manager would
assign them.  Everything is torn down on exit (the apiserver and its etcd, then ``lab down``),
also when the block fails.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "netns-lab"))
sys.path.insert(0, str(REPO / "tests"))

from kube_server import KubeApiServer  # noqa: E402
from kubekit import DEPLOY, render  # noqa: E402
from netnslab import daemon, pingmatrix, pods, underlay  # noqa: E402
from netnslab import lab as labmod  # noqa: E402
from netnslab.proc import ProcRef, alive, run  # noqa: E402
from netnslab.state import LabState, NodeState  # noqa: E402

PREFIX = "flannel.alpha.coreos.com"
NETWORK = "10.244.0.0/16"
APISERVER_HOST = "198.18.0.254"  # the underlay bridge's address: every node reaches it
DRIFT_INTERVAL = "2"


def pod_cidr(i: int) -> str:
    return f"10.244.{i}.0/24"


def node_name(i: int) -> str:
    return f"n{i}"


def go_annotations(public_ip: str, backend: str = "vxlan",
                   vtep_mac: str = "aa:bb:cc:00:00:01") -> dict[str, str]:
    """The annotations Go flanneld v0.2x writes on its node (vxlan or host-gw)."""
    data = json.dumps({"VNI": 1, "VtepMAC": vtep_mac}, separators=(",", ":")) \
        if backend == "vxlan" else "null"
    return {f"{PREFIX}/backend-type": backend, f"{PREFIX}/backend-data": data,
            f"{PREFIX}/kube-subnet-manager": "true", f"{PREFIX}/public-ip": public_ip}


def node_object(name: str, cidr: str | None, annotations: dict[str, str] | None = None
                ) -> dict[str, Any]:
    """A Node (no ``metadata.annotations`` at all when ``annotations`` is None; no podCIDR
    when ``cidr`` is None)."""
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    spec = {"podCIDR": cidr, "podCIDRs": [cidr]} if cidr else {}
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta, "spec": spec}


def net_conf(backend: str, network: str = NETWORK, **extra: object) -> str:
    return json.dumps({"Network": network, **extra, "Backend": {"Type": backend}})


class KubeLab:
    """A running kube lab: the apiserver, the nodes' namespaces, daemons, pods."""

    def __init__(self, lab: LabState, server: KubeApiServer, kubeconfig: Path,
                 netconf: Path) -> None:
        self.lab = lab
        self.name = lab.name
        self.names = lab.names
        self.server = server
        self.kubeconfig = kubeconfig
        self.netconf = netconf
        self.refs: dict[int, ProcRef] = {}
        # Faster drift repair than the daemon's default keeps tests short (None: the default).
        self.drift_interval: str | None = DRIFT_INTERVAL

    # -- the API side (admin kubectl inside the underlay namespace) ------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.server.kubectl(*args, input=input, check=check).stdout

    def create(self, *objs: dict[str, Any]) -> None:
        self.kubectl("create", "-f", "-",
                     input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objs)}))

    def node(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = json.loads(self.kubectl("get", "node", name, "-o", "json"))
        return obj

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.node(name)["metadata"].get("annotations") or {})

    def annotate(self, name: str, **values: str | None) -> None:
        """Set (or with None remove) ``<prefix>/<key>`` annotations on a node by hand (a
        merge patch, as an operator's ``kubectl annotate`` would)."""
        patch = {"metadata": {"annotations": {f"{PREFIX}/{k.replace('_', '-')}": v
                                              for k, v in values.items()}}}
        self.kubectl("patch", "node", name, "--type", "merge", "-p", json.dumps(patch))

    def condition(self, name: str, type_: str = "NetworkUnavailable") -> dict[str, Any] | None:
        for cond in self.node(name).get("status", {}).get("conditions") or []:
            if cond.get("type") == type_:
                return dict(cond)
        return None

    # -- daemons ---------------------------------------------------------------------------

    def flanneld_args(self, extra: Sequence[str] = ()) -> list[str]:
        drift = ["--drift-interval", self.drift_interval] if self.drift_interval else []
        return ["--kube-subnet-mgr", "--kubeconfig-file", str(self.kubeconfig),
                "--net-config-path", str(self.netconf), *drift, *extra]

    def add_node(self, i: int) -> None:
        """Node ``i``'s namespace on the underlay (no daemon yet); nothing if it exists."""
        if i not in self.lab.nodes:
            underlay.create_node(self.names, i)
            self.lab.node_dir(i).mkdir(parents=True, exist_ok=True)
            self.lab.nodes[i] = NodeState(index=i)
            self.lab.save()

    def start(self, i: int, extra: Sequence[str] = ()) -> ProcRef:
        """Node ``i``'s flanneld in Kubernetes mode (its namespace made first if need be)."""
        self.add_node(i)
        args = self.flanneld_args(extra)
        ref = daemon.start(self.lab, i, args, env_extra={"NODE_NAME": node_name(i)})
        self.refs[i] = ref
        return ref

    def wait_subnet_file(self, i: int, since: float, timeout: float = 30.0) -> None:
        daemon.wait_subnet_file(self.lab, i, self.refs[i], timeout, since)

    def alive(self, i: int) -> bool:
        return alive(self.refs[i])

    def log(self, i: int) -> str:
        try:
            return daemon.log_file(self.lab, i).read_text(errors="replace")
        except OSError:
            return ""

    def kill(self, i: int) -> None:
        daemon.kill(self.lab, i)

    def crash_apiserver(self) -> None:
        """kube-apiserver killed (SIGKILL; etcd keeps running): what a node sees when the
        control plane dies.  (A graceful stop waits for the daemons' watches to end, 15 s
        before kube_server kills it anyway.)"""
        proc = self.server.proc
        assert proc is not None and proc.poll() is None, "kube-apiserver is not running"
        proc.kill()
        proc.wait(timeout=10)
        self.server.proc = None

    def start_apiserver(self) -> None:
        """kube-apiserver started again on the same etcd; returns once /readyz is ok."""
        self.server._start_apiserver()
        self.server.wait_ready(60)

    # -- pods and the kernel ---------------------------------------------------------------

    def add_pods(self, i: int, count: int = 1) -> None:
        node = self.lab.nodes[i]
        for j in range(len(node.pods) + 1, len(node.pods) + count + 1):
            node.pods.append(pods.add_pod(self.lab, i, j, "cni"))
        self.lab.save()

    def routes(self, i: int) -> list[dict[str, Any]]:
        return labmod.routes(self.names.node_ns(i))

    def route_to(self, i: int, subnet: str) -> dict[str, Any] | None:
        return next((r for r in self.routes(i) if r.get("dst") == subnet), None)

    def fdb_macs(self, i: int, dev: str = "flannel.1") -> dict[str, str]:
        """lladdr -> dst of ``dev``'s fdb entries on node ``i``."""
        out = run(["bridge", "-n", self.names.node_ns(i), "-j", "fdb", "show", "dev", dev],
                  check=False).stdout
        try:
            entries = json.loads(out or "[]")
        except ValueError:
            return {}
        return {str(e["mac"]): str(e.get("dst", "")) for e in entries if e.get("dst")}

    def missing_routes(self, nodes: Sequence[int], subnets: Sequence[str]) -> dict[int, list[str]]:
        gaps: dict[int, list[str]] = {}
        for i in nodes:
            table = self.routes(i)
            mine = pod_cidr(i)
            lack = [s for s in subnets if s != mine
                    and not labmod.covered(IPv4Network(s), table)]
            if lack:
                gaps[i] = lack
        return gaps

    def ping_all(self) -> tuple[bool, str]:
        pods_ = self.lab.pods()
        results = pingmatrix.ping_all(pods_, timeout=1.0, tries=3)
        text = pingmatrix.render(pods_, results, self.name)
        return all(r.ok for r in results), text

    def dump(self) -> str:
        parts = []
        for i in sorted(self.lab.nodes):
            parts.append(f"===== {self.name} n{i} flanneld.log =====\n"
                         + "\n".join(self.log(i).splitlines()[-40:]))
        return "\n".join(parts)


def poll(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.05,
         detail: Callable[[], str] | None = None) -> float:
    """Seconds until ``check()`` held; AssertionError (with ``detail()``) after ``timeout``."""
    t0 = time.monotonic()
    while not check():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"{what}: not true after {timeout}s"
                                 + (f"\n{detail()}" if detail else ""))
        time.sleep(interval)
    return time.monotonic() - t0


def flannel_kubeconfig(server: KubeApiServer, seconds: int = 3600) -> Path:
    """deploy/base's Namespace, ServiceAccount, ClusterRole and binding applied; a kubeconfig
    with a real bound token of kube-flannel/flannel."""
    wanted = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    objs = [o for o in render(DEPLOY / "base", server) if o["kind"] in wanted]
    server.apply({"apiVersion": "v1", "kind": "List", "items": objs})
    token = server.serviceaccount_token("kube-flannel", "flannel", seconds)
    return server.kubeconfig(token=token, user="flannel")


def flannel_role(server: KubeApiServer) -> dict[str, Any]:
    return next(o for o in render(DEPLOY / "base", server) if o["kind"] == "ClusterRole")


@contextlib.contextmanager
def kube_lab(name: str, backend: str = "vxlan", network: str = NETWORK,
             **net_conf_extra: object) -> Iterator[KubeLab]:
    """The underlay with a kube-apiserver on 198.18.0.254 and the flannel RBAC applied; no
    nodes yet (``KubeLab.start`` makes a node's namespace).  ``net_conf_extra``: more fields
    of net-conf.json.  Torn down on exit."""
    labmod.down(name)  # leftovers of an earlier run under the same name
    server: KubeApiServer | None = None
    try:
        lab = LabState(name=name, backend=backend, network=network, attach="cni",
                       pods_per_node=1)
        lab.dir.mkdir(parents=True, exist_ok=True)
        lab.save()
        underlay.create_underlay(lab.names)
        server = KubeApiServer(netns=lab.names.underlay_ns, host=APISERVER_HOST, name=name)
        server.start()
        kubeconfig = flannel_kubeconfig(server)
        netconf = lab.dir / "net-conf.json"
        netconf.write_text(net_conf(backend, network, **net_conf_extra))
        yield KubeLab(lab, server, kubeconfig, netconf)
    finally:
        try:
            # The daemons first: an apiserver with watches open takes 15 s to stop (it waits
            # for them to end; kube_server kills it then).
            state = LabState.load(name)
            for i in state.nodes if state is not None else ():
                daemon.kill(state, i)
            if server is not None:
                server.cleanup()
        finally:
            labmod.down(name)


def start_nodes(kl: KubeLab, nodes: Sequence[int], wait: Sequence[int] | None = None,
                timeout: float = 30.0) -> None:
    """Start the daemons of ``nodes`` together; wait for the subnet files of ``wait``
    (default: all of them)."""
    since = time.time() - 1.0
    for i in nodes:
        kl.start(i)
    for i in nodes if wait is None else wait:
        try:
            kl.wait_subnet_file(i, since, timeout)
        except Exception as exc:
            raise AssertionError(f"{exc}\n{kl.dump()}") from None
