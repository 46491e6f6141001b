"""Fuzz what other nodes (or anyone with etcd access) write under ``<prefix>/subnets``.

Properties: ``decode_lease_attrs`` returns LeaseAttrs whose ``to_json()`` decodes to the same
attrs, or raises LeaseDecodeError naming the field; ``parse_subnet_key`` returns a strict
network (and optional IPv6 network) or raises LeaseDecodeError quoting the key. End to end on
the in-memory store: random mixes of good and bad values never crash ``list_leases`` or the
LeaseWatcher, the good leases come through, every parseable key counts as taken, and each bad
value is warned about once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Iterator
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.errors import LeaseDecodeError
from flanneld.lease import (
    Lease,
    LeaseAttrs,
    decode_lease_attrs,
    parse_subnet_key,
    subnet_key,
    subnets_prefix,
)
from flanneld.lease_watch import LeaseWatcher
from flanneld.memory_store import MemoryStore
from flanneld.subnet_manager import SubnetManager

from .strategies import (
    CASE_STYLE,
    DEEP,
    chance,
    deep_document,
    dumps,
    ints,
    junk,
    mutated,
    presence,
    raw_junk,
    styled,
    weighted,
)
from .tally import MIN_CASES, Tally

pytestmark = pytest.mark.unit

LEASE_FIELDS = ("PublicIP", "PublicIPv6", "BackendType", "BackendData", "BackendV6Data")
VALID = (b'{"PublicIP":"198.18.0.2","PublicIPv6":null,"BackendType":"vxlan",'
         b'"BackendData":{"VNI":1,"VtepMAC":"22:33:44:55:66:77"}}')
PREFIX = "/coreos.com/network"
# Go flannel's subnet key regexp (pkg/subnet/etcd), anchored, ASCII digits as in Go's RE2.
GO_KEY = re.compile(r"(\d+\.\d+\.\d+\.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?", re.ASCII)

_V4_TEXT = ints(0, (1 << 32) - 1).map(lambda n: str(IPv4Address(n)))
_V6_TEXT = ints(0, (1 << 128) - 1).map(lambda n: str(IPv6Address(n)))
_PUBLIC_IP = weighted(
    (85, _V4_TEXT), (3, _V6_TEXT), (7, junk),
    (5, st.sampled_from(["198.18.0.1/24", "198.18.00.1", "198.18.0.1 ", "198.18.0", "256.1.1.1",
                         "::ffff:198.18.0.1", "\uff11.1.1.1"])),
)
_PUBLIC_IPV6 = weighted((50, st.none()), (35, _V6_TEXT), (5, _V4_TEXT), (5, junk),
                        (5, st.sampled_from(["fe80::1%eth0", "fc00::/64", "::", "fc00:::1"])))
_BACKEND_TYPE = weighted((90, st.sampled_from(["vxlan", "host-gw", "", "udp", "VXLAN"])),
                         (10, junk))
_BACKEND_DATA = weighted(
    (80, st.fixed_dictionaries({"VNI": ints(0, 1 << 24), "VtepMAC": st.text(max_size=17)})),
    (10, st.just({})), (10, junk),
)
_EXTRA = st.dictionaries(st.text(max_size=8), junk, max_size=2)
_VALUES = {"PublicIP": _PUBLIC_IP, "PublicIPv6": _PUBLIC_IPV6, "BackendType": _BACKEND_TYPE,
           "BackendData": _BACKEND_DATA, "BackendV6Data": _BACKEND_DATA}


_PRESENT = presence({"PublicIP": 92, "PublicIPv6": 50, "BackendType": 60, "BackendData": 50,
                     "BackendV6Data": 25, "(extra)": 16})


@st.composite
def lease_objects(draw: st.DrawFn) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    style = draw(CASE_STYLE)
    for name in draw(_PRESENT):
        if name == "(extra)":
            doc.update(draw(_EXTRA))
        else:
            doc[styled(name, style)] = draw(_VALUES[name])
    return doc


lease_values = weighted(
    (50, lease_objects().map(lambda d: dumps(d).encode())), (10, lease_objects().map(dumps)),
    (15, raw_junk), (23, mutated(VALID)), (1, deep_document(None)),
    (1, deep_document("PublicIP")),
)


# subnet keys: a.b.c.d-len[&v6-len] built from parts that are right, slightly off or junk
_OCTET = st.one_of(ints(0, 255).map(str), ints(0, 255).map(str), ints(0, 255).map(str),
                   st.sampled_from(["256", "-1", "01", "", "x", "\uff11", "\u0661"]))
_PLEN = st.one_of(ints(0, 33).map(str), ints(0, 33).map(str),
                  st.sampled_from(["", "-1", "024", "99999999999999999999", "2\u0664", "\uff12",
                                   "\u00b2", " 24", "24 ", "0x18"]))
_V6_PART = st.one_of(st.just(""), st.just(""), _V6_TEXT.map(lambda a: f"&{a}-64"),
                     st.sampled_from(["&fc00::-64", "&fc00::1-64", "&fe80::%eth0-64", "&-64",
                                      "&fc00::-", "&fc00::-129", "&", "&&"]))
_KEY_PREFIX = st.sampled_from(["", subnets_prefix(PREFIX), "x/", "/"])


_V4_NET = st.tuples(ints(0, (1 << 32) - 1), ints(0, 32)).map(
    lambda t: IPv4Network((t[0] >> (32 - t[1]) << (32 - t[1]) if t[1] else 0, t[1])))
_V6_NET = st.tuples(ints(0, (1 << 128) - 1), ints(0, 128)).map(
    lambda t: IPv6Network((t[0] >> (128 - t[1]) << (128 - t[1]) if t[1] else 0, t[1])))
_GOOD_KEYS = st.builds(
    lambda v4, v6, with_v6: subnet_key(v4, v6 if with_v6 else None),
    _V4_NET, _V6_NET, ints(0, 3).map(lambda n: n == 0))


@st.composite
def _assembled_key(draw: st.DrawFn) -> str:
    octets = [draw(_OCTET) for _ in range(draw(st.sampled_from([4, 4, 4, 3, 5])))]
    sep = draw(st.sampled_from(["-", "-", "-", "/", "_", "--"]))
    return f"{'.'.join(octets)}{sep}{draw(_PLEN)}{draw(_V6_PART)}"


subnet_keys = st.builds(
    lambda prefix, name: prefix + name, _KEY_PREFIX,
    weighted((50, _GOOD_KEYS), (35, _assembled_key()), (15, st.text(max_size=24))))


def _field_of(exc: LeaseDecodeError) -> str:
    text = str(exc)
    if text.startswith("lease value "):
        return "(document)"
    name, sep, _ = text.partition(":")
    assert sep and name in LEASE_FIELDS, text
    return name


def check_lease(raw: bytes | str, tally: Tally) -> None:
    try:
        attrs = decode_lease_attrs(raw)
    except LeaseDecodeError as exc:
        name = _field_of(exc)
        if name not in ("(document)", "PublicIP"):  # PublicIP is required, others are named
            doc = json.loads(raw)
            assert any(k.lower() == name.lower() for k in doc), (name, doc)
        tally.reject(name)
        return
    assert isinstance(attrs, LeaseAttrs) and isinstance(attrs.public_ip, IPv4Address)
    text = attrs.to_json()
    assert decode_lease_attrs(text) == attrs, text
    doc = json.loads(text)
    assert list(doc)[:2] == ["PublicIP", "PublicIPv6"] and doc["PublicIP"] == str(attrs.public_ip)
    tally.accept()


def check_key(key: str, tally: Tally) -> None:
    name = key.rsplit("/", 1)[-1]
    try:
        subnet, ipv6 = parse_subnet_key(key)
    except LeaseDecodeError as exc:
        assert "malformed subnet key" in str(exc) and repr(name) in str(exc), str(exc)
        tally.reject("malformed")
        return
    assert isinstance(subnet, IPv4Network) and isinstance(ipv6, IPv6Network | None)
    assert subnet.network_address == subnet[0]  # strict: no host bits
    # only what Go flannel's key pattern accepts, and only the canonical spelling, so two
    # different keys never name the same subnet
    assert GO_KEY.fullmatch(name) is not None, name
    assert subnet_key(subnet, ipv6) == name, name
    tally.accept()


def test_fuzz_lease_values_and_subnet_keys() -> None:
    """One lease value and one subnet key per example (two targets, one hypothesis run)."""
    values = Tally("lease JSON")
    keys = Tally("subnet keys")

    @given(raw=lease_values, key=subnet_keys)
    @settings(max_examples=MIN_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(raw: bytes | str, key: str) -> None:
        check_lease(raw, values)
        check_key(key, keys)

    run()
    values.report()
    keys.report()
    assert values.cases >= MIN_CASES and keys.cases >= MIN_CASES
    assert values.accepted > 1000 and keys.accepted > 1000
    for reason in ("(document)", *LEASE_FIELDS):
        assert values.reasons[reason] > 0, reason
    assert keys.reasons["malformed"] > 500


# ---------------------------------------------------------------------------------------------
# end to end: MemoryStore + SubnetManager.list_leases + LeaseWatcher

_GOOD_VALUE = st.builds(
    lambda ip, t: LeaseAttrs(IPv4Address(ip), backend_type=t).to_json().encode(),
    ints(0xC6120000, 0xC613FFFF), st.sampled_from(["", "vxlan", "host-gw"]))
_BAD_VALUE = st.one_of(raw_junk, lease_objects().map(lambda d: dumps(d).encode()),
                       mutated(VALID).filter(lambda b: b != VALID))
_DEEP_VALUE = st.just(b"[" * DEEP)
_GOOD_KEY = ints(0, 255).map(lambda n: subnet_key(IPv4Network(f"10.244.{n}.0/24")))
_BAD_KEY = st.one_of(st.sampled_from(["10.244.1.0", "10.244.1.0-33", "10.244.1.1-24", "config",
                                      "x-y", "10.244.1.0-24&fc00::1-64", ""]),
                     st.text(alphabet="0123456789.-&abcf:/x", max_size=16))


@st.composite
def store_writes(draw: st.DrawFn) -> list[tuple[str, bytes | None]]:
    """A sequence of puts (and some deletes: value None) under <prefix>/subnets."""
    out: list[tuple[str, bytes | None]] = []
    for _ in range(draw(ints(1, 12))):
        key = draw(_BAD_KEY) if chance(draw, 6) else draw(_GOOD_KEY)
        kind = draw(ints(0, 99))
        value = (None if kind < 8 else draw(_DEEP_VALUE) if kind < 10
                 else draw(_BAD_VALUE) if kind < 50 else draw(_GOOD_VALUE))
        out.append((key, value))
    return out


def _expected(final: dict[str, bytes]) -> tuple[dict[IPv4Network, LeaseAttrs], set[IPv4Network],
                                                set[str]]:
    """(valid leases by subnet, subnets taken by any parseable key, keys with bad values)."""
    good: dict[IPv4Network, LeaseAttrs] = {}
    taken: set[IPv4Network] = set()
    bad: set[str] = set()
    for key, value in final.items():
        try:
            subnet = parse_subnet_key(key)[0]
        except LeaseDecodeError:
            bad.add(key)
            continue
        taken.add(subnet)
        try:
            good[subnet] = decode_lease_attrs(value)
        except LeaseDecodeError:
            bad.add(key)
    return good, taken, bad


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.keys: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("ignoring "):
            args = record.args
            self.keys.append(str(args[0]) if isinstance(args, tuple) and args else "")


@pytest.fixture
def warnings() -> Iterator[_Warnings]:
    handler = _Warnings()
    logger = logging.getLogger("flanneld.subnet_manager")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _scenario(writes: list[tuple[str, bytes | None]], warned: _Warnings,
                    tally: Tally) -> None:
    store = MemoryStore()
    manager = SubnetManager(store, PREFIX)
    watcher = LeaseWatcher(manager, [], 1)
    seen: list[Lease] = []

    async def consume() -> None:
        async for batch in watcher.events():
            seen.extend(e.lease for e in batch)

    task = asyncio.create_task(consume())
    final: dict[str, bytes] = {}
    for name, value in writes:
        key = subnets_prefix(PREFIX) + name
        if value is None:
            await store.delete(key)
            final.pop(key, None)
        else:
            await store.put(key, value)
            final[key] = value
    good, taken, bad = _expected(final)
    try:
        for _ in range(10_000):  # the watcher catches up within a few loop turns
            if watcher.revision >= store._revision or task.done():
                break
            await asyncio.sleep(0)
        if task.done():
            task.result()  # re-raise what killed the watcher
        assert watcher.revision >= store._revision, "watcher did not catch up"
        leases, got_taken, _ = await manager.list_leases()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert {lease.subnet: lease.attrs for lease in leases} == good
    assert {s: lease.attrs for s, lease in watcher.known.items()} == good
    assert got_taken == taken  # a key with a bad value still holds its subnet
    # every bad key is in the watcher's book as rejected, with a reason, and nothing else is
    assert set(watcher.book.rejected) == bad
    assert sum(watcher.book.counts.values()) == len(bad)
    # list_leases reports each bad key and revision once (aggregated): a second listing adds
    # no report
    count = len(warned.keys)
    await manager.list_leases()
    assert len(warned.keys) == count
    if bad:
        tally.reject(f"{len(bad)} bad")
    else:
        tally.accept()


def test_fuzz_subnets_in_store_end_to_end(warnings: _Warnings) -> None:
    tally = Tally("store end-to-end (list_leases + watcher)")
    loop = asyncio.new_event_loop()

    @given(writes=store_writes())
    @settings(max_examples=1_000, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(writes: list[tuple[str, bytes | None]]) -> None:
        warnings.keys.clear()
        loop.run_until_complete(_scenario(writes, warnings, tally))

    try:
        run()
    finally:
        loop.close()
    tally.report()
    assert tally.cases >= 1_000 and tally.accepted > 50 and tally.rejected > 500


# ---------------------------------------------------------------------------------------------
# regressions: the first inputs the fuzzers broke (fixed in bfe29c1)

def test_deeply_nested_lease_value_is_a_decode_error() -> None:
    with pytest.raises(LeaseDecodeError):
        decode_lease_attrs(b'{"PublicIP":' + b"[" * 100_000)


async def test_deeply_nested_lease_value_is_skipped_by_list_leases() -> None:
    store = MemoryStore()
    manager = SubnetManager(store, PREFIX)
    good = LeaseAttrs(IPv4Address("198.18.0.2")).to_json().encode()
    await store.put(subnets_prefix(PREFIX) + "10.244.1.0-24", good)
    await store.put(subnets_prefix(PREFIX) + "10.244.2.0-24", b"[" * 100_000)
    leases, taken, _ = await manager.list_leases()
    assert [lease.subnet for lease in leases] == [IPv4Network("10.244.1.0/24")]
    assert taken == {IPv4Network("10.244.1.0/24"), IPv4Network("10.244.2.0/24")}


@pytest.mark.parametrize("key", ["10.244.1.0-\uff12\uff14", "10.244.1.0-\u0662\u0664",
                                 "10.244.1.0-24&fe80::%eth0-64"])
def test_subnet_key_refused_as_go_flannel_does(key: str) -> None:
    with pytest.raises(LeaseDecodeError):
        parse_subnet_key(key)


def test_public_ipv6_with_zone_is_refused() -> None:
    with pytest.raises(LeaseDecodeError, match="PublicIPv6"):
        decode_lease_attrs('{"PublicIP":"198.18.0.1","PublicIPv6":"fe80::1%eth0"}')
