"""Fixtures of the kube tier: one real kube-apiserver (+ its etcd) per session, inside a network
namespace ``kapi-<random>``; clients of ours run inside that namespace (kubekit.ClientProxy)."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_server import KubeApiServer, Netns, kube_tools_missing
from kubekit import DEPLOY, ClientProxy, node_manifest, render


def _require() -> None:
    if os.geteuid() != 0:
        pytest.skip("kube tests need root (network namespaces)")
    missing = kube_tools_missing()
    if missing:
        # A missing build must turn the tier red, not skip it quietly (bootstrap builds it).
        pytest.fail(missing)


@pytest.fixture(scope="session")
def kube_netns() -> Iterator[str]:
    """A namespace of the session, loopback up; deleted with whatever still runs in it."""
    _require()
    ns = Netns.create("kapi")
    try:
        yield ns.name
    finally:
        ns.delete()


@pytest.fixture(scope="session")
def kube_apiserver(kube_netns: str) -> Iterator[KubeApiServer]:
    """etcd + kube-apiserver in ``kube_netns`` at https://127.0.0.1:<port> (inside it)."""
    server = KubeApiServer(netns=kube_netns, name="session")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def flannel_rbac(kube_apiserver: KubeApiServer) -> list[dict[str, Any]]:
    """deploy/base's Namespace, ServiceAccount, ClusterRole and ClusterRoleBinding, applied."""
    wanted = {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding"}
    objs = [o for o in render(DEPLOY / "base", kube_apiserver) if o["kind"] in wanted]
    kube_apiserver.apply({"apiVersion": "v1", "kind": "List", "items": objs})
    assert json.loads(kube_apiserver.kubectl("get", "clusterrole", "flannel", "-o", "json").stdout)
    return objs


@pytest.fixture
def kube_client(kube_apiserver: KubeApiServer) -> Iterator[Callable[..., ClientProxy]]:
    """``open(spec=None, kubeconfig=None, env=None)``: a ClientProxy (admin kubeconfig by default);
    every one opened is closed after the test."""
    opened: list[ClientProxy] = []

    def open_(spec: dict[str, Any] | None = None, kubeconfig: Path | None = None,
              env: dict[str, str] | None = None, netns: str | None = None) -> ClientProxy:
        if spec is None:
            spec = {"kind": "kubeconfig", "path": str(kubeconfig or kube_apiserver.admin_kubeconfig)}
        proxy = ClientProxy(kube_apiserver, spec, env, netns)
        opened.append(proxy)
        return proxy

    try:
        yield open_
    finally:
        for proxy in opened:
            proxy.close()


@pytest.fixture
def kube_nodes(kube_apiserver: KubeApiServer) -> Iterator[Callable[..., str]]:
    """``make(pod_cidr, annotations=None, prefix="n")``: a Node created with ``kubectl create``
    (unique name; no annotations at all unless given); all deleted after the test."""
    made: list[str] = []

    def make(pod_cidr: str, annotations: dict[str, str] | None = None, prefix: str = "n") -> str:
        name = f"{prefix}-{secrets.token_hex(3)}"
        kube_apiserver.kubectl("create", "-f", "-", input=json.dumps(node_manifest(name, pod_cidr, annotations)))
        made.append(name)
        return name

    try:
        yield make
    finally:
        if made:
            kube_apiserver.kubectl("delete", "node", "--ignore-not-found", "--wait=false", *made,
                                   check=False)
