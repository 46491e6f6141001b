"""The lease book: every key under ``<prefix>/subnets/``, split into accepted leases and
rejected keys, and the lease events that follow from each change.  Pure (no I/O, no clock).

Every key passes the same steps: the key must parse (``a.b.c.d-len``), the value must be lease
JSON, and the lease must pass the :class:`~flanneld.lease_policy.LeasePolicy`.  What fails is
kept in ``rejected`` with its reason (``flannelctl subnets`` and the metrics show it) and never
reaches a backend; a good lease that turns bad is removed like a deleted one.

First holder wins: when two keys name the same subnet (possible only through the IPv6 half of
a key, e.g. ``10.5.1.0-24`` and ``10.5.1.0-24&fc00::-64``), the key with the lower etcd create
revision is used and the other is rejected as ``overlap``; the create revision is the same on
every node, so all nodes pick the same one.  When the holder goes, the next claim takes over.

Every key's last revision is remembered (deleted ones until the next full listing), so a late
or repeated watch event, or a listing older than what the watch already told, undoes nothing.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from flanneld.errors import LeaseDecodeError
from flanneld.lease import Lease, decode_lease_attrs, key_name, parse_subnet_key
from flanneld.lease_policy import LeasePolicy, Rejection, RejectReason
from flanneld.store import KeyValue


class LeaseEventKind(enum.Enum):
    ADDED = "added"  # new or changed lease
    REMOVED = "removed"


@dataclass(frozen=True)
class LeaseEvent:
    kind: LeaseEventKind
    lease: Lease


def lease_from_kv(kv: KeyValue) -> Lease:
    """The lease a stored key/value describes; LeaseDecodeError says what is wrong."""
    subnet, ipv6 = parse_subnet_key(kv.key)
    return Lease(subnet=subnet, attrs=decode_lease_attrs(kv.value), expiration=None,
                 etcd_lease_id=kv.lease_id, ipv6_subnet=ipv6, revision=kv.mod_revision,
                 created=kv.create_revision)


def judge(kv: KeyValue, policy: LeasePolicy | None) -> Lease | Rejection:
    """The lease of ``kv``, or why it is not used."""
    try:
        parse_subnet_key(kv.key)
    except LeaseDecodeError as exc:
        return Rejection(kv.key, RejectReason.BAD_KEY, str(exc), kv.mod_revision)
    try:
        lease = lease_from_kv(kv)
    except LeaseDecodeError as exc:
        return Rejection(kv.key, RejectReason.BAD_VALUE, str(exc), kv.mod_revision)
    verdict = policy.check(lease) if policy is not None else None
    if verdict is not None:
        return Rejection(kv.key, verdict[0], verdict[1], kv.mod_revision, lease)
    return lease


def diff_leases(old: dict[IPv4Network, Lease], new: dict[IPv4Network, Lease]) -> list[LeaseEvent]:
    """Events that turn ``old`` into ``new``."""
    events = [LeaseEvent(LeaseEventKind.REMOVED, lease) for s, lease in old.items() if s not in new]
    events += [
        LeaseEvent(LeaseEventKind.ADDED, lease)
        for s, lease in new.items()
        if s not in old or old[s] != lease
    ]
    return events


_State = Lease | Rejection | None  # None: deleted


class LeaseBook:
    """Accepted leases by subnet (``accepted``), rejected keys by etcd key (``rejected``).

    Keys are identified by the whole etcd key (two keys may end alike: ``subnets/`` and
    ``subnets//``); ``key_name`` is only for display.
    """

    def __init__(self, policy: LeasePolicy | None = None,
                 on_rejected: Callable[[Rejection], None] | None = None) -> None:
        self.policy = policy
        self.accepted: dict[IPv4Network, Lease] = {}
        self.rejected: dict[str, Rejection] = {}
        self.counts: Counter[RejectReason] = Counter()  # rejected keys by reason, right now
        self._on_rejected = on_rejected
        self._holders: dict[IPv4Network, str] = {}  # subnet -> key of the accepted lease
        self._revisions: dict[str, int] = {}  # key -> last revision applied
        self._shadowed: dict[str, Lease] = {}  # valid leases that lost a subnet to an earlier key
        self.version = 0  # bumped on every change (readers can skip work when it did not move)

    # -- changes -------------------------------------------------------------------------

    def put(self, kv: KeyValue) -> list[LeaseEvent]:
        """A key was written (watch PUT or one key of a listing)."""
        if self._revisions.get(kv.key, 0) >= kv.mod_revision > 0:
            return []
        return self._set(kv.key, judge(kv, self.policy), kv.mod_revision)

    def delete(self, key: str, revision: int) -> list[LeaseEvent]:
        if self._revisions.get(key, 0) >= revision > 0:
            return []
        return self._set(key, None, revision)

    def seed(self, key: str, lease: Lease) -> list[LeaseEvent]:
        """Add an already decoded (and trusted) lease stored at ``key``."""
        return self._set(key, lease, lease.revision)

    def key_of(self, subnet: IPv4Network) -> str | None:
        """The etcd key of the accepted lease of ``subnet``."""
        return self._holders.get(subnet)

    def load(self, kvs: Iterable[KeyValue], revision: int) -> list[LeaseEvent]:
        """Replace everything by a full listing taken at ``revision``; keys this book knows at a
        later revision (from the watch) keep what the book knows.  Returns the events."""
        fresh = LeaseBook(self.policy)
        for kv in kvs:
            fresh.put(kv)
        for key, rev in self._revisions.items():
            if rev > revision and fresh._revisions.get(key, 0) < rev:
                fresh._set(key, self._state(key), rev)
        # Tombstones at or before the listing are moot now: the listing says what exists.
        fresh._revisions = {k: r for k, r in fresh._revisions.items()
                            if r > revision or fresh._state(k) is not None}
        events = diff_leases(self.accepted, fresh.accepted)
        reported = {(r.key, r.revision) for r in self.rejected.values()}
        self.accepted, self.rejected, self.counts = fresh.accepted, fresh.rejected, fresh.counts
        self._holders, self._revisions, self._shadowed = (
            fresh._holders, fresh._revisions, fresh._shadowed)
        self.version += 1
        if self._on_rejected is not None:
            for rejection in self.rejected.values():
                if (rejection.key, rejection.revision) not in reported:
                    self._on_rejected(rejection)
        return events

    def disowned_routes(self) -> frozenset[tuple[IPv4Network, IPv4Address]]:
        """(subnet, PublicIP) of every lease refused by the policy: a route to that subnet via
        that address exists only because a flannel once accepted the lease."""
        return frozenset((r.lease.subnet, r.lease.attrs.public_ip)
                         for r in self.rejected.values() if r.lease is not None)

    # -- internals -----------------------------------------------------------------------

    def _state(self, key: str) -> _State:
        rejection = self.rejected.get(key)
        if rejection is not None:
            shadowed = self._shadowed.get(key)
            return shadowed if shadowed is not None else rejection
        subnet = _subnet_of(key)
        if subnet is not None and self._holders.get(subnet) == key:
            return self.accepted[subnet]
        return None

    def _reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.key] = rejection
        self.counts[rejection.reason] += 1
        if self._on_rejected is not None:
            self._on_rejected(rejection)

    def _unreject(self, key: str) -> None:
        old = self.rejected.pop(key, None)
        if old is not None:
            self.counts[old.reason] -= 1
            if not self.counts[old.reason]:
                del self.counts[old.reason]
        self._shadowed.pop(key, None)

    def _set(self, key: str, state: _State, revision: int) -> list[LeaseEvent]:
        self.version += 1
        self._revisions[key] = revision
        # Take the key's previous state out: it may have held a subnet.
        self._unreject(key)
        subnet = state.subnet if isinstance(state, Lease) else _subnet_of(key)
        holds = subnet is not None and self._holders.get(subnet) == key
        if isinstance(state, Lease):
            return self._claim(key, state, holds)
        if isinstance(state, Rejection):
            self._reject(state)
        if not holds or subnet is None:
            return []
        holder = self.accepted.pop(subnet)
        del self._holders[subnet]
        successor = self._successor(subnet)
        if successor is None:
            return [LeaseEvent(LeaseEventKind.REMOVED, holder)]
        key_next, lease_next = successor
        self._unreject(key_next)
        self.accepted[subnet], self._holders[subnet] = lease_next, key_next
        return [LeaseEvent(LeaseEventKind.ADDED, lease_next)]

    def _claim(self, key: str, lease: Lease, holds: bool) -> list[LeaseEvent]:
        subnet = lease.subnet
        holder_key = self._holders.get(subnet)
        if holder_key is not None and not holds:
            holder = self.accepted[subnet]
            if _order(holder, holder_key) < _order(lease, key):
                self._shadow(key, lease, holder_key)
                return []
            self._shadow(holder_key, holder, key)
        self.accepted[subnet], self._holders[subnet] = lease, key
        return [LeaseEvent(LeaseEventKind.ADDED, lease)]

    def _shadow(self, key: str, loser: Lease, winner_key: str) -> None:
        self._reject(Rejection(key, RejectReason.OVERLAP,
                               f"subnet {loser.subnet} is already held by key "
                               f"{key_name(winner_key)} (created earlier: the first holder wins)",
                               loser.revision))
        self._shadowed[key] = loser

    def _successor(self, subnet: IPv4Network) -> tuple[str, Lease] | None:
        claims = [(k, lease) for k, lease in self._shadowed.items() if lease.subnet == subnet]
        return min(claims, key=lambda c: _order(c[1], c[0])) if claims else None


def _subnet_of(key: str) -> IPv4Network | None:
    try:
        return parse_subnet_key(key)[0]
    except LeaseDecodeError:
        return None


def _order(lease: Lease, key: str) -> tuple[int, str]:
    """First holder first: lower create revision, then key (0 = unknown sorts last)."""
    return (lease.created or 1 << 62, key)
