"""One node of the userspace WireGuard tests: a ``UserspaceDriver`` driven by JSON lines.

Run inside the node's network namespace and a mount namespace of its own with a private
directory bound over /var/run/wireguard (see ``test_wireguard_userspace.Node``).  Each line on
stdin is a command, ``{"op": ..., ...}``; each answer one line on stdout, ``{"ok": true, ...}``
or ``{"ok": false, "error": "...", "type": "..."}``.  The driver's log goes to stderr.

  ensure {ifname}            -> created, pid
  configure {ifname, config} -> (config: see ``_config``; keys in base64)
  state {ifname}             -> state (see ``_state``)
  pid {ifname}               -> pid of the wireguard-go serving ifname (or null)
  lost                       -> events: the ifnames on_lost was called with, in order
  close                      -> closes the driver (wireguard-go keeps running)
  new_driver                 -> a new driver (the old one closed first)
  stop {ifname}              -> stopped: whether a wireguard-go was terminated
  exit                       -> closes the driver and exits
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from ipaddress import ip_address, ip_network
from typing import Any

from flanneld.backends.wireguard.keys import Key
from flanneld.backends.wireguard.model import DeviceConfig, DeviceState, Endpoint, PeerConfig
from flanneld.backends.wireguard.userspace import UserspaceDriver


def _endpoint(text: str) -> Endpoint:
    host, _, port = text.rpartition(":")
    return Endpoint(ip_address(host.strip("[]")), int(port))


def _config(raw: dict[str, Any]) -> DeviceConfig:
    peers = [
        PeerConfig(
            public_key=Key.from_base64(p["public_key"]),
            endpoint=_endpoint(p["endpoint"]) if p.get("endpoint") else None,
            allowed_ips=tuple(ip_network(n) for n in p.get("allowed_ips", ())),
            keepalive=int(p.get("keepalive", 0)),
            remove=bool(p.get("remove", False)),
        )
        for p in raw.get("peers", ())
    ]
    private = raw.get("private_key")
    return DeviceConfig(
        private_key=Key.from_base64(private) if private else None,
        listen_port=raw.get("listen_port"),
        replace_peers=bool(raw.get("replace_peers", False)),
        peers=peers,
    )


def _state(state: DeviceState) -> dict[str, Any]:
    return {
        "public_key": state.public_key.base64() if state.public_key else None,
        "listen_port": state.listen_port,
        "peers": [
            {
                "public_key": p.public_key.base64(),
                "endpoint": str(p.endpoint) if p.endpoint else None,
                "allowed_ips": [str(n) for n in p.allowed_ips],
                "has_preshared_key": p.has_preshared_key,
                "keepalive": p.keepalive,
                "last_handshake": p.last_handshake,
                "rx_bytes": p.rx_bytes,
                "tx_bytes": p.tx_bytes,
            }
            for p in state.peers
        ],
    }


class Node:
    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.events: list[str] = []
        self.driver = self._new()

    def _new(self) -> UserspaceDriver:
        driver = UserspaceDriver(log_dir=self.log_dir)
        driver.on_lost(self.events.append)
        return driver

    async def handle(self, cmd: dict[str, Any]) -> dict[str, Any]:
        op = cmd["op"]
        d = self.driver
        if op == "ensure":
            created = await d.ensure_device(cmd["ifname"])
            return {"created": created, "pid": await d.device_pid(cmd["ifname"])}
        if op == "configure":
            await d.configure(cmd["ifname"], _config(cmd["config"]))
            return {}
        if op == "state":
            return {"state": _state(await d.state(cmd["ifname"]))}
        if op == "pid":
            return {"pid": await d.device_pid(cmd["ifname"])}
        if op == "lost":
            return {"events": list(self.events)}
        if op == "close":
            await d.close()
            return {}
        if op == "new_driver":
            await d.close()
            self.driver = self._new()
            return {}
        if op == "stop":
            return {"stopped": await d.stop_device(cmd["ifname"])}
        if op == "exit":
            await d.close()
            return {}
        raise ValueError(f"unknown op {op!r}")


async def main() -> None:
    logging.basicConfig(level=logging.DEBUG, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    node = Node(sys.argv[1])
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    print(json.dumps({"ok": True, "pid": os.getpid()}), flush=True)
    while line := await reader.readline():
        cmd = json.loads(line)
        try:
            answer = {"ok": True, **await node.handle(cmd)}
        except Exception as exc:
            answer = {"ok": False, "error": str(exc), "type": type(exc).__name__}
        print(json.dumps(answer), flush=True)
        if cmd["op"] == "exit":
            return
    await node.driver.close()


if __name__ == "__main__":
    asyncio.run(main())
