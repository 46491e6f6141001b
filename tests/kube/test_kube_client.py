"""flanneld.kube_client against the real kube-apiserver v1.20.2 (session fixture), the client
running inside the apiserver's namespace (kubekit.ClientProxy), objects made with kubectl."""

from __future__ import annotations

import copy
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_server import FLANNEL_USER, REPO, KubeApiServer, Netns, free_ports, nsexec
from kubekit import ClientProxy, RemoteError, poll

pytestmark = pytest.mark.kube

OpenClient = Callable[..., ClientProxy]
MakeNode = Callable[..., str]


def names(items: list[dict[str, Any]]) -> set[str]:
    return {i["metadata"]["name"] for i in items}


def is_event(type_: str, name: str) -> Callable[[str, dict[str, Any]], bool]:
    return lambda t, o: t == type_ and o["metadata"].get("name") == name


# -- reads and watches ----------------------------------------------------------------------------


def test_list_and_get_nodes(kube_client: OpenClient, kube_nodes: MakeNode) -> None:
    a = kube_nodes("10.244.1.0/24")
    b = kube_nodes("10.244.2.0/24")
    c = kube_client()
    items, rv = c.list_nodes()
    assert {a, b} <= names(items)
    assert rv.isdigit() and int(rv) > 0
    node = c.get_node(a)
    assert node["spec"]["podCIDR"] == "10.244.1.0/24"
    assert node["metadata"]["name"] == a and "annotations" not in node["metadata"]
    # From the watch cache (resourceVersion=0): the same nodes.
    cached, _ = c.list_nodes("0")
    assert {a, b} <= names(cached)
    with pytest.raises(RemoteError) as err:
        c.get_node("no-such-node")
    assert err.value.type == "KubeApiError" and err.value.status == 404
    assert str(err.value) == 'get nodes "no-such-node": 404 NotFound: nodes "no-such-node" not found'


def test_watch_sees_add_modify_delete(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                      kube_nodes: MakeNode) -> None:
    c = kube_client()
    _, rv = c.list_nodes()
    w = c.watch_nodes(rv)
    name = kube_nodes("10.244.3.0/24")
    added = w.until(is_event("ADDED", name))[-1][1]
    assert added["spec"]["podCIDR"] == "10.244.3.0/24"
    kube_apiserver.kubectl("annotate", "node", name, "flannel.alpha.coreos.com/public-ip=198.18.0.3")
    modified = w.until(is_event("MODIFIED", name))[-1][1]
    assert modified["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] == "198.18.0.3"
    kube_apiserver.kubectl("delete", "node", name)
    deleted = w.until(is_event("DELETED", name))[-1][1]
    assert int(w.resource_version) >= int(deleted["metadata"]["resourceVersion"]) > int(rv)
    w.close()


def test_watch_bookmark_then_server_ends_the_watch(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                                   kube_nodes: MakeNode) -> None:
    # kube-apiserver 1.20 sends a bookmark ~2 s before the watch's deadline (once its cache has
    # seen an event), then closes the stream at timeoutSeconds: the iterator ends.
    c = kube_client()
    name = kube_nodes("10.244.4.0/24")
    _, rv = c.list_nodes()
    w = c.watch_nodes(rv, timeout_seconds=4)
    kube_apiserver.kubectl("annotate", "node", name, "x=1")
    seen = w.until(lambda t, o: t == "BOOKMARK", timeout=10)
    bookmark = seen[-1][1]
    assert "name" not in bookmark["metadata"]  # a bookmark carries only a resourceVersion
    assert int(bookmark["metadata"]["resourceVersion"]) > int(rv)
    while (ev := w.next(10)) is not None:  # None: the server closed the watch at its deadline
        assert ev[0] == "BOOKMARK"
    assert int(w.resource_version) >= int(bookmark["metadata"]["resourceVersion"])


# -- writes ---------------------------------------------------------------------------------------


def test_strategic_merge_patch_of_annotations_on_a_node_without_any(kube_apiserver: KubeApiServer,
                                                                     kube_client: OpenClient,
                                                                     kube_nodes: MakeNode) -> None:
    name = kube_nodes("10.244.5.0/24")
    c = kube_client()
    assert "annotations" not in c.get_node(name)["metadata"]
    prefix = "flannel.alpha.coreos.com"
    backend_data = json.dumps({"VNI": 1, "VtepMAC": "82:1f:1b:aa:bb:cc"})
    # Through the status subresource, as Go flannel writes its annotations.
    out = c.patch_node_status(name, {"metadata": {"annotations": {
        f"{prefix}/backend-type": "vxlan", f"{prefix}/backend-data": backend_data,
        f"{prefix}/public-ip": "198.18.0.5", f"{prefix}/kube-subnet-manager": "true"}}})
    assert out["metadata"]["annotations"][f"{prefix}/backend-data"] == backend_data
    got = kube_apiserver.kubectl_json("get", "node", name)
    assert got["metadata"]["annotations"] == {  # type: ignore[index]
        f"{prefix}/backend-type": "vxlan", f"{prefix}/backend-data": backend_data,
        f"{prefix}/public-ip": "198.18.0.5", f"{prefix}/kube-subnet-manager": "true"}
    assert got["spec"]["podCIDR"] == "10.244.5.0/24"  # type: ignore[index]
    # On the node object itself: merged, and null deletes a key (strategic merge semantics).
    c.patch_node(name, {"metadata": {"annotations": {f"{prefix}/public-ip": "198.18.0.55",
                                                     f"{prefix}/backend-type": None}}})
    ann = c.get_node(name)["metadata"]["annotations"]
    assert ann[f"{prefix}/public-ip"] == "198.18.0.55" and f"{prefix}/backend-type" not in ann
    assert ann[f"{prefix}/backend-data"] == backend_data


def test_status_patch_network_unavailable_condition(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                                    kube_nodes: MakeNode) -> None:
    name = kube_nodes("10.244.6.0/24")
    c = kube_client()

    def condition(message: str) -> dict[str, Any]:
        return {"type": "NetworkUnavailable", "status": "False", "reason": "FlannelIsUp", "message": message,
                "lastTransitionTime": "2026-01-01T00:00:00Z", "lastHeartbeatTime": "2026-01-01T00:00:00Z"}

    c.patch_node_status(name, {"status": {"conditions": [condition("Flannel is running on this node")]}})
    c.patch_node_status(name, {"status": {"conditions": [condition("again")]}})
    got = kube_apiserver.kubectl_json("get", "node", name)
    conds = [x for x in got["status"]["conditions"] if x["type"] == "NetworkUnavailable"]  # type: ignore[index]
    assert len(conds) == 1  # merged by type, not appended
    assert conds[0]["status"] == "False" and conds[0]["reason"] == "FlannelIsUp"
    assert conds[0]["message"] == "again"


# -- 410 Gone, restart, keep-alive ----------------------------------------------------------------


def test_watch_from_compacted_resource_version_raises_gone(kube_apiserver: KubeApiServer,
                                                           kube_client: OpenClient, kube_nodes: MakeNode) -> None:
    name = kube_nodes("10.244.7.0/24")
    c = kube_client()
    _, old_rv = c.list_nodes()
    for i in range(3):
        kube_apiserver.kubectl("annotate", "--overwrite", "node", name, f"step={i}")
    status = json.loads(kube_apiserver.etcdctl("endpoint", "status", "-w", "json"))
    revision = status[0]["Status"]["header"]["revision"]
    kube_apiserver.etcdctl("compact", str(revision))
    # The apiserver's watch cache still holds the history; a restarted one starts from the
    # current revision, so old_rv is too old both for etcd (compacted) and for the cache.
    kube_apiserver.restart()
    with pytest.raises(RemoteError) as err:
        c.watch_nodes(old_rv).next(10)
    e = err.value
    assert e.type == "GoneError" and e.isa("KubeApiError") and e.status == 410
    assert str(e).startswith(f"watch nodes: 410 Expired: too old resource version: {old_rv} (")
    # The client's keep-alive connection died with the old server: the next call is transparent.
    assert c.get_node(name)["metadata"]["annotations"]["step"] == "2"
    items, new_rv = c.list_nodes()
    assert name in names(items) and int(new_rv) > int(old_rv)


# -- RBAC -----------------------------------------------------------------------------------------


def role_without(role: dict[str, Any], resource: str, verb: str) -> dict[str, Any]:
    edited = copy.deepcopy(role)
    rules = []
    for rule in edited["rules"]:
        if resource in rule["resources"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != verb]
            if not rule["verbs"]:
                continue
        rules.append(rule)
    edited["rules"] = rules
    return edited


@pytest.fixture
def flannel_role(kube_apiserver: KubeApiServer, flannel_rbac: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The ClusterRole from deploy/base; re-applied unchanged after the test."""
    role = next(o for o in flannel_rbac if o["kind"] == "ClusterRole")
    try:
        yield role
    finally:
        kube_apiserver.apply(role)


def test_rbac_flannel_service_account(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                      kube_nodes: MakeNode, flannel_role: dict[str, Any]) -> None:
    # A real bound token of ServiceAccount kube-flannel/flannel, issued by the apiserver's
    # TokenRequest API and signed with its service-account key (kubelet mounts the same kind).
    token = kube_apiserver.serviceaccount_token("kube-flannel", "flannel")
    cfg = kube_apiserver.kubeconfig(token=token, user="flannel")
    name = kube_nodes("10.244.8.0/24")
    c = kube_client(kubeconfig=cfg)

    # Everything the subnet manager needs is allowed.
    items, rv = c.list_nodes()
    assert name in names(items)
    assert c.get_node(name)["spec"]["podCIDR"] == "10.244.8.0/24"
    w = c.watch_nodes(rv)
    kube_apiserver.kubectl("annotate", "node", name, "seen=yes")
    w.until(is_event("MODIFIED", name))
    w.close()
    c.patch_node_status(name, {"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.8"}}})
    with pytest.raises(RemoteError) as err:
        c.get_pod("kube-flannel", "kube-flannel-ds-xxxxx")
    assert err.value.status == 404  # allowed (a 403 would say forbidden), just absent

    # Not granted: patching the node object itself (Go flannel's role has no nodes patch).
    with pytest.raises(RemoteError) as err:
        c.patch_node(name, {"metadata": {"annotations": {"x": "y"}}})
    assert err.value.status == 403
    assert f'User "{FLANNEL_USER}" cannot patch resource "nodes" in API group ""' in str(err.value)

    # Take nodes/status patch away: the status patch fails naming that permission.
    kube_apiserver.apply(role_without(flannel_role, "nodes/status", "patch"))
    patch = {"metadata": {"annotations": {"flannel.alpha.coreos.com/public-ip": "198.18.0.9"}}}

    def forbidden() -> bool:
        try:
            c.patch_node_status(name, patch)
        except RemoteError as exc:
            forbidden.err = exc  # type: ignore[attr-defined]
            return exc.status == 403
        return False

    poll(forbidden, timeout=10, what="nodes/status patch forbidden after the role change")
    e: RemoteError = forbidden.err  # type: ignore[attr-defined]
    assert e.type == "KubeApiError" and e.reason == "Forbidden"
    assert str(e) == (f'patch nodes/status "{name}": 403 Forbidden: nodes "{name}" is forbidden: User '
                      f'"{FLANNEL_USER}" cannot patch resource "nodes/status" in API group "" at the cluster scope')
    # The rest of the role still works.
    assert c.get_node(name)["metadata"]["annotations"]["flannel.alpha.coreos.com/public-ip"] == "198.18.0.8"


def test_rbac_static_token_user_is_bound_like_the_service_account(kube_apiserver: KubeApiServer,
                                                                   kube_client: OpenClient, kube_nodes: MakeNode,
                                                                   flannel_rbac: list[dict[str, Any]]) -> None:
    # The --token-auth-file user system:serviceaccount:kube-flannel:flannel is what the binding's
    # ServiceAccount subject matches (RBAC compares user names): same rights, no more.
    name = kube_nodes("10.244.9.0/24")
    c = kube_client(kubeconfig=kube_apiserver.kubeconfig(token=kube_apiserver.flannel_token))
    assert c.get_node(name)["metadata"]["name"] == name
    c.patch_node_status(name, {"metadata": {"annotations": {"a": "b"}}})
    with pytest.raises(RemoteError) as err:
        c.get_pod("kube-system", "x")
    assert err.value.status == 404
    with pytest.raises(RemoteError) as err:
        c.patch_node(name, {"metadata": {"annotations": {"a": "c"}}})
    assert err.value.status == 403 and 'cannot patch resource "nodes" in API group ""' in str(err.value)


def test_unauthenticated_token_is_401(kube_apiserver: KubeApiServer, kube_client: OpenClient) -> None:
    c = kube_client(kubeconfig=kube_apiserver.kubeconfig(token="not-a-token"))
    with pytest.raises(RemoteError) as err:
        c.list_nodes()
    assert err.value.status == 401 and err.value.reason == "Unauthorized"
    assert str(err.value).startswith("list nodes: 401 Unauthorized")


# -- configuration sources ------------------------------------------------------------------------


def test_in_cluster_config_and_token_rotation(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                              flannel_rbac: list[dict[str, Any]], tmp_path: Path) -> None:
    sa = tmp_path / "serviceaccount"
    sa.mkdir()
    (sa / "token").write_text(kube_apiserver.serviceaccount_token("kube-flannel", "flannel"))
    (sa / "ca.crt").write_bytes(kube_apiserver.ca_file.read_bytes())
    env = {"KUBERNETES_SERVICE_HOST": kube_apiserver.host, "KUBERNETES_SERVICE_PORT": str(kube_apiserver.port)}
    c = kube_client(spec={"kind": "in_cluster", "token_path": str(sa / "token"), "ca_path": str(sa / "ca.crt")},
                    env=env)
    assert c.describe.startswith(f"{kube_apiserver.url} (token file {sa / 'token'}, in-cluster")
    c.list_nodes()
    # kubelet rewrites the token file: the client sends whatever it holds now.
    (sa / "token").write_text("revoked")
    os.utime(sa / "token", ns=(1, 1))
    with pytest.raises(RemoteError) as err:
        c.list_nodes()
    assert err.value.status == 401
    (sa / "token").write_text(kube_apiserver.serviceaccount_token("kube-flannel", "flannel"))
    c.list_nodes()


@pytest.mark.parametrize("embed", [False, True], ids=["files", "data"])
def test_client_certificate_kubeconfig(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                       embed: bool) -> None:
    assert kube_apiserver.pki is not None
    cert = kube_apiserver.pki.client_cert(f"cert-admin-{secrets.token_hex(2)}", "cert-admin", ["system:masters"])
    c = kube_client(kubeconfig=kube_apiserver.kubeconfig(client_cert=cert, embed=embed))
    assert "client certificate" in c.describe
    c.list_nodes()


def test_unreachable_and_untrusted_servers(kube_apiserver: KubeApiServer, kube_client: OpenClient,
                                           tmp_path: Path) -> None:
    (port,) = free_ports(kube_apiserver.netns, 1)
    c = kube_client(spec={"kind": "url", "url": f"https://127.0.0.1:{port}"})
    with pytest.raises(RemoteError) as err:
        c.list_nodes()
    assert err.value.type == "KubeUnavailableError" and err.value.isa("StoreUnavailableError")
    assert str(err.value) == f"list nodes: apiserver https://127.0.0.1:{port} unreachable: Connection refused"
    # --kube-api-url alone verifies against the system roots: our self-signed CA is not one.
    c = kube_client(spec={"kind": "resolve", "url": kube_apiserver.url})
    with pytest.raises(RemoteError) as err:
        c.list_nodes()
    assert err.value.type == "KubeUnavailableError"
    assert str(err.value) == (f"list nodes: apiserver {kube_apiserver.url}: TLS verification failed: unable to "
                              "get local issuer certificate (verified against the system CA roots)")


# -- reaching it from lab nodes -------------------------------------------------------------------


@pytest.fixture
def mini_lab() -> Iterator[Any]:
    """netns-lab's underlay + one node namespace (no etcd, no flanneld), under a unique name."""
    sys.path.insert(0, str(REPO / "netns-lab"))
    from netnslab import underlay
    from netnslab.names import LabNames

    names = LabNames(f"kt{secrets.token_hex(2)}")
    try:
        underlay.create_underlay(names)
        underlay.create_node(names, 1)
        yield names
    finally:
        for ns in (names.node_ns(1), names.underlay_ns):
            Netns(ns).delete()


def test_apiserver_in_lab_underlay_reached_from_a_node(kube_client: OpenClient, mini_lab: Any) -> None:
    from kube_server import running_kube_apiserver

    with running_kube_apiserver(netns=mini_lab.underlay_ns, host="198.18.0.254", name="lab") as server:
        assert server.url.startswith("https://198.18.0.254:")
        version = nsexec(mini_lab.node_ns(1), ["curl", "-sf", "--cacert", str(server.ca_file),
                                               f"{server.url}/version"])
        out = subprocess.run(version, capture_output=True, text=True, check=False, timeout=30).stdout
        assert json.loads(out)["gitVersion"] == "v1.20.2"
        node_client = ClientProxy(server, {"kind": "kubeconfig", "path": str(server.admin_kubeconfig)},
                                  netns=mini_lab.node_ns(1))
        try:
            items, rv = node_client.list_nodes()
            assert items == [] and rv.isdigit()
        finally:
            node_client.close()
