"""Subnet leases in the store: acquire, renew and read them, as Go flannel's subnet manager does.

Where Go flannel has known defects this does better while keeping the format: a lost creation
race picks another subnet instead of exiting, renewal revokes the superseded etcd lease and is a
compare-and-swap on the key's revision (so it never steals a subnet that changed hands), and
values that are not lease JSON are skipped with one warning each.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Network

from flanneld.allocation import find_by_public_ip, pick_subnet
from flanneld.errors import FlannelError, LeaseDecodeError, NetworkConfigError
from flanneld.lease import (
    DEFAULT_PREFIX,
    Lease,
    LeaseAttrs,
    config_key,
    decode_lease_attrs,
    parse_subnet_key,
    subnet_key,
    subnets_prefix,
)
from flanneld.logging_setup import log_event
from flanneld.netconfig import NetworkConfig, parse_network_config
from flanneld.store import KeyValue, LeaseStore

log = logging.getLogger(__name__)

SUBNET_TTL = 24 * 3600


class LeaseLostError(FlannelError):
    """Our lease key was deleted, expired or taken over by another node."""


class MissingNetworkConfigError(FlannelError):
    """Nothing stored at <prefix>/config yet."""


@dataclass
class DecodeWarnings:
    """Remembers which bad values were already reported, so each is logged once."""

    seen: set[tuple[str, int]]

    def warn(self, kv: KeyValue, exc: LeaseDecodeError) -> None:
        marker = (kv.key, kv.mod_revision)
        if marker not in self.seen:
            self.seen.add(marker)
            log.warning("skipping lease %s: %s", kv.key, exc)


class SubnetManager:
    def __init__(
        self,
        store: LeaseStore,
        prefix: str = DEFAULT_PREFIX,
        *,
        ttl: int = SUBNET_TTL,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.prefix = prefix
        self.ttl = ttl
        self._rng = rng or random.Random()
        self._clock = clock
        self.decode_warnings = DecodeWarnings(set())

    # -- reading -------------------------------------------------------------------------

    async def network_config(self) -> NetworkConfig:
        """The validated network config; MissingNetworkConfigError or NetworkConfigError."""
        kv = await self.store.get(config_key(self.prefix))
        if kv is None:
            raise MissingNetworkConfigError(f"no network config at {config_key(self.prefix)}")
        return parse_network_config(kv.value)

    def decode(self, kv: KeyValue) -> Lease | None:
        """A lease from a stored key/value, or None (warned once) when it is not one."""
        try:
            subnet, ipv6 = parse_subnet_key(kv.key)
            attrs = decode_lease_attrs(kv.value)
        except LeaseDecodeError as exc:
            self.decode_warnings.warn(kv, exc)
            return None
        return Lease(
            subnet=subnet,
            attrs=attrs,
            expiration=None,
            etcd_lease_id=kv.lease_id,
            ipv6_subnet=ipv6,
            revision=kv.mod_revision,
        )

    async def list_leases(self) -> tuple[list[Lease], set[IPv4Network], int]:
        """Valid leases, every subnet any key holds (valid or not), and the revision."""
        snap = await self.store.list_prefix(subnets_prefix(self.prefix))
        leases: list[Lease] = []
        taken: set[IPv4Network] = set()
        for kv in snap.kvs:
            with contextlib.suppress(LeaseDecodeError):
                taken.add(parse_subnet_key(kv.key)[0])
            lease = self.decode(kv)
            if lease is not None:
                leases.append(lease)
        return leases, taken, snap.revision

    # -- writing -------------------------------------------------------------------------

    def _key(self, subnet: IPv4Network) -> str:
        return subnets_prefix(self.prefix) + subnet_key(subnet)

    async def acquire(
        self, attrs: LeaseAttrs, config: NetworkConfig, previous: IPv4Network | None = None
    ) -> Lease:
        """Flannel's acquire order; loops on lost races, raises OutOfSubnetsError when full."""
        value = attrs.to_json().encode()
        races = 0
        while True:
            leases, taken, _ = await self.list_leases()
            mine = find_by_public_ip(leases, attrs.public_ip)
            if mine is not None:
                if config.contains_subnet(mine.subnet):
                    lease = await self._reuse(mine, attrs, value)
                    if lease is not None:
                        return lease
                    continue  # the key changed under us: look again
                log.warning(
                    "lease %s holds our PublicIP %s but does not fit the network config; deleting it",
                    mine.subnet, attrs.public_ip,
                )
                await self.store.delete(self._key(mine.subnet))
                continue

            subnet = pick_subnet(config, taken, previous, self._rng)
            grant = await self.store.grant(self.ttl)
            key = self._key(subnet)
            revision = await self.store.create(key, value, grant.lease_id)
            if revision is None:
                # Lost the race, or our own retried transaction already won: look at the key.
                kv = await self.store.get(key)
                if kv is not None and kv.lease_id == grant.lease_id:
                    revision = kv.mod_revision
                else:
                    await self.store.revoke(grant.lease_id)
                    races += 1
                    log.info("subnet %s was taken by another node meanwhile; picking again", subnet)
                    if previous == subnet:
                        previous = None
                    continue
            log_event(log, "lease acquired", subnet=subnet, races_lost=races, ttl_s=self.ttl)
            return Lease(subnet, attrs, grant.expiration, grant.lease_id, revision=revision)

    async def _reuse(self, mine: Lease, attrs: LeaseAttrs, value: bytes) -> Lease | None:
        key = self._key(mine.subnet)
        if mine.reserved:
            revision = await self.store.update(key, value, 0, mine.revision)
            if revision is None:
                return None
            log.info("reusing reserved subnet %s for PublicIP %s", mine.subnet, attrs.public_ip)
            return replace(mine, attrs=attrs, expiration=None, revision=revision)
        grant = await self.store.grant(self.ttl)
        revision = await self.store.update(key, value, grant.lease_id, mine.revision)
        if revision is None:
            await self.store.revoke(grant.lease_id)
            return None
        if mine.etcd_lease_id:
            await self.store.revoke(mine.etcd_lease_id)
        log.info("reusing lease subnet=%s for PublicIP %s", mine.subnet, attrs.public_ip)
        return replace(
            mine, attrs=attrs, expiration=grant.expiration, etcd_lease_id=grant.lease_id,
            revision=revision,
        )

    async def renew(self, lease: Lease) -> Lease:
        """A fresh etcd lease for our key; LeaseLostError when the key is no longer ours."""
        if lease.reserved:
            return lease
        key = self._key(lease.subnet)
        value = lease.attrs.to_json().encode()
        grant = await self.store.grant(self.ttl)
        expected = lease.revision
        for _ in range(2):
            revision = await self.store.update(key, value, grant.lease_id, expected)
            if revision is not None:
                if lease.etcd_lease_id and lease.etcd_lease_id != grant.lease_id:
                    await self.store.revoke(lease.etcd_lease_id)
                return replace(
                    lease, expiration=grant.expiration, etcd_lease_id=grant.lease_id,
                    revision=revision,
                )
            kv = await self.store.get(key)
            current = self.decode(kv) if kv is not None else None
            if current is None or current.attrs.public_ip != lease.attrs.public_ip:
                break
            expected = kv.mod_revision if kv is not None else 0
        await self.store.revoke(grant.lease_id)
        raise LeaseLostError(f"lease {lease.subnet} is no longer ours")

    async def put_reservation(self, subnet: IPv4Network, attrs: LeaseAttrs) -> None:
        await self.store.put(self._key(subnet), attrs.to_json().encode(), 0)

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        return await self.store.delete(self._key(subnet))

    async def set_network_config(self, raw: bytes) -> NetworkConfig:
        """Validate (raising NetworkConfigError) and store the network config."""
        config = parse_network_config(raw)
        await self.store.put(config_key(self.prefix), raw, 0)
        return config


__all__ = [
    "LeaseLostError",
    "MissingNetworkConfigError",
    "NetworkConfigError",
    "SubnetManager",
]
