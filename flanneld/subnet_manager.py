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
from dataclasses import replace
from ipaddress import IPv4Network

from flanneld.allocation import find_by_public_ip, pick_subnet
from flanneld.errors import FlannelError, LeaseDecodeError, NetworkConfigError
from flanneld.lease import (
    DEFAULT_PREFIX,
    Lease,
    LeaseAttrs,
    config_key,
    parse_subnet_key,
    subnet_key,
    subnets_prefix,
)
from flanneld.lease_book import judge
from flanneld.lease_policy import Rejection
from flanneld.logging_setup import log_event
from flanneld.netconfig import NetworkConfig, parse_network_config
from flanneld.rejection_log import RejectionLog
from flanneld.store import KeyValue, LeaseStore, Snapshot

log = logging.getLogger(__name__)

SUBNET_TTL = 24 * 3600


class LeaseLostError(FlannelError):
    """Our lease key was deleted, expired or taken over by another node."""


class MissingNetworkConfigError(FlannelError):
    """Nothing stored at <prefix>/config yet."""


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
        # Bad keys met while allocating; the daemon's lease book reports what the watch meets.
        self.rejections = RejectionLog(log)
        self._reported: set[tuple[str, int]] = set()
        self._listed_bad: set[tuple[str, int]] = set()

    # -- reading -------------------------------------------------------------------------

    async def network_config(self) -> NetworkConfig:
        """The validated network config; MissingNetworkConfigError or NetworkConfigError."""
        kv = await self.store.get(config_key(self.prefix))
        if kv is None:
            raise MissingNetworkConfigError(f"no network config at {config_key(self.prefix)}")
        return parse_network_config(kv.value)

    def decode(self, kv: KeyValue) -> Lease | None:
        """A lease from a stored key/value, or None when it is not one (reported once per
        key and revision, aggregated: see RejectionLog)."""
        verdict = judge(kv, None)
        if not isinstance(verdict, Rejection):
            return verdict
        marker = (verdict.key, verdict.revision)
        self._listed_bad.add(marker)
        if marker not in self._reported:
            self._reported.add(marker)
            self.rejections.rejected(verdict)
        return None

    async def list_snapshot(self) -> Snapshot:
        """Every key under subnets/ as stored, with the listing's revision."""
        return await self.store.list_prefix(subnets_prefix(self.prefix))

    async def list_leases(self) -> tuple[list[Lease], set[IPv4Network], int]:
        """Valid leases, every subnet any key holds (valid or not), and the revision."""
        snap = await self.list_snapshot()
        self._listed_bad = set()
        leases: list[Lease] = []
        taken: set[IPv4Network] = set()
        for kv in snap.kvs:
            with contextlib.suppress(LeaseDecodeError):
                taken.add(parse_subnet_key(kv.key)[0])
            lease = self.decode(kv)
            if lease is not None:
                leases.append(lease)
        self.rejections.flush(force=True)
        self._reported = self._listed_bad  # forget keys that are gone or rewritten
        return leases, taken, snap.revision

    # -- writing -------------------------------------------------------------------------

    def key(self, subnet: IPv4Network) -> str:
        """The etcd key of a subnet's lease."""
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
                await self.store.delete(self.key(mine.subnet))
                continue

            subnet = pick_subnet(config, taken, previous, self._rng)
            grant = await self.store.grant(self.ttl)
            key = self.key(subnet)
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
        key = self.key(mine.subnet)
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
        key = self.key(lease.subnet)
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

    async def defend(self, lease: Lease) -> tuple[Lease, str]:
        """Our key was deleted or holds another value: put our lease back if it is still ours.

        The rule: the subnet is ours while the etcd lease we were granted for it is alive
        (we keep renewing it).  Whoever writes our key meanwhile (a tool, a typo, a
        compromised node: a live flannel node never does, since leases are only created
        with create-if-absent) is overwritten by a compare-and-swap.  Once our etcd lease is
        gone (expired during an outage, revoked) the subnet may legitimately belong to another
        node: LeaseLostError, and the daemon acquires a lease anew.  A reservation (no etcd
        lease) is the operator's to move: a changed reservation is lost too.

        Returns the lease (with the key's new revision) and what was done: ``intact`` (the
        key is ours after all), ``restored`` (re-created after a delete) or ``reasserted``.
        """
        key = self.key(lease.subnet)
        value = lease.attrs.to_json().encode()
        for _ in range(5):
            kv = await self.store.get(key)
            if kv is not None and kv.value == value and kv.lease_id == lease.etcd_lease_id:
                return replace(lease, revision=kv.mod_revision), "intact"
            if lease.reserved or await self.store.time_to_live(lease.etcd_lease_id) < 0:
                raise LeaseLostError(f"lease {lease.subnet} is no longer ours: our etcd lease "
                                     "is gone and the key " + ("was deleted" if kv is None
                                                               else "holds another value"))
            if kv is None:
                revision = await self.store.create(key, value, lease.etcd_lease_id)
                how = "restored"
            else:
                revision = await self.store.update(key, value, lease.etcd_lease_id, kv.mod_revision)
                how = "reasserted"
            if revision is not None:
                return replace(lease, revision=revision), how
        raise LeaseLostError(f"lease {lease.subnet}: the key keeps changing under us")

    async def put_reservation(self, subnet: IPv4Network, attrs: LeaseAttrs) -> None:
        await self.store.put(self.key(subnet), attrs.to_json().encode(), 0)

    async def delete_lease(self, subnet: IPv4Network) -> bool:
        return await self.store.delete(self.key(subnet))

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
