"""Test-side helpers of the kube tier: drive flanneld.kube_client inside the apiserver's
namespace (kube_driver.py under ``ip netns exec``) from synchronous tests, poll, make nodes."""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from kube_server import REPO, VENV_PYTHON, KubeApiServer

DRIVER = Path(__file__).with_name("kube_driver.py")
DEPLOY = REPO / "deploy"


class RemoteError(Exception):
    """An exception the client raised inside the namespace, as the driver reported it."""

    def __init__(self, info: dict[str, Any]) -> None:
        super().__init__(info.get("str", ""))
        self.type: str = info.get("type", "")
        self.mro: list[str] = info.get("mro") or []
        self.status: int | None = info.get("status")
        self.reason: str | None = info.get("reason")
        self.message: str | None = info.get("message")

    def isa(self, name: str) -> bool:
        return name in self.mro


class ClientProxy:
    """One KubeClient in a driver process inside ``server``'s namespace."""

    def __init__(self, server: KubeApiServer, spec: dict[str, Any], env: dict[str, str] | None = None,
                 netns: str | None = None) -> None:
        from kube_server import nsexec

        cmd = ["env", *(f"{k}={v}" for k, v in (env or {}).items()), str(VENV_PYTHON), str(DRIVER),
               json.dumps(spec)]
        self.proc = subprocess.Popen(nsexec(netns or server.netns, cmd), stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self._buf = b""
        self._ids = 0
        first = self._read(30.0)
        if "error" in first:
            self.close()
            raise RemoteError(first["error"])
        self.describe: str = first["ok"]

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"kube driver: no answer in {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise RuntimeError(f"kube driver exited ({self.proc.wait()}): {err[-3000:]}")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def request(self, req: dict[str, Any], timeout: float = 30.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(req) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        answer = self.request({"op": "call", "method": method, "args": list(args), "kwargs": kwargs})
        if "error" in answer:
            raise RemoteError(answer["error"])
        return answer["ok"]

    def get_node(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("get_node", name)
        return result

    def list_nodes(self, resource_version: str | None = None) -> tuple[list[dict[str, Any]], str]:
        items, rv = self.call("list_nodes", resource_version)
        return items, rv

    def patch_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("patch_node", name, patch)
        return result

    def patch_node_status(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.call("patch_node_status", name, patch)
        return result

    def get_pod(self, namespace: str, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.call("get_pod", namespace, name)
        return result

    def watch_nodes(self, resource_version: str, **kwargs: Any) -> RemoteWatch:
        self._ids += 1
        wid = f"w{self._ids}"
        answer = self.request({"op": "watch", "id": wid, "args": [resource_version], "kwargs": kwargs})
        if "error" in answer:
            raise RemoteError(answer["error"])
        return RemoteWatch(self, wid)

    def close(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()


class RemoteWatch:
    def __init__(self, client: ClientProxy, wid: str) -> None:
        self.client = client
        self.id = wid

    def next(self, timeout: float = 10.0) -> tuple[str, dict[str, Any]] | None:
        """The next event; None when the stream ended; TimeoutError if nothing came."""
        answer = self.client.request({"op": "next", "id": self.id, "timeout": timeout}, timeout + 10)
        if "error" in answer:
            raise RemoteError(answer["error"])
        if answer.get("timeout"):
            raise TimeoutError(f"watch {self.id}: no event in {timeout}s")
        if answer.get("end"):
            return None
        type_, obj = answer["ok"]
        return type_, obj

    def until(self, match: Callable[[str, dict[str, Any]], bool], timeout: float = 10.0
              ) -> list[tuple[str, dict[str, Any]]]:
        """Events up to and including the first one ``match`` accepts (AssertionError if the
        stream ends or ``timeout`` passes first)."""
        seen: list[tuple[str, dict[str, Any]]] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event in {timeout}s; saw {summary(seen)}")
            try:
                ev = self.next(left)
            except TimeoutError:
                raise AssertionError(f"no matching event in {timeout}s; saw {summary(seen)}") from None
            if ev is None:
                raise AssertionError(f"watch ended before a matching event; saw {summary(seen)}")
            seen.append(ev)
            if match(*ev):
                return seen

    @property
    def resource_version(self) -> str:
        rv: str = self.client.request({"op": "rv", "id": self.id})["ok"]
        return rv

    def close(self) -> None:
        self.client.request({"op": "close", "id": self.id})


def summary(events: Sequence[tuple[str, dict[str, Any]]]) -> list[tuple[str, str]]:
    return [(t, str((o.get("metadata") or {}).get("name", ""))) for t, o in events]


def poll(check: Callable[[], bool], timeout: float = 10.0, interval: float = 0.05,
         what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not true after {timeout}s")
        time.sleep(interval)


def node_manifest(name: str, pod_cidr: str, annotations: dict[str, str] | None = None,
                  labels: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if annotations is not None:
        meta["annotations"] = annotations
    if labels is not None:
        meta["labels"] = labels
    return {"apiVersion": "v1", "kind": "Node", "metadata": meta,
            "spec": {"podCIDR": pod_cidr, "podCIDRs": [pod_cidr]}}


def render(path: str | Path, server: KubeApiServer) -> list[dict[str, Any]]:
    """``kubectl kustomize PATH`` as a list of objects (kubectl 1.20, run inside the namespace:
    it needs no server but the kubeconfig is there)."""
    import yaml

    out = server.kubectl("kustomize", str(path)).stdout
    docs = [d for d in yaml.safe_load_all(out) if d is not None]
    # kustomize v2.0.3 renders deleted resources as {}: none may be there.
    assert all(isinstance(d, dict) and d.get("kind") for d in docs), f"{path}: object without a kind"
    return docs
