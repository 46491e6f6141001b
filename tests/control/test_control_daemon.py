"""The daemon's control loop in-process against a real etcd, with a recording backend."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import urllib.request
from collections.abc import AsyncIterator
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import recording_backend
from etcd_server import EtcdServer, free_port
from polling import until

from flanneld.backends import register_backend
from flanneld.backends.base import ExternalInterface
from flanneld.config import DaemonConfig, build_config
from flanneld.daemon import Daemon
from flanneld.etcd_store import EtcdStore, parse_endpoints
from flanneld.lease import LeaseAttrs, subnets_prefix
from flanneld.subnet_env import parse_subnet_env

pytestmark = pytest.mark.etcd
register_backend("recording", "recording_backend:RecordingBackend")
EXT = ExternalInterface("eth0", 2, IPv4Address("198.18.0.1"), IPv4Address("198.18.0.1"), 1500)


async def fixed_interface(config: DaemonConfig, ipv6: bool = False) -> ExternalInterface:
    return EXT




def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except urllib.error.URLError:
        return 0  # not listening yet


async def until_status(url: str, status: int, timeout: float = 10.0) -> None:
    """Poll from a thread: the daemon's listener runs on this test's event loop."""
    deadline = time.monotonic() + timeout
    while await asyncio.to_thread(http_status, url) != status:
        if time.monotonic() > deadline:
            raise AssertionError(f"{url} never answered {status}")
        await asyncio.sleep(0.05)


class Running:
    def __init__(self, daemon: Daemon, task: asyncio.Task[int], port: int) -> None:
        self.daemon, self.task, self.port = daemon, task, port

    def status(self, path: str) -> int:
        return http_status(f"http://127.0.0.1:{self.port}{path}")


@pytest.fixture
async def running(etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path) -> AsyncIterator[Running]:
    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    await admin.put(f"{etcd_prefix}/config", json.dumps(
        {"Network": "10.9.0.0/16", "Backend": {"Type": "recording"}}).encode())
    await admin.close()
    port = free_port()
    config = build_config(
        ["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
         "--subnet-file", str(tmp_path / "subnet.env"), "--healthz-port", str(port),
         "--subnet-lease-ttl", "8", "--docker-opts-file", str(tmp_path / "docker_opts.env"),
         "--cni-conf-file", str(tmp_path / "net.d" / "10-flannel.conflist")],
        {},
    )
    store = EtcdStore(parse_endpoints(config.etcd_endpoints), timeout=2)
    recording_backend.CALLS.clear()
    daemon = Daemon(config, store, fixed_interface)
    task = asyncio.create_task(daemon.run())
    yield Running(daemon, task, port)
    daemon.stopping.set()
    assert await asyncio.wait_for(task, 10) == 0


async def test_lease_files_readiness_peers_renewal_and_loss(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    daemon = running.daemon
    await until(lambda: daemon.readiness.ready)
    assert await asyncio.to_thread(running.status, "/readyz") == 200
    assert await asyncio.to_thread(running.status, "/healthz") == 200
    lease = daemon.lease
    assert lease is not None
    env = parse_subnet_env((tmp_path / "subnet.env").read_text())
    assert env == {
        "FLANNEL_NETWORK": "10.9.0.0/16",
        "FLANNEL_SUBNET": f"{lease.subnet.network_address + 1}/24",
        "FLANNEL_MTU": "1450",
        "FLANNEL_IPMASQ": "false",
    }
    assert "--mtu=1450" in (tmp_path / "docker_opts.env").read_text()
    conflist = json.loads((tmp_path / "net.d" / "10-flannel.conflist").read_text())
    assert conflist["name"] == "cbr0"
    assert [p["type"] for p in conflist["plugins"]] == ["flannel", "portmap"]
    assert conflist["plugins"][0]["delegate"] == {"hairpinMode": True, "isDefaultGateway": True}
    # the own lease as an info series, and the subnet pool's use (counted once a second)
    assert metric(daemon, f'flannel_lease_info{{backend="recording",public_ip="198.18.0.1",'
                  f'subnet="{lease.subnet}"}}') == 1
    await until(lambda: metric(daemon, "flannel_subnets_leased") == 1, 5)
    assert metric(daemon, "flannel_subnets_capacity") == 255

    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    prefix = subnets_prefix(etcd_prefix)
    try:
        # A peer appears, one of another backend type is ignored, then the first goes away.
        await admin.put(prefix + "10.9.200.0-24",
                        LeaseAttrs(IPv4Address("198.18.0.9"), "recording").to_json().encode())
        await admin.put(prefix + "10.9.201.0-24",
                        LeaseAttrs(IPv4Address("198.18.0.10"), "vxlan").to_json().encode())
        await until(lambda: ("apply", ["10.9.200.0/24"]) in recording_backend.CALLS)
        await admin.delete(prefix + "10.9.200.0-24")
        await until(lambda: recording_backend.CALLS[-1] == ("apply", []))

        # Renewal before expiry (TTL 8 s, renewed at half of it): the key outlives its first lease.
        first_id = lease.etcd_lease_id
        await until(lambda: daemon.lease is not None and daemon.lease.etcd_lease_id != first_id, 10)
        kv = await admin.get(prefix + f"{lease.subnet.network_address}-24")
        assert kv is not None and kv.lease_id == daemon.lease.etcd_lease_id
        assert await admin.time_to_live(first_id) == -1  # superseded lease revoked

        # Own lease deleted by hand: not ready in between, re-acquired with the same subnet.
        transitions: list[bool] = []
        daemon.readiness.add_listener(lambda ready, reason: transitions.append(ready))
        await admin.delete(prefix + f"{lease.subnet.network_address}-24")
        await until(lambda: transitions[-2:] == [False, True], 10)
        assert daemon.readiness.ready
        assert daemon.lease is not None and daemon.lease.subnet == lease.subnet
        assert await admin.get(prefix + f"{lease.subnet.network_address}-24") is not None
        metrics = daemon.metrics.render().decode()
        assert 'flannel_lease_events_total{event="lose",result="ok"} 1.0' in metrics
        assert 'flannel_lease_events_total{event="renew",result="ok"}' in metrics
        assert not running.task.done()
    finally:
        await admin.close()


async def test_readyz_is_503_until_a_config_exists(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    port = free_port()
    config = build_config(["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                           "--subnet-file", str(tmp_path / "s.env"), "--healthz-port", str(port)], {})
    daemon = Daemon(config, EtcdStore(parse_endpoints(config.etcd_endpoints)), fixed_interface)
    task = asyncio.create_task(daemon.run())
    try:
        url = f"http://127.0.0.1:{port}"
        await until_status(url + "/healthz", 200)
        assert await asyncio.to_thread(http_status, url + "/readyz") == 503
        assert not (tmp_path / "s.env").exists()
        admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
        await admin.put(f"{etcd_prefix}/config", b'{"Network":"10.9.0.0/16","Backend":{"Type":"recording"}}')
        await admin.close()
        await until(lambda: daemon.readiness.ready, 15)
        assert (tmp_path / "s.env").exists()
    finally:
        daemon.stopping.set()
        assert await asyncio.wait_for(task, 10) == 0


def metric(daemon: Daemon, line_start: str) -> float | None:
    for line in daemon.metrics.render().decode().splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


async def test_hostile_keys_never_reach_the_backend_and_our_lease_is_reasserted(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    daemon = running.daemon
    await until(lambda: daemon.readiness.ready)
    lease = daemon.lease
    assert lease is not None
    own_key = subnets_prefix(etcd_prefix) + f"{lease.subnet.network_address}-24"
    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    prefix = subnets_prefix(etcd_prefix)

    def rec(ip: str) -> bytes:
        return LeaseAttrs(IPv4Address(ip), "recording").to_json().encode()

    # hostile subnets away from ours (the daemon picked its /24 at random)
    b = 159 if 59 <= lease.subnet.network_address.packed[2] <= 70 else 59
    good = f"10.9.{b + 11}.0/24"
    try:
        hostile = {
            "198.18.0.0-25": rec("198.18.0.0"),  # outside the Network: the underlay
            f"{lease.subnet.network_address}-25": rec("198.18.0.66"),  # half of our /24
            f"10.9.{b}.0-25": rec("198.18.0.59"),
            f"10.9.{b + 1}.0-24": rec("0.0.0.0"),
            f"10.9.{b + 2}.0-24": rec("255.255.255.255"),
            f"10.9.{b + 3}.0-24": rec("127.0.0.1"),
            f"10.9.{b + 4}.0-24": rec("224.0.0.1"),
        }
        for name, value in hostile.items():
            await admin.put(prefix + name, value)
        for i in range(300):
            await admin.put(prefix + f"junk-{i}", b"\x00" * 100)
        await admin.put(prefix + good.replace("/", "-"), rec("198.18.0.70"))  # one good peer
        await until(lambda: ("apply", [good]) in recording_backend.CALLS)
        for call, arg in recording_backend.CALLS:
            if call in ("apply", "repair"):
                assert isinstance(arg, list) and set(arg) <= {good}, arg
        assert metric(daemon, 'flannel_leases_rejected{reason="outside_network"}') == 1
        assert metric(daemon, 'flannel_leases_rejected{reason="wrong_prefix_length"}') == 2
        assert metric(daemon, 'flannel_leases_rejected{reason="bad_public_ip"}') == 4
        assert metric(daemon, 'flannel_leases_rejected{reason="bad_key"}') == 300
        rejection_lines = [r for r in caplog.records if r.name == "flanneld.leases"]
        assert len(rejection_lines) <= 5, [r.getMessage() for r in rejection_lines]

        # Our own key rewritten by someone else: re-asserted at once, same subnet.
        await admin.put(own_key, rec("198.18.0.99"))
        await until(lambda: metric(daemon, 'flannel_lease_events_total{event="conflict",result="ok"}') == 1)
        kv = await admin.get(own_key)
        assert kv is not None and kv.value == lease.attrs.to_json().encode()
        assert daemon.lease is not None and daemon.lease.subnet == lease.subnet
        assert kv.lease_id == daemon.lease.etcd_lease_id
        assert any("LEASE CONFLICT" in r.getMessage() for r in caplog.records)
        await until(lambda: daemon.readiness.ready)
        # Junk over our key: the same.
        await admin.put(own_key, b"{junk")
        await until(lambda: metric(daemon, 'flannel_lease_events_total{event="conflict",result="ok"}') == 2)
        kv = await admin.get(own_key)
        assert kv is not None and kv.value == lease.attrs.to_json().encode()
        assert not running.task.done()
    finally:
        await admin.close()


async def test_unwritable_subnet_file_keeps_the_daemon_running_and_retrying(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import errno

    import flanneld.daemon as daemon_module

    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    await admin.put(f"{etcd_prefix}/config", b'{"Network":"10.9.0.0/16","Backend":{"Type":"recording"}}')
    disk_full = [True]
    real_write = daemon_module.write_subnet_env

    def write(path: str, env: object) -> None:
        if disk_full[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_write(path, env)  # type: ignore[arg-type]

    monkeypatch.setattr(daemon_module, "write_subnet_env", write)
    subnet_file = tmp_path / "run" / "flannel" / "subnet.env"
    config = build_config(["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                           "--subnet-file", str(subnet_file)], {})
    daemon = Daemon(config, EtcdStore(parse_endpoints(config.etcd_endpoints)), fixed_interface)
    daemon.FILE_RETRY = 0.2
    task = asyncio.create_task(daemon.run())
    try:
        await until(lambda: daemon.readiness.subnet_file_error is not None)
        assert daemon.lease is not None and daemon.readiness.lease_held
        assert daemon.readiness.reason.startswith("subnet.env not written: ")
        assert "No space left on device" in daemon.readiness.reason
        assert metric(daemon, 'flannel_file_written{file="subnet_env"}') == 0
        await until(lambda: (metric(daemon, 'flannel_file_write_failures_total{file="subnet_env"}') or 0) >= 3)
        errors = [r for r in caplog.records if "writing state files failed" in r.getMessage()]
        assert len(errors) == 1  # one line per change of the error, not per attempt
        assert not task.done()
        disk_full[0] = False  # room again: the next retry writes it
        await until(lambda: daemon.readiness.ready)
        assert parse_subnet_env(subnet_file.read_text())["FLANNEL_NETWORK"] == "10.9.0.0/16"
        assert metric(daemon, 'flannel_file_written{file="subnet_env"}') == 1
        assert any("state files written after earlier failures" in r.getMessage() for r in caplog.records)
    finally:
        await admin.close()
        daemon.stopping.set()
        assert await asyncio.wait_for(task, 10) == 0


async def test_an_interface_that_never_appears_ends_start_up_non_zero(
    etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from flanneld.errors import ConfigError

    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    await admin.put(f"{etcd_prefix}/config", b'{"Network":"10.9.0.0/16","Backend":{"Type":"recording"}}')
    await admin.close()
    calls = [0]

    async def missing(config: DaemonConfig, ipv6: bool = False) -> ExternalInterface:
        calls[0] += 1
        raise ConfigError("no interface matches --iface nosuch0")

    config = build_config(["--etcd-endpoints", etcd_server.endpoint, "--etcd-prefix", etcd_prefix,
                           "--subnet-file", str(tmp_path / "subnet.env")], {})
    daemon = Daemon(config, EtcdStore(parse_endpoints(config.etcd_endpoints)), missing)
    daemon.IFACE_WAIT = 1.5
    with caplog.at_level(logging.INFO, logger="flanneld"):
        assert await asyncio.wait_for(daemon.run(), 20) == 1
    assert calls[0] >= 2  # it waited and retried
    messages = [r.getMessage() for r in caplog.records]
    assert any("for up to 2s" in m for m in messages), messages
    gave_up = next(i for i, m in enumerate(messages) if "gave up after 2s" in m)
    assert "nosuch0" in messages[gave_up]
    assert messages.index("flanneld stopped") > gave_up  # the error first, then "stopped"
    assert daemon.lease is None  # nothing was taken


async def test_moved_to_another_subnet_retires_the_network_and_registers_one(
    running: Running, etcd_server: EtcdServer, etcd_prefix: str, tmp_path: Path
) -> None:
    """Our etcd lease revoked and our subnet taken before we could re-create it: the keeper
    re-acquires another subnet, and the daemon retires the old network, registers one for
    the new lease and repairs it, with the squatter (on our old subnet) as a peer."""
    daemon = running.daemon
    await until(lambda: daemon.readiness.ready)
    assert daemon.lease is not None and daemon.keeper is not None and daemon.network is not None
    old = daemon.lease
    first_network = daemon.network
    prefix = subnets_prefix(etcd_prefix)
    # Hold the keeper's reaction back until the squatter holds our key (same loop: no race).
    gate = asyncio.Event()
    real_trouble = daemon.keeper.trouble
    tasks: list[asyncio.Task[None]] = []

    async def later() -> None:
        await gate.wait()
        real_trouble()

    daemon.keeper.trouble = lambda: tasks.append(asyncio.create_task(later()))  # type: ignore[method-assign]
    admin = EtcdStore(parse_endpoints(etcd_server.endpoint))
    try:
        mark = len(recording_backend.CALLS)
        await admin.revoke(old.etcd_lease_id)
        squatter = LeaseAttrs(IPv4Address("198.18.0.77"), "recording").to_json().encode()
        await admin.put(prefix + f"{old.subnet.network_address}-24", squatter)
        gate.set()
        await until(lambda: daemon.network is not first_network and daemon.readiness.ready, 15)
        new = daemon.lease
        assert new is not None and new.subnet != old.subnet
        assert daemon.network.lease is new
        calls = recording_backend.CALLS[mark:]
        retire, register = calls.index(("retire", old.subnet)), calls.index(("register", new.subnet))
        assert retire < register
        await until(lambda: ("repair", [str(old.subnet)]) in recording_backend.CALLS[mark:])
        assert daemon.network.peer_count == 1
        env = parse_subnet_env((tmp_path / "subnet.env").read_text())
        assert env["FLANNEL_SUBNET"] == f"{new.subnet.network_address + 1}/24"
    finally:
        await admin.close()
        for task in tasks:
            task.cancel()
