"""Subnet leases in the store: acquire, renew and read them, as Go flannel's subnet manager does.

Where Go flannel has known defects this does better while keeping the format: a lost creation
race picks another subnet instead of exiting, renewal revokes the superseded etcd lease and is a
compare-and-swap on the key's revision (so it never steals a subnet that changed hands), and
values that are not lease JSON are skipped with one warning each.

Dual stack (EnableIPv6): a lease's key is ``<v4>-<len>&<v6>-<len>`` and both halves are picked
by ``flanneld.allocation``.  Go deletes a lease of ours whose IPv6 half does not fit the config
(an IPv4-only lease once the network enables IPv6) and allocates both halves anew, losing the
node's IPv4 subnet; here the IPv4 half is kept and only the IPv6 half added (or dropped), the
lease moved to its new key (a reservation stays a reservation).  Likewise a previous IPv4 subnet
is reused even when the subnet file has no (usable) IPv6 half, where Go ignores both.  As the
key's name no longer is the IPv4 subnet alone, create-if-absent cannot stop two nodes from
taking one half under two different keys: after creating a dual key we look again, and yield
(delete ours, pick again) to a key created before ours that holds either half.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network

from flanneld.allocation import find_by_public_ip, pick_ipv6_subnet, pick_subnet
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
from flanneld.netconfig import UNSUPPORTED_FIELD, NetworkConfig, parse_network_config, unsupported_reason
from flanneld.rejection_log import RejectionLog
from flanneld.store import KeyValue, LeaseStore, Snapshot
from flanneld.subnets import overlaps

log = logging.getLogger(__name__)

SUBNET_TTL = 24 * 3600


def _halves(subnet: IPv4Network, ipv6_subnet: IPv6Network | None) -> str:
    """``10.5.1.0/24``, or ``10.5.1.0/24 + fc00:0:0:1::/64`` for a dual-stack lease (logs)."""
    return str(subnet) if ipv6_subnet is None else f"{subnet} + {ipv6_subnet}"


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
        """The validated network config the daemon can run; MissingNetworkConfigError or
        NetworkConfigError (also for a valid config this implementation cannot run yet:
        ``netconfig.unsupported_reason``, e.g. dual stack)."""
        kv = await self.store.get(config_key(self.prefix))
        if kv is None:
            raise MissingNetworkConfigError(f"no network config at {config_key(self.prefix)}")
        netconf = parse_network_config(kv.value)
        reason = unsupported_reason(netconf)
        if reason is not None:
            raise NetworkConfigError(UNSUPPORTED_FIELD, reason)
        return netconf

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
        leases, taken, _, revision = await self.list_leases_dual()
        return leases, taken, revision

    async def list_leases_dual(
        self,
    ) -> tuple[list[Lease], set[IPv4Network], set[IPv6Network], int]:
        """As ``list_leases``, plus every IPv6 half any key holds (valid or not)."""
        snap = await self.list_snapshot()
        self._listed_bad = set()
        leases: list[Lease] = []
        taken: set[IPv4Network] = set()
        taken6: set[IPv6Network] = set()
        for kv in snap.kvs:
            with contextlib.suppress(LeaseDecodeError):
                subnet, ipv6 = parse_subnet_key(kv.key)
                taken.add(subnet)
                if ipv6 is not None:
                    taken6.add(ipv6)
            lease = self.decode(kv)
            if lease is not None:
                leases.append(lease)
        self.rejections.flush(force=True)
        self._reported = self._listed_bad  # forget keys that are gone or rewritten
        return leases, taken, taken6, snap.revision

    # -- writing -------------------------------------------------------------------------

    def key(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> str:
        """The etcd key of a subnet's lease (``lease.key`` names both halves: see ``key_of``)."""
        return subnets_prefix(self.prefix) + subnet_key(subnet, ipv6_subnet)

    def key_of(self, lease: Lease) -> str:
        """The etcd key of a lease, with its IPv6 half if it has one."""
        return self.key(lease.subnet, lease.ipv6_subnet)

    async def acquire(
        self,
        attrs: LeaseAttrs,
        config: NetworkConfig,
        previous: IPv4Network | None = None,
        previous_ipv6: IPv6Network | None = None,
    ) -> Lease:
        """Flannel's acquire order; loops on lost races, raises OutOfSubnetsError when full.

        ``previous``/``previous_ipv6``: the subnets the subnet file recorded (FLANNEL_SUBNET,
        FLANNEL_IPV6_SUBNET), each reused when it is free and fits the config."""
        if not config.enable_ipv4:
            raise NetworkConfigError("EnableIPv4", "IPv6-only networks cannot be allocated: "
                                     "a lease needs an IPv4 subnet and PublicIP")
        value = attrs.to_json().encode()
        races = 0
        while True:
            leases, taken, taken6, _ = await self.list_leases_dual()
            mine = find_by_public_ip(leases, attrs.public_ip)
            if mine is not None:
                if config.contains_subnet(mine.subnet):
                    if config.ipv6_half_fits(mine.ipv6_subnet):
                        lease = await self._reuse(mine, attrs, value)
                    else:  # keep the IPv4 half; add (or drop) the IPv6 half
                        ipv6 = None
                        if config.enable_ipv6:
                            others6 = {n for n in taken6 if n != mine.ipv6_subnet}
                            ipv6 = pick_ipv6_subnet(config, others6, previous_ipv6, self._rng)
                        lease = await self._move(mine, ipv6, attrs, value)
                    if lease is not None:
                        return lease
                    continue  # the key changed under us: look again
                log.warning(
                    "lease %s holds our PublicIP %s but does not fit the network config; deleting it",
                    _halves(mine.subnet, mine.ipv6_subnet), attrs.public_ip,
                )
                await self.store.delete(self.key_of(mine))
                continue

            subnet = pick_subnet(config, taken, previous, self._rng)
            ipv6_subnet = (pick_ipv6_subnet(config, taken6, previous_ipv6, self._rng)
                           if config.enable_ipv6 else None)
            grant = await self.store.grant(self.ttl)
            key = self.key(subnet, ipv6_subnet)
            revision = await self.store.create(key, value, grant.lease_id)
            if revision is None:
                # Lost the race, or our own retried transaction already won: look at the key.
                kv = await self.store.get(key)
                if kv is not None and kv.lease_id == grant.lease_id:
                    revision = kv.mod_revision
                else:
                    await self.store.revoke(grant.lease_id)
                    races += 1
                    log.info("subnet %s was taken by another node meanwhile; picking again",
                             _halves(subnet, ipv6_subnet))
                    if previous == subnet:
                        previous = None
                    if previous_ipv6 == ipv6_subnet:
                        previous_ipv6 = None
                    continue
            if ipv6_subnet is not None:
                loser = await self._beaten(key, subnet, ipv6_subnet, revision)
                if loser is not None:
                    await self.store.revoke(grant.lease_id)  # deletes our key with it
                    races += 1
                    log.info("key %s, created before ours, holds %s; picking again",
                             loser, _halves(subnet, ipv6_subnet))
                    if previous == subnet:
                        previous = None
                    if previous_ipv6 == ipv6_subnet:
                        previous_ipv6 = None
                    continue
            if ipv6_subnet is None:
                log_event(log, "lease acquired", subnet=subnet, races_lost=races, ttl_s=self.ttl)
            else:
                log_event(log, "lease acquired", subnet=subnet, ipv6_subnet=ipv6_subnet,
                          races_lost=races, ttl_s=self.ttl)
            return Lease(subnet, attrs, grant.expiration, grant.lease_id, ipv6_subnet=ipv6_subnet,
                         revision=revision)

    async def _beaten(self, key: str, subnet: IPv4Network, ipv6_subnet: IPv6Network,
                      revision: int, ours: str = "") -> str | None:
        """The name of another key (neither ``key``, created at ``revision``, nor ``ours``)
        created before ``key`` that holds a half of it; None when ``key`` is the first."""
        for kv in (await self.list_snapshot()).kvs:
            if kv.key in (key, ours) or not kv.create_revision or kv.create_revision >= revision:
                continue
            try:
                other, other6 = parse_subnet_key(kv.key)
            except LeaseDecodeError:
                continue
            if overlaps(other, subnet) or (other6 is not None and overlaps(other6, ipv6_subnet)):
                return kv.key.rsplit("/", 1)[-1]
        return None

    async def _move(self, mine: Lease, ipv6_subnet: IPv6Network | None, attrs: LeaseAttrs,
                    value: bytes) -> Lease | None:
        """Our lease keeps its IPv4 half and gets ``ipv6_subnet`` as its IPv6 half (None: none):
        a new key (a reservation stays one), then the old key deleted and its etcd lease
        revoked.  None when the new key is taken meanwhile (the caller looks again)."""
        old_key, new_key = self.key_of(mine), self.key(mine.subnet, ipv6_subnet)
        grant = None if mine.reserved else await self.store.grant(self.ttl)
        lease_id = grant.lease_id if grant is not None else 0
        revision = await self.store.create(new_key, value, lease_id)
        if revision is not None and ipv6_subnet is not None:
            loser = await self._beaten(new_key, mine.subnet, ipv6_subnet, revision, ours=old_key)
            if loser is not None:
                log.info("key %s, created before ours, holds %s; picking again", loser, ipv6_subnet)
                if grant is None:
                    await self.store.delete(new_key)
                revision = None
        if revision is None:
            if grant is not None:
                await self.store.revoke(grant.lease_id)  # deletes a key we created with it
            return None
        await self.store.delete(old_key)
        if mine.etcd_lease_id:
            await self.store.revoke(mine.etcd_lease_id)
        log.warning("moved our %s %s to %s: %s", "reservation" if mine.reserved else "lease",
                    _halves(mine.subnet, mine.ipv6_subnet), _halves(mine.subnet, ipv6_subnet),
                    "the network config enables IPv6" if ipv6_subnet is not None
                    else "its IPv6 half does not fit the network config")
        return Lease(mine.subnet, attrs, grant.expiration if grant is not None else None,
                     lease_id, ipv6_subnet=ipv6_subnet, revision=revision)

    async def _reuse(self, mine: Lease, attrs: LeaseAttrs, value: bytes) -> Lease | None:
        key = self.key_of(mine)
        if mine.reserved:
            revision = await self.store.update(key, value, 0, mine.revision)
            if revision is None:
                return None
            log.info("reusing reserved subnet %s for PublicIP %s",
                     _halves(mine.subnet, mine.ipv6_subnet), attrs.public_ip)
            return replace(mine, attrs=attrs, expiration=None, revision=revision)
        grant = await self.store.grant(self.ttl)
        revision = await self.store.update(key, value, grant.lease_id, mine.revision)
        if revision is None:
            await self.store.revoke(grant.lease_id)
            return None
        if mine.etcd_lease_id:
            await self.store.revoke(mine.etcd_lease_id)
        log.info("reusing lease subnet=%s for PublicIP %s",
                 _halves(mine.subnet, mine.ipv6_subnet), attrs.public_ip)
        return replace(
            mine, attrs=attrs, expiration=grant.expiration, etcd_lease_id=grant.lease_id,
            revision=revision,
        )

    async def renew(self, lease: Lease) -> Lease:
        """A fresh etcd lease for our key; LeaseLostError when the key is no longer ours."""
        if lease.reserved:
            return lease
        key = self.key_of(lease)
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
        key = self.key_of(lease)
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

    async def put_reservation(self, subnet: IPv4Network, attrs: LeaseAttrs,
                              ipv6_subnet: IPv6Network | None = None) -> None:
        await self.store.put(self.key(subnet, ipv6_subnet), attrs.to_json().encode(), 0)

    async def delete_lease(self, subnet: IPv4Network, ipv6_subnet: IPv6Network | None = None) -> bool:
        return await self.store.delete(self.key(subnet, ipv6_subnet))

    async def datapath_ready(self) -> None:
        """The daemon programmed its datapath (the kube subnet manager tells the node)."""
        return None

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
