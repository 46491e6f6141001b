"""deploy/: every kustomization renders with kubectl 1.20's kustomize, the real apiserver accepts
the result (server-side dry run), and the rendered objects say what docs/kube.md promises."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_server import KubeApiServer
from kubekit import DEPLOY, render

from flanneld.cni.conflist import render_conflist
from flanneld.config import build_config, build_parser, normalize_argv
from flanneld.netconfig import parse_network_config, unsupported_reason

pytestmark = pytest.mark.kube

KUSTOMIZATIONS = ["base", "overlays/host-gw", "overlays/wireguard", "overlays/etcd"]
IMAGE = "localhost/flanneld-py:0.1.0"
KUBE_RULES = {("", "pods", "get"), ("", "nodes", "get"), ("", "nodes", "list"), ("", "nodes", "watch"),
              ("", "nodes/status", "patch")}


@pytest.fixture(scope="module")
def rendered(kube_apiserver: KubeApiServer) -> dict[str, list[dict[str, Any]]]:
    return {k: render(DEPLOY / k, kube_apiserver) for k in KUSTOMIZATIONS}


def by_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def one(objs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in by_kind(objs, kind) if name is None or o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} objects"
    return found[0]


def pod_spec(objs: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = one(objs, "DaemonSet", "kube-flannel-ds")["spec"]["template"]["spec"]
    return spec


def container(objs: list[dict[str, Any]], name: str = "kube-flannel") -> dict[str, Any]:
    spec = pod_spec(objs)
    found: list[dict[str, Any]] = [c for c in spec["containers"] + spec.get("initContainers", [])
                                   if c["name"] == name]
    assert len(found) == 1
    return found[0]


def net_conf(objs: list[dict[str, Any]]) -> dict[str, Any]:
    cm = one(objs, "ConfigMap", "kube-flannel-cfg")
    conf: dict[str, Any] = json.loads(cm["data"]["net-conf.json"])
    return conf


def rules(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    out = set()
    for rule in role["rules"]:
        assert set(rule) == {"apiGroups", "resources", "verbs"}, rule  # no resourceNames, no URLs
        out |= {(g, r, v) for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    return out


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_renders_and_the_apiserver_accepts_it(kube_apiserver: KubeApiServer, flannel_rbac: list[dict[str, Any]],
                                              rendered: dict[str, list[dict[str, Any]]], kustomization: str,
                                              tmp_path: Path) -> None:
    objs = rendered[kustomization]
    assert {o["metadata"]["name"] for o in by_kind(objs, "DaemonSet")} == {"kube-flannel-ds"}
    # Validated and admitted (schema, defaulting, NamespaceLifecycle, ServiceAccount, Priority)
    # without being stored.  The namespace exists already (flannel_rbac), as after a first apply.
    out = kube_apiserver.kubectl("apply", "--dry-run=server", "-k", str(DEPLOY / kustomization)).stdout
    assert "daemonset.apps/kube-flannel-ds created (server dry run)" in out, out
    assert "configmap/kube-flannel-cfg created (server dry run)" in out, out
    assert kube_apiserver.kubectl("get", "daemonset", "-n", "kube-flannel", "-o", "name").stdout == ""


def test_base_rbac_is_exactly_what_the_subnet_manager_calls(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["base"]
    assert rules(one(objs, "ClusterRole", "flannel")) == KUBE_RULES
    crb = one(objs, "ClusterRoleBinding", "flannel")
    assert crb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"}
    assert crb["subjects"] == [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]
    sa = one(objs, "ServiceAccount", "flannel")
    assert sa["metadata"]["namespace"] == "kube-flannel"
    assert pod_spec(objs)["serviceAccountName"] == "flannel"
    ns = one(objs, "Namespace", "kube-flannel")
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "privileged"


def test_base_daemonset(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["base"]
    spec = pod_spec(objs)
    assert spec["hostNetwork"] is True
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]  # every taint, every effect
    main = container(objs)
    assert main["args"][:2] == ["--ip-masq", "--kube-subnet-mgr"]
    sc = main["securityContext"]
    assert sc["privileged"] is False and sorted(sc["capabilities"]["add"]) == ["NET_ADMIN", "NET_RAW"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"] for e in main["env"]}
    assert env == {"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}
    # Probes: on the healthz listener the daemon is told to open, node loopback (hostNetwork).
    args = dict(a.split("=", 1) for a in main["args"] if "=" in a)
    port = int(args["--healthz-port"])
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = main[probe]["httpGet"]
        assert (get["path"], get["port"], get["host"]) == (path, port, args["--healthz-ip"])
    assert args["--healthz-ip"] == "127.0.0.1"
    # hostPaths.
    vols = {v["name"]: v for v in spec["volumes"]}
    host = {n: (v["hostPath"]["path"], v["hostPath"].get("type")) for n, v in vols.items() if "hostPath" in v}
    assert host == {
        "run": ("/run/flannel", "DirectoryOrCreate"),
        "cni-plugin": ("/opt/cni/bin", "DirectoryOrCreate"),
        "cni": ("/etc/cni/net.d", "DirectoryOrCreate"),
        "host-usr": ("/usr", "Directory"),
        "xtables-lock": ("/run/xtables.lock", "FileOrCreate"),
    }
    assert vols["flannel-cfg"]["configMap"]["name"] == "kube-flannel-cfg"
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert mounts == {"/run/flannel": "run", "/etc/kube-flannel/": "flannel-cfg", "/run/xtables.lock": "xtables-lock"}
    # Init containers: the plugin (host's /usr read-only, to find its python3) and the conflist.
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin", "install-cni"]
    plugin = container(objs, "install-cni-plugin")
    assert plugin["command"] == ["/opt/flanneld-py/install-cni-plugin.sh"]
    assert {m["mountPath"]: m.get("readOnly", False) for m in plugin["volumeMounts"]} == {
        "/opt/cni/bin": False, "/host/usr": True}
    conf = container(objs, "install-cni")
    assert "/etc/cni/net.d/10-flannel.conflist" in " ".join(conf["args"])
    # One image, named by the kustomization's images: entry.
    assert {c["image"] for c in spec["containers"] + spec["initContainers"]} == {IMAGE}


def test_base_configmap_matches_the_daemon(rendered: dict[str, list[dict[str, Any]]]) -> None:
    cm = one(rendered["base"], "ConfigMap", "kube-flannel-cfg")
    # The conflist is the one `flanneld --cni-conf-file` writes (kube-flannel's, our plugin).
    assert json.loads(cm["data"]["cni-conf.json"]) == json.loads(render_conflist())
    conf = parse_network_config(cm["data"]["net-conf.json"])
    assert str(conf.network) == "10.244.0.0/16" and conf.backend.type == "vxlan"
    assert unsupported_reason(conf) is None


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_daemon_accepts_the_flags(rendered: dict[str, list[dict[str, Any]]], kustomization: str) -> None:
    objs = rendered[kustomization]
    main = container(objs)
    argv = list(main["args"])
    build_parser().parse_args(list(normalize_argv(argv).argv))  # every flag known (exits 2 if not)
    env = {"FLANNELD_ETCD_ENDPOINTS": one(objs, "ConfigMap", "kube-flannel-etcd")["data"]["etcd-endpoints"]} \
        if kustomization.endswith("etcd") else {}
    config = build_config(argv, env)  # ConfigError (exit 2) would fail the test
    assert config.ignored_flags == ()
    assert config.kube_subnet_mgr is ("--kube-subnet-mgr" in argv)


def test_overlays_change_only_what_they_say(rendered: dict[str, list[dict[str, Any]]]) -> None:
    base = rendered["base"]
    hostgw = rendered["overlays/host-gw"]
    assert net_conf(hostgw)["Backend"] == {"Type": "host-gw"}
    assert [o for o in hostgw if o["kind"] != "ConfigMap"] == [o for o in base if o["kind"] != "ConfigMap"]

    wg = rendered["overlays/wireguard"]
    assert net_conf(wg)["Backend"]["Type"] == "wireguard"
    from flanneld.backends.wireguard.options import parse_options

    options = parse_network_config(json.dumps(net_conf(wg))).backend.options
    assert parse_options(options).keepalive == 25
    assert container(wg)["args"] == [*container(base)["args"], "--wireguard-driver=kernel"]
    assert rules(one(wg, "ClusterRole", "flannel")) == KUBE_RULES


def test_etcd_overlay(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objs = rendered["overlays/etcd"]
    assert by_kind(objs, "ClusterRole") == [] and by_kind(objs, "ClusterRoleBinding") == []
    spec = pod_spec(objs)
    assert spec["automountServiceAccountToken"] is False
    main = container(objs)
    assert "--kube-subnet-mgr" not in main["args"] and "--ip-masq" in main["args"]
    env = {e["name"]: e["valueFrom"] for e in main["env"]}
    assert env["FLANNELD_ETCD_ENDPOINTS"] == {"configMapKeyRef": {"name": "kube-flannel-etcd",
                                                                  "key": "etcd-endpoints"}}
    endpoints = one(objs, "ConfigMap", "kube-flannel-etcd")["data"]["etcd-endpoints"]
    cfg = build_config(main["args"], {"FLANNELD_ETCD_ENDPOINTS": endpoints})
    assert cfg.etcd_endpoints.split(",") == endpoints.split(",") and len(endpoints.split(",")) == 3
    # The rest of the DaemonSet is the base's.
    assert spec["hostNetwork"] is True and spec["tolerations"] == [{"operator": "Exists"}]
    assert [c["name"] for c in spec["initContainers"]] == ["install-cni-plugin", "install-cni"]


@pytest.fixture
def applied_base(kube_apiserver: KubeApiServer, flannel_rbac: list[dict[str, Any]]) -> Iterator[None]:
    """deploy/base really applied (no node runs it: no kubelet); removed after the test."""
    kube_apiserver.kubectl("apply", "-k", str(DEPLOY / "base"))
    try:
        yield
    finally:
        kube_apiserver.kubectl("delete", "daemonset,configmap", "-n", "kube-flannel", "--ignore-not-found",
                               "kube-flannel-ds", "kube-flannel-cfg", check=False)


def test_applied_daemonset_as_the_apiserver_stored_it(kube_apiserver: KubeApiServer, applied_base: None) -> None:
    ds = kube_apiserver.kubectl_json("get", "daemonset", "-n", "kube-flannel", "kube-flannel-ds")
    spec = ds["spec"]["template"]["spec"]  # type: ignore[index]
    assert spec["hostNetwork"] is True and spec["priorityClassName"] == "system-node-critical"
    # The priority class it names exists in every cluster (the apiserver creates it).
    pc = kube_apiserver.kubectl_json("get", "priorityclass", "system-node-critical")
    assert pc["value"] == 2000001000
    assert spec["containers"][0]["livenessProbe"]["httpGet"]["scheme"] == "HTTP"  # defaulted
