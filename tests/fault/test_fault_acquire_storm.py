"""255 subnet managers acquiring at once against one real etcd; the 256th is told it is full."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from ipaddress import IPv4Address

import pytest
from etcd_server import EtcdServer

from flanneld.errors import OutOfSubnetsError
from flanneld.etcd_store import EtcdStore, parse_endpoints
from flanneld.lease import LeaseAttrs
from flanneld.netconfig import parse_network_config
from flanneld.subnet_manager import SubnetManager

pytestmark = [pytest.mark.fault, pytest.mark.etcd]


async def test_255_concurrent_acquirers_then_out_of_subnets(
    etcd_server: EtcdServer, etcd_prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    config = parse_network_config('{"Network":"10.200.0.0/16","Backend":{"Type":"vxlan"}}')
    assert config.subnet_count == 255
    stores = [EtcdStore(parse_endpoints(etcd_server.endpoint), timeout=10) for _ in range(255)]
    caplog.set_level(logging.INFO, logger="flanneld.subnet_manager")
    started = time.monotonic()
    try:
        leases = await asyncio.gather(*(
            SubnetManager(store, etcd_prefix, rng=random.Random(n)).acquire(
                LeaseAttrs(IPv4Address(f"198.18.1.{n}"), "vxlan"), config)
            for n, store in enumerate(stores)
        ))
        elapsed = time.monotonic() - started
        assert len({lease.subnet for lease in leases}) == 255
        races = sum("taken by another node" in r.getMessage() for r in caplog.records)
        with pytest.raises(OutOfSubnetsError) as info:
            await SubnetManager(stores[0], etcd_prefix).acquire(
                LeaseAttrs(IPv4Address("198.18.2.1"), "vxlan"), config)
    finally:
        await asyncio.gather(*(s.close() for s in stores))
    message = str(info.value)
    assert message.startswith("out of subnets")
    for part in ("10.200.0.0/16", "/24", "10.200.1.0", "10.200.255.0", "255 subnets"):
        assert part in message
    print(f"\nFIGURE acquire storm: 255 acquirers -> 255 distinct leases in {elapsed:.2f}s, "
          f"{races} lost creation races retried, 0 exits; 256th: {message!r}")
