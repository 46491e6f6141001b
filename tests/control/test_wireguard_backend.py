"""The wireguard backend on an in-memory device and kernel, no root: Go's lease format, options,
the peers a lease makes (ports, families, modes), events applied one request at a time, the
repair's convergence and drift count, a device lost and made again, key conflicts, health.

The real devices (wireguard-go in namespaces) are exercised by tests/kernel and the lab.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable, Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from pathlib import Path
from typing import Any

import pytest
from polling import until

from flanneld.backends import backend_class
from flanneld.backends.base import BackendContext, ExternalInterface, StackedNetwork
from flanneld.backends.family import V4, V6
from flanneld.backends.wireguard import backend as wgbackend
from flanneld.backends.wireguard.backend import (
    FALLBACK_METRIC,
    WireguardBackend,
    WireguardNetwork,
    kick_handshakes,
)
from flanneld.backends.wireguard.keys import Key
from flanneld.backends.wireguard.model import (
    DeviceConfig,
    DeviceState,
    Endpoint,
    PeerConfig,
    PeerState,
)
from flanneld.backends.wireguard.options import parse_options
from flanneld.backends.wireguard.peers import DeviceSpec, go_private, peer_config, select_family
from flanneld.errors import ConfigError, NetworkConfigError
from flanneld.lease import Lease, LeaseAttrs, decode_lease_attrs, make_backend_data
from flanneld.lease_policy import LeasePolicy, RejectReason
from flanneld.netconfig import network_config_from_dict
from flanneld.netops import (
    AF_INET,
    Address,
    Delete,
    LinkInfo,
    Op,
    OpResult,
    Outcome,
    Replace,
    Route,
    SetLink,
    UnreachableRoute,
)

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).parent / "golden"
RFC_PRIVATE = Key.from_hex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
NETWORK = IPv4Network("10.244.0.0/16")
OWN_IP = IPv4Address("198.18.0.1")
OWN6 = IPv6Address("2001:db8:18::1")


# -- an in-memory device and kernel ------------------------------------------------------


class FakeDriver:
    """WireGuard devices as dicts, configured with the protocol's semantics."""

    name = "fake"

    def __init__(self) -> None:
        self.devices: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, DeviceConfig]] = []
        self.callbacks: list[Callable[[str], None]] = []
        self.reads = 0

    async def ensure_device(self, ifname: str) -> bool:
        if ifname in self.devices:
            return False
        self.devices[ifname] = {"private": None, "port": 0, "peers": {}}
        return True

    async def configure(self, ifname: str, config: DeviceConfig) -> None:
        await asyncio.sleep(0)
        self.requests.append((ifname, config))
        dev = self.devices[ifname]
        if config.private_key is not None:
            dev["private"] = config.private_key
        if config.listen_port is not None:
            dev["port"] = config.listen_port
        if config.replace_peers:
            dev["peers"] = {}
        for p in config.peers:
            if p.remove:
                dev["peers"].pop(p.public_key, None)
                continue
            allowed = set(p.allowed_ips)
            for other in dev["peers"].values():  # an allowed IP belongs to one peer
                other["allowed"] = [a for a in other["allowed"] if a not in allowed]
            dev["peers"][p.public_key] = {"endpoint": p.endpoint, "allowed": list(p.allowed_ips),
                                          "psk": p.preshared_key is not None,
                                          "keepalive": p.keepalive}

    async def state(self, ifname: str) -> DeviceState:
        await asyncio.sleep(0)
        self.reads += 1
        dev = self.devices[ifname]
        peers = tuple(PeerState(k, v["endpoint"], tuple(v["allowed"]), v["psk"], v["keepalive"],
                                v.get("handshake", 0.0), 0, 0) for k, v in dev["peers"].items())
        public = dev["private"].public() if dev["private"] is not None else None
        return DeviceState(public, dev["port"], peers)

    def on_lost(self, callback: Callable[[str], None]) -> None:
        self.callbacks.append(callback)

    async def close(self) -> None:
        pass

    def lose(self, ifname: str) -> None:
        """wireguard-go died and the supervisor made the device again: empty."""
        del self.devices[ifname]
        self.devices[ifname] = {"private": None, "port": 0, "peers": {}}
        for cb in self.callbacks:
            cb(ifname)

    def peers(self, ifname: str = "flannel-wg") -> dict[Key, dict[str, Any]]:
        return dict(self.devices[ifname]["peers"])


class FakeKernel:
    """The part of Netlink the wireguard backend uses: links, addresses, routes."""

    def __init__(self) -> None:
        self.links: dict[str, LinkInfo] = {}
        self.objects: dict[Any, Address | Route | UnreachableRoute] = {}

    async def link(self, name: str) -> LinkInfo | None:
        if name.startswith("flannel-wg") and name not in self.links:
            self.links[name] = LinkInfo(name, 10 + len(self.links), "", 1420, False, "wireguard")
        return self.links.get(name)

    async def apply(self, ops: list[Op]) -> list[Outcome]:
        out = []
        for op in ops:
            if isinstance(op, SetLink):
                old = self.links[op.name]
                self.links[op.name] = LinkInfo(old.name, old.index, old.mac, op.mtu or old.mtu,
                                               op.up, old.kind)
            elif isinstance(op, Replace):
                assert isinstance(op.obj, (Address, Route, UnreachableRoute))
                self.objects[op.obj.key] = op.obj
            else:
                assert isinstance(op, Delete) and isinstance(op.obj, (Address, Route, UnreachableRoute))
                self.objects.pop(op.obj.key, None)
            out.append(Outcome(op, OpResult.OK))
        return out

    async def addresses(self, ifindex: int | None = None, family: int = AF_INET) -> list[Address]:
        return [o for o in self.objects.values() if isinstance(o, Address)
                and o.family == family and (ifindex is None or o.ifindex == ifindex)]

    async def routes(self, family: int = AF_INET) -> list[Route]:
        return [o for o in self.objects.values() if isinstance(o, Route) and o.family == family]

    async def unreachable_routes(self, family: int = AF_INET) -> list[UnreachableRoute]:
        return [o for o in self.objects.values()
                if isinstance(o, UnreachableRoute) and o.family == family]

    async def close(self) -> None:
        pass


@pytest.fixture
def key_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    path = tmp_path / "flannel" / "wgkey"
    path.parent.mkdir()
    path.write_text(RFC_PRIVATE.base64())
    monkeypatch.setenv("WIREGUARD_KEY_FILE", str(path))
    yield path


def read(path: Path) -> str:
    return path.read_text()


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def overwrite(path: Path, text: str) -> None:
    path.chmod(0o600)
    path.write_text(text)


def context(backend: dict[str, Any] | None = None, *, ipv6: bool = False,
            mtu: int = 1500) -> BackendContext:
    conf: dict[str, Any] = {"Network": str(NETWORK), "Backend": {"Type": "wireguard",
                                                                 **(backend or {})}}
    if ipv6:
        conf.update(EnableIPv6=True, IPv6Network="fd10:244::/56")
    ext = ExternalInterface("eth0", 2, OWN_IP, OWN_IP, mtu,
                            address6=OWN6 if ipv6 else None, public_ipv6=OWN6 if ipv6 else None)
    return BackendContext(ext, network_config_from_dict(conf))


def make(backend: dict[str, Any] | None = None, **kw: Any,
         ) -> tuple[WireguardBackend, FakeDriver, FakeKernel]:
    driver, kernel = FakeDriver(), FakeKernel()
    be = WireguardBackend(context(backend, **kw), kernel, driver)  # type: ignore[arg-type]
    return be, driver, kernel


def peer_key(i: int) -> Key:
    return Key(bytes([i + 1]) * 32)


def peer(i: int, *, port: int | None = 51820, key: Key | None = None, ip: str | None = None,
         ipv6: bool = False, btype: str = "wireguard") -> Lease:
    subnet = IPv4Network((int(NETWORK.network_address) + (i + 2) * 256, 24))
    data: dict[str, Any] = {"PublicKey": (key or peer_key(i)).base64()}
    if port is not None:
        data["Port"] = port
    v6: dict[str, Any] = {}
    if ipv6:
        v6 = {"public_ipv6": IPv6Address(f"2001:db8:18::{i + 2:x}"),
              "backend_v6_data": make_backend_data({**data, "Port": 51821})}
    attrs = LeaseAttrs(IPv4Address(ip or f"198.18.0.{i + 2}"), btype, make_backend_data(data),
                       **v6)
    return Lease(subnet, attrs, etcd_lease_id=1,
                 ipv6_subnet=IPv6Network(f"fd10:244:0:{i + 2:x}::/64") if ipv6 else None)


async def started(be: WireguardBackend, *, ipv6: bool = False) -> tuple[Lease, Any]:
    attrs = await be.prepare()
    own = Lease(IPv4Network("10.244.1.0/24"), attrs, etcd_lease_id=1,
                ipv6_subnet=IPv6Network("fd10:244:0:1::/64") if ipv6 else None)
    network = await be.register_network(own)
    return own, network


def book(own: Lease, *peers: Lease) -> dict[IPv4Network, Lease]:
    return {own.subnet: own, **{p.subnet: p for p in peers}}


# -- the lease: Go's bytes ----------------------------------------------------------------


async def test_lease_is_byte_identical_to_go_and_the_key_file_is_reused(key_file: Path) -> None:
    be, _, _ = make()
    attrs = await be.prepare()
    assert attrs.to_json() == (GOLDEN / "lease_wireguard.json").read_text()
    await be.close()
    again, _, _ = make()
    assert (await again.prepare()).backend_data == attrs.backend_data  # same key after restart
    assert read(key_file) == RFC_PRIVATE.base64()


async def test_dual_stack_lease_has_the_v6_device_port(key_file: Path) -> None:
    be, _, _ = make(ipv6=True)
    attrs = await be.prepare()
    assert attrs.to_json() == (GOLDEN / "lease_wireguard_dual.json").read_text()


@pytest.mark.parametrize("name", ["lease_wireguard.json", "lease_wireguard_dual.json",
                                  "lease_wireguard_no_port.json"])
def test_go_wireguard_leases_round_trip(name: str) -> None:
    text = (GOLDEN / name).read_text()
    assert decode_lease_attrs(text).to_json() == text


async def test_a_missing_key_file_is_generated_0400(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "run" / "wgkey"
    monkeypatch.setenv("WIREGUARD_KEY_FILE", str(path))
    be, _, _ = make()
    attrs = await be.prepare()
    assert mode(path) == 0o400
    key = Key.from_base64(read(path))
    assert json.loads(attrs.backend_data)["PublicKey"] == key.public().base64()


async def test_a_corrupt_key_file_is_a_config_error_without_its_content(key_file: Path) -> None:
    overwrite(key_file, "not-a-key-SECRETSECRET")
    be, _, _ = make()
    with pytest.raises(ConfigError) as err:
        await be.prepare()
    assert str(key_file) in str(err.value) and "SECRET" not in str(err.value)


def test_registered_under_its_go_type_name() -> None:
    assert backend_class("wireguard") is WireguardBackend


# -- options --------------------------------------------------------------------------------


def test_options_defaults_as_go() -> None:
    opts = parse_options({})
    assert (opts.listen_port, opts.listen_port_v6, opts.mode, opts.keepalive, opts.psk) == (
        51820, 51821, "separate", 0, "")


@pytest.mark.parametrize(("options", "field"), [
    ({"Mode": "both"}, "Backend.Mode"),
    ({"mode": 4}, "Backend.Mode"),
    ({"ListenPort": 0}, "Backend.ListenPort"),
    ({"ListenPortV6": 70000}, "Backend.ListenPortV6"),
    ({"PersistentKeepaliveInterval": -1}, "Backend.PersistentKeepaliveInterval"),
    ({"PersistentKeepaliveInterval": "25s"}, "Backend.PersistentKeepaliveInterval"),
    ({"MTU": 1300}, "Backend.MTU"),
    ({"PSK": "c2VjcmV0LXRvby1zaG9ydA=="}, "Backend.PSK"),
])
def test_bad_options_name_their_field(options: dict[str, Any], field: str) -> None:
    with pytest.raises(NetworkConfigError) as err:
        backend_class("wireguard").validate_options(options)
    assert err.value.field == field
    assert "c2VjcmV0" not in str(err.value)  # a PSK is never echoed


def test_mtu_is_the_interface_or_option_minus_80() -> None:
    assert make()[0].mtu() == 1420
    assert make({"MTU": 9000})[0].mtu() == 8920


# -- the peers a lease makes -------------------------------------------------------------


def spec(**kw: Any) -> DeviceSpec:
    base: dict[str, Any] = {"name": "flannel-wg", "port": 51820, "halves": (V4,)}
    return DeviceSpec(**{**base, **kw})


def test_a_peer_without_port_uses_our_listen_port() -> None:
    p = peer_config(spec(port=40000), peer(0, port=None))
    assert p is not None and p.endpoint == Endpoint(IPv4Address("198.18.0.2"), 40000)
    p = peer_config(spec(port=40000), peer(0, port=0))
    assert p is not None and p.endpoint is not None and p.endpoint.port == 40000
    p = peer_config(spec(port=40000), peer(0, port=51999))
    assert p is not None and p.endpoint is not None and p.endpoint.port == 51999


def test_separate_v6_device_takes_the_v6_half() -> None:
    p = peer_config(spec(name="flannel-wg-v6", port=51821, halves=(V6,)), peer(0, ipv6=True))
    assert p is not None
    assert p.endpoint == Endpoint(IPv6Address("2001:db8:18::2"), 51821)
    assert p.allowed_ips == (IPv6Network("fd10:244:0:2::/64"),)
    assert peer_config(spec(halves=(V6,)), peer(0)) is None  # an IPv4-only peer


def test_single_device_carries_both_subnets_and_picks_the_endpoint_as_go() -> None:
    lease = peer(0, ipv6=True)
    both = spec(halves=(V4, V6), mode="auto", have_public4=True, have_public6=True)
    p = peer_config(both, lease)
    assert p is not None and p.allowed_ips == (lease.subnet, lease.ipv6_subnet)
    assert p.endpoint is not None and p.endpoint.address == IPv4Address("198.18.0.2")
    v6 = peer_config(spec(halves=(V4, V6), mode="ipv6"), lease)
    assert v6 is not None and v6.endpoint == Endpoint(IPv6Address("2001:db8:18::2"), 51821)
    # auto: a private IPv4 peer address and a public IPv6 one on both sides -> IPv6
    private4 = peer(0, ipv6=True, ip="10.1.2.3")
    assert select_family(both, private4) is V6
    assert select_family(spec(halves=(V4, V6), mode="auto", have_public6=False), private4) is V4


def test_go_private_is_rfc1918_and_ula_only() -> None:
    assert go_private(IPv4Address("192.168.1.1")) and go_private(IPv6Address("fd00::1"))
    assert not go_private(IPv4Address("198.18.0.1"))  # Python's is_private says True
    assert not go_private(IPv6Address("2001:db8:18::1"))


def test_policy_refuses_unusable_wireguard_data() -> None:
    policy = LeasePolicy.build(NETWORK, 24)
    good = peer(0)
    assert policy.check(good) is None
    assert policy.check(peer(0, port=None)) is None  # older Go nodes

    def data(obj: Any) -> Lease:
        return Lease(good.subnet, LeaseAttrs(good.attrs.public_ip, "wireguard",
                                             json.dumps(obj, separators=(",", ":"))))

    for obj, words in [({}, "PublicKey"), ({"PublicKey": "short"}, "not base64"),
                       ({"PublicKey": Key(bytes(32)).base64()}, "all-zero"),
                       ({"PublicKey": "AAAA"}, "decodes to 3 bytes"),
                       ({"PublicKey": peer_key(1).base64(), "Port": "51820"}, "Port"),
                       ({"PublicKey": peer_key(1).base64(), "Port": 70000}, "Port")]:
        verdict = policy.check(data(obj))
        assert verdict is not None and verdict[0] is RejectReason.BAD_BACKEND_DATA, obj
        assert words in verdict[1], (obj, verdict)


# -- the network: device, events, repair ---------------------------------------------------


async def test_register_sets_key_port_mtu_address_and_one_network_route(key_file: Path) -> None:
    be, driver, kernel = make()
    _own, network = await started(be)
    dev = driver.devices["flannel-wg"]
    assert dev["private"] == RFC_PRIVATE and dev["port"] == 51820
    link = kernel.links["flannel-wg"]
    assert (link.mtu, link.up) == (1420, True)
    assert set(kernel.objects.values()) == {Address(link.index, IPv4Address("10.244.1.0"), 32),
                                            Route(NETWORK, link.index),
                                            UnreachableRoute(NETWORK, FALLBACK_METRIC)}
    assert isinstance(network, WireguardNetwork)
    await be.close()


async def test_repair_makes_one_peer_per_lease_and_ignores_other_types(key_file: Path) -> None:
    be, driver, _ = make({"PersistentKeepaliveInterval": 25,
                          "PSK": Key(b"p" * 32).base64()})
    own, network = await started(be)
    leases = book(own, peer(0), peer(1, port=None), peer(2, btype="vxlan"))
    result = await network.repair(leases)
    peers = driver.peers()
    assert set(peers) == {peer_key(0), peer_key(1)}
    assert peers[peer_key(1)]["endpoint"] == Endpoint(IPv4Address("198.18.0.3"), 51820)
    assert peers[peer_key(0)]["allowed"] == [IPv4Network("10.244.2.0/24")]
    assert peers[peer_key(0)]["psk"] and peers[peer_key(0)]["keepalive"] == 25
    assert (result.applied, result.repaired, network.peer_count) == (2, 0, 2)
    before = len(driver.requests)
    again = await network.repair(leases)  # converged: a read, no configuration request
    assert (again.applied, again.repaired, len(driver.requests)) == (0, 0, before)
    await be.close()


async def test_events_are_one_request_and_touch_only_the_peers_named(key_file: Path) -> None:
    be, driver, _ = make()
    own, network = await started(be)
    await network.repair(book(own, *map(peer, range(5))))
    driver.requests.clear()
    moved = peer(1, ip="198.18.9.9")
    rekeyed = peer(2, key=peer_key(42))
    await network.apply({moved.subnet: moved, rekeyed.subnet: rekeyed, peer(3).subnet: None,
                         peer(7).subnet: peer(7)})
    assert len(driver.requests) == 1
    sent = driver.requests[0][1].peers
    assert {p.public_key for p in sent} == {peer_key(1), peer_key(2), peer_key(42), peer_key(3),
                                            peer_key(7)}
    assert all(p.remove for p in sent if p.public_key in (peer_key(2), peer_key(3)))
    peers = driver.peers()
    assert peer_key(3) not in peers and peer_key(2) not in peers
    assert peers[peer_key(42)]["allowed"] == [rekeyed.subnet]
    assert peers[peer_key(1)]["endpoint"] == Endpoint(IPv4Address("198.18.9.9"), 51820)
    assert network.peer_count == 5
    driver.requests.clear()
    await network.apply({peer(0).subnet: peer(0)})  # a renewal: nothing to tell the device
    assert driver.requests == []
    await be.close()


async def test_a_key_held_by_another_lease_or_our_own_is_not_programmed(
        key_file: Path, caplog: pytest.LogCaptureFixture) -> None:
    be, driver, _ = make()
    own, network = await started(be)
    thief = peer(1, key=peer_key(0))
    mine = peer(2, key=RFC_PRIVATE.public())
    await network.repair(book(own, peer(0), thief, mine))
    assert driver.peers()[peer_key(0)]["allowed"] == [peer(0).subnet]
    assert len(driver.peers()) == 1
    await network.apply({thief.subnet: thief})
    assert driver.peers()[peer_key(0)]["allowed"] == [peer(0).subnet]
    await network.repair(book(own, thief, peer(0), mine))  # the book's order does not matter
    assert driver.peers()[peer_key(0)]["allowed"] == [peer(0).subnet]
    reasons = [r.fields["reason"] for r in caplog.records  # type: ignore[attr-defined]
               if r.getMessage() == "peer not programmed"]
    assert "its PublicKey is already the peer of 10.244.2.0/24" in reasons
    assert "its PublicKey is this node's own" in reasons
    await be.close()


async def test_repair_counts_drift_and_removes_foreign_peers(key_file: Path) -> None:
    be, driver, _ = make()
    own, network = await started(be)
    leases = book(own, peer(0), peer(1))
    await network.repair(leases)
    del driver.devices["flannel-wg"]["peers"][peer_key(0)]  # lost behind our back
    driver.devices["flannel-wg"]["peers"][peer_key(99)] = {
        "endpoint": None, "allowed": [IPv4Network("10.244.99.0/24")], "psk": False,
        "keepalive": 0}
    result = await network.repair(leases)
    assert set(driver.peers()) == {peer_key(0), peer_key(1)}
    assert result.repaired == 2
    await be.close()


async def test_a_lost_device_wakes_a_repair_that_makes_it_whole(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kicked: list[list[PeerConfig]] = []
    monkeypatch.setattr(wgbackend, "kick_handshakes", lambda peers: kicked.append(list(peers)))
    be, driver, kernel = make()
    woken: list[bool] = []
    be.wake_repair = lambda: woken.append(True)
    own, network = await started(be)
    leases = book(own, peer(0), peer(1))
    await network.repair(leases)
    driver.lose("flannel-wg")
    kernel.objects.clear()  # a new TUN: no address, no route
    assert woken == [True]
    result = await network.repair(leases)
    dev = driver.devices["flannel-wg"]
    assert dev["private"] == RFC_PRIVATE and dev["port"] == 51820
    assert set(driver.peers()) == {peer_key(0), peer_key(1)}
    assert Route(NETWORK, kernel.links["flannel-wg"].index) in kernel.objects.values()
    assert result.repaired == 2  # the peers it had been told
    assert [{p.public_key for p in batch} for batch in kicked] == [{peer_key(0), peer_key(1)}]
    await network.repair(leases)  # a healthy device: no more hellos
    assert len(kicked) == 1
    await be.close()


async def test_only_the_lower_key_greets_a_new_peer(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Crossing first packets make two handshakes that wireguard-go drops both of: one side
    (the lower public key) starts it when the peer is added, by repair or by event."""
    kicked: list[set[Key]] = []
    monkeypatch.setattr(wgbackend, "kick_handshakes",
                        lambda peers: kicked.append({p.public_key for p in peers}))
    be, _, _ = make()
    own, network = await started(be)
    high, low = Key(b"\xfe" * 32), Key(b"\x01" * 32)  # ours is 0x85...
    assert RFC_PRIVATE.public().raw[0] == 0x85
    await network.repair(book(own, peer(0, key=high), peer(1, key=low)))
    assert kicked == [{high}]
    await network.apply({peer(2).subnet: peer(2, key=Key(b"\xfd" * 32))})
    assert kicked[-1] == {Key(b"\xfd" * 32)}
    await network.apply({peer(0).subnet: peer(0, key=high, ip="198.18.7.7")})  # a change
    await network.repair(book(own, peer(0, key=high, ip="198.18.7.7"), peer(1, key=low),
                              peer(2, key=Key(b"\xfd" * 32))))
    assert len(kicked) == 2  # no hello for peers already there
    await be.close()


def hellos(monkeypatch: pytest.MonkeyPatch) -> list[set[Key]]:
    """The peers of each hello sent, with the higher key's fallback after 50 ms."""
    kicked: list[set[Key]] = []
    monkeypatch.setattr(wgbackend, "kick_handshakes",
                        lambda peers: kicked.append({p.public_key for p in peers}))
    monkeypatch.setattr(wgbackend, "GREET_FALLBACK", 0.05)
    return kicked


async def test_the_higher_key_greets_a_new_peer_that_has_not_greeted_it(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lower key's hello can come too early: a node that joins publishes its lease before
    it programs its peers, so the hello of a node that saw the lease at once finds no peer
    and is dropped, and WireGuard tries again only after 5 s.  So the other side greets, after
    GREET_FALLBACK, each new peer it has had no handshake with (it has sent that peer
    nothing yet: its hello goes out at once, and crosses nothing)."""
    kicked, (be, driver, _) = hellos(monkeypatch), make()
    own, network = await started(be)
    low, answered, gone = Key(b"\x01" * 32), Key(b"\x02" * 32), Key(b"\x03" * 32)
    assert RFC_PRIVATE.public().raw[0] == 0x85  # higher than all three
    await network.repair(book(own, peer(0, key=low), peer(1, key=answered), peer(2, key=gone)))
    assert kicked == []  # theirs to greet first
    driver.devices["flannel-wg"]["peers"][answered]["handshake"] = 1.7e9  # they did
    await network.apply({peer(2).subnet: None})  # removed meanwhile
    be.devices[0].observed = 0.0  # health not read lately
    await until(lambda: bool(kicked), 2.0)
    assert kicked == [{low}]
    reads = driver.reads
    await be.read_health()
    assert driver.reads == reads  # the hellos' read of the device served the health too
    await asyncio.sleep(0.2)
    assert kicked == [{low}]  # once
    await be.close()


async def test_a_peer_added_while_the_hellos_read_the_device_is_greeted_next_round(
        key_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    kicked, (be, driver, _) = hellos(monkeypatch), make()
    own, network = await started(be)
    first, second = Key(b"\x01" * 32), Key(b"\x02" * 32)
    await network.repair(book(own, peer(0, key=first)))
    real_state, event = driver.state, [peer(1, key=second)]

    async def state(ifname: str) -> DeviceState:
        if event:  # the first round's read: a lease event arrives meanwhile
            lease = event.pop()
            await network.apply({lease.subnet: lease})
        return await real_state(ifname)

    driver.state = state  # type: ignore[method-assign]
    await until(lambda: len(kicked) == 2, 2.0)
    assert kicked == [{first}, {second}]
    await be.close()


async def test_retire_removes_the_old_address(key_file: Path) -> None:
    be, _, kernel = make()
    _own, network = await started(be)
    await network.retire()
    assert not any(isinstance(o, Address) for o in kernel.objects.values())
    await be.close()


async def test_separate_dual_stack_stacks_two_devices(key_file: Path) -> None:
    be, driver, kernel = make(ipv6=True)
    own, network = await started(be, ipv6=True)
    assert isinstance(network, StackedNetwork)
    await network.repair(book(own, peer(0, ipv6=True), peer(1)))
    assert set(driver.peers("flannel-wg")) == {peer_key(0), peer_key(1)}
    v6 = driver.peers("flannel-wg-v6")
    assert set(v6) == {peer_key(0)}
    assert v6[peer_key(0)]["endpoint"] == Endpoint(IPv6Address("2001:db8:18::2"), 51821)
    assert driver.devices["flannel-wg-v6"]["port"] == 51821
    assert network.peer_counts() == {"ipv4": 2, "ipv6": 1}
    v6_index = kernel.links["flannel-wg-v6"].index
    assert Route(IPv6Network("fd10:244::/56"), v6_index) in kernel.objects.values()
    await be.close()


async def test_auto_mode_is_one_device_for_both_families(key_file: Path) -> None:
    be, driver, _ = make({"Mode": "auto"}, ipv6=True)
    own, network = await started(be, ipv6=True)
    assert isinstance(network, WireguardNetwork) and set(driver.devices) == {"flannel-wg"}
    await network.repair(book(own, peer(0, ipv6=True)))
    allowed = driver.peers()[peer_key(0)]["allowed"]
    assert allowed == [IPv4Network("10.244.2.0/24"), IPv6Network("fd10:244:0:2::/64")]
    assert network.peer_counts() == {"ipv4": 1, "ipv6": 1}
    await be.close()


# -- health ------------------------------------------------------------------------------


def test_a_peer_sent_to_without_handshake_is_stalled_on_two_reads(key_file: Path) -> None:
    be, _, _ = make()
    details: dict[str, str | None] = {}
    be.report = details.__setitem__
    dev = be.devices[0]

    def read(now: float, tx: int, handshake: float) -> None:
        state = DeviceState(None, 51820, (PeerState(peer_key(0), None, (), False, 0, handshake,
                                                    10, tx),))
        be.observe_health(dev, state, now)

    read(1000.0, 100, 900.0)
    read(1100.0, 100, 900.0)  # idle: no traffic, no handshake, not stalled
    assert details["wireguard"] is None
    read(1110.0, 200, 900.0)  # sending, 210 s since the handshake: suspect
    assert details["wireguard"] is None
    read(1120.0, 300, 900.0)
    assert details["wireguard"] is not None and "1 peer(s)" in details["wireguard"]
    h = be.health["flannel-wg"][peer_key(0)]
    assert h.stalled and math.isclose(h.handshake_age, 220.0)
    read(1130.0, 400, 1125.0)  # a handshake completed
    assert details["wireguard"] is None
    metrics = list(be.metrics_collector().collect())
    by_name = {m.name: m for m in metrics}
    assert by_name["flannel_wireguard_peers_stalled"].samples[0].value == 0
    assert by_name["flannel_wireguard_peer_handshake_age_seconds"].samples[0].value == 5.0
    assert by_name["flannel_wireguard_peer_transmitted_bytes"].samples[0].value == 400


async def test_a_repairs_read_of_the_device_serves_the_health(key_file: Path) -> None:
    be, driver, _ = make()
    own, network = await started(be)
    await network.repair(book(own, peer(0), peer(1)))  # read before the peers were set
    be.health.clear()
    await network.repair(book(own, peer(0), peer(1)))  # converged: its read is current
    assert set(be.health["flannel-wg"]) == {peer_key(0), peer_key(1)}
    reads = driver.reads
    await be.read_health()  # the repair read it just now: not again
    assert driver.reads == reads
    be.devices[0].observed -= wgbackend.STATS_INTERVAL
    await be.read_health()
    assert driver.reads == reads + 1
    await be.close()


def test_a_never_handshaken_peer_has_infinite_age(key_file: Path) -> None:
    be, _, _ = make()
    state = DeviceState(None, 51820, (PeerState(peer_key(0), None, (), False, 0, 0.0, 0, 0),))
    be.observe_health(be.devices[0], state, 50.0)
    assert be.health["flannel-wg"][peer_key(0)].handshake_age == math.inf


def test_hellos_go_to_each_peers_device_address() -> None:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx:
        rx.bind(("127.0.0.0", 0))  # the network address of the "peer subnet" 127.0.0.0/8
        port = rx.getsockname()[1]
        rx.settimeout(5)
        old = wgbackend.HELLO_PORT
        wgbackend.HELLO_PORT = port
        try:
            sent = kick_handshakes([PeerConfig(peer_key(0),
                                               allowed_ips=(IPv4Network("127.0.0.0/8"),))])
        finally:
            wgbackend.HELLO_PORT = old
        assert sent == 1 and rx.recvfrom(16)[0] == b""


def test_reprs_never_show_secrets() -> None:
    psk = Key(b"s" * 32)
    config = DeviceConfig(private_key=RFC_PRIVATE, listen_port=1,
                          peers=[PeerConfig(peer_key(0), preshared_key=psk)])
    text = repr(config) + repr(spec(psk=psk))
    for secret in (RFC_PRIVATE, psk):
        assert secret.base64() not in text and secret.hex() not in text
        assert secret.base64()[:8] not in text
