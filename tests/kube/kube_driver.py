"""Runs flanneld.kube_client inside the apiserver's network namespace for the test process.

Started as ``ip netns exec NS .venv/bin/python kube_driver.py CONFIG_JSON``; then one JSON request
per stdin line, one JSON answer per stdout line:

    {"op": "call", "method": "get_node", "args": ["n1"]}  -> {"ok": <result>}
    {"op": "watch", "id": "w1", "args": [rv], "kwargs": {}} -> {"ok": null}
    {"op": "next", "id": "w1", "timeout": 10}               -> {"ok": [type, object]}
                                                               | {"end": true} | {"timeout": true}
    {"op": "rv", "id": "w1"}                                 -> {"ok": stream.resource_version}
    {"op": "close", "id": "w1"}                              -> {"ok": null}

Errors answer {"error": {"type", "mro", "str", "status", "reason", "message"}}.  CONFIG_JSON:
{"kind": "kubeconfig", "path": ...} | {"kind": "in_cluster", "token_path", "ca_path"} (with
KUBERNETES_SERVICE_HOST/PORT in the environment) | {"kind": "url", "url": ...}; plus optional
"timeout".
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

from flanneld import kube_client as kc


def _error(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "mro": [c.__name__ for c in type(exc).__mro__],
        "str": str(exc),
        "status": getattr(exc, "status", None),
        "reason": getattr(exc, "reason", None),
        "message": getattr(exc, "message", None),
    }


def make_config(spec: dict[str, Any]) -> kc.KubeConfig:
    kind = spec["kind"]
    if kind == "kubeconfig":
        return kc.load_kubeconfig(spec["path"], spec.get("context"), spec.get("server"))
    if kind == "in_cluster":
        return kc.load_in_cluster(spec["token_path"], spec["ca_path"])
    if kind == "resolve":
        return kc.resolve_config(spec.get("url"), spec.get("kubeconfig"),
                                 token_path=spec.get("token_path", kc.IN_CLUSTER_TOKEN),
                                 ca_path=spec.get("ca_path", kc.IN_CLUSTER_CA))
    if kind == "url":
        return kc.KubeConfig(server=spec["url"], source="--kube-api-url")
    raise ValueError(f"unknown config kind {kind!r}")


class Watch:
    def __init__(self, stream: kc.WatchStream) -> None:
        self.stream = stream
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        try:
            async for type_, obj in self.stream:
                await self.queue.put({"ok": [type_, obj]})
            await self.queue.put({"end": True})
        except Exception as exc:
            await self.queue.put({"error": _error(exc)})


async def main() -> None:
    spec = json.loads(sys.argv[1])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client: kc.KubeClient | None = None
    watches: dict[str, Watch] = {}

    def answer(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    try:
        client = kc.KubeClient(make_config(spec), timeout=float(spec.get("timeout", 10)))
        answer({"ok": client.config.describe()})
    except Exception as exc:
        answer({"error": _error(exc)})
        return
    try:
        while line := await reader.readline():
            req = json.loads(line)
            op = req["op"]
            try:
                if op == "call":
                    result = await getattr(client, req["method"])(*req.get("args", []), **req.get("kwargs", {}))
                    answer({"ok": result})
                elif op == "watch":
                    stream = client.watch_nodes(*req.get("args", []), **req.get("kwargs", {}))
                    watches[req["id"]] = Watch(stream)
                    answer({"ok": None})
                elif op == "next":
                    w = watches[req["id"]]
                    try:
                        answer(await asyncio.wait_for(w.queue.get(), float(req.get("timeout", 10))))
                    except TimeoutError:
                        answer({"timeout": True})
                elif op == "rv":
                    answer({"ok": watches[req["id"]].stream.resource_version})
                elif op == "close":
                    w = watches.pop(req["id"])
                    w.task.cancel()
                    await w.stream.aclose()
                    answer({"ok": None})
                else:
                    answer({"error": {"type": "ValueError", "mro": [], "str": f"unknown op {op}"}})
            except Exception as exc:
                answer({"error": _error(exc)})
    finally:
        for w in watches.values():
            w.task.cancel()
            await w.stream.aclose()
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
