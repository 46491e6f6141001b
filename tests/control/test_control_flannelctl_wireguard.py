"""flannelctl subnets and wireguard leases, in-process over the in-memory store: the PUBLIC KEY
column appears only when some lease is a wireguard one, JSON carries ``public_key``, and a
lease with an unusable key is shown as refused with the daemon's reason."""

from __future__ import annotations

import json
from ipaddress import IPv4Address

import pytest

from flanneld import ctl
from flanneld.lease import LeaseAttrs, config_key, make_backend_data, subnets_prefix
from flanneld.memory_store import MemoryStore

pytestmark = pytest.mark.unit
PREFIX = "/coreos.com/network"
SUBNETS = subnets_prefix(PREFIX)
CONFIG = b'{"Network":"10.5.0.0/16","Backend":{"Type":"wireguard"}}'
KEY = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo="
WG = LeaseAttrs(IPv4Address("198.18.0.7"), "wireguard",
                make_backend_data({"PublicKey": KEY, "Port": 51820}))
VX = LeaseAttrs(IPv4Address("198.18.0.8"), "vxlan",
                make_backend_data({"VNI": 1, "VtepMAC": "0a:00:00:00:00:08"}))
BAD = LeaseAttrs(IPv4Address("198.18.0.9"), "wireguard", make_backend_data({"PublicKey": "nope"}))


async def store_with(keys: dict[str, LeaseAttrs]) -> MemoryStore:
    store = MemoryStore()
    await store.put(config_key(PREFIX), CONFIG)
    for name, attrs in keys.items():
        await store.put(SUBNETS + name, attrs.to_json().encode())
    return store


async def test_public_key_column_only_with_wireguard_leases(
        capsys: pytest.CaptureFixture[str]) -> None:
    ctl._print_table(await ctl._subnet_rows(await store_with({"10.5.8.0-24": VX}), PREFIX))
    assert "PUBLIC KEY" not in capsys.readouterr().out
    ctl._print_table(await ctl._subnet_rows(
        await store_with({"10.5.7.0-24": WG, "10.5.8.0-24": VX}), PREFIX))
    header, wg, vx = capsys.readouterr().out.splitlines()
    assert header.split()[:8] == ["SUBNET", "PUBLIC", "IP", "BACKEND", "VTEP", "MAC", "PUBLIC",
                                  "KEY"]
    assert wg.split()[:5] == ["10.5.7.0/24", "198.18.0.7", "wireguard", "-", KEY]
    assert vx.split()[:5] == ["10.5.8.0/24", "198.18.0.8", "vxlan", "0a:00:00:00:00:08", "-"]


async def test_json_has_the_public_key_and_refusals_name_the_field() -> None:
    rows = {r["subnet"]: r for r in await ctl._subnet_rows(
        await store_with({"10.5.7.0-24": WG, "10.5.9.0-24": BAD}), PREFIX)}
    assert rows["10.5.7.0/24"]["public_key"] == KEY and rows["10.5.7.0/24"]["rejected"] is None
    assert rows["10.5.9.0/24"]["rejected"] == "bad_backend_data"
    assert "BackendData.PublicKey: decodes to 3 bytes" in rows["10.5.9.0/24"]["error"]
    json.dumps(list(rows.values()))  # what -o json prints
