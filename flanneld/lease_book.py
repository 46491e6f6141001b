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
from flanneld.lease import Lease, decode_lease_attrs, parse_subnet_key
from flanneld.lease_policy import LeasePolicy, Rejection, RejectReason
from flanneld.store import KeyValue


class LeaseEventKind(enum.Enum):
    ADDED = "added"  # new or changed lease
    REMOVED = "removed"


@dataclass(frozen=True)
class LeaseEvent:
    kind: LeaseEventKind
    lease: Lease


def key_name(key: str) -> str:
    return key.rsplit("/", 1)[-1]


def lease_from_kv(kv: KeyValue) -> Lease:
    """The lease a stored key/value describes; LeaseDecodeError says what is wrong."""
    subnet, ipv6 = parse_subnet_key(kv.key)
    return Lease(subnet=subnet, attrs=decode_lease_attrs(kv.value), expiration=None,
                 etcd_lease_id=kv.lease_id, ipv6_subnet=ipv6, revision=kv.mod_revision,
                 created=kv.create_revision)


def judge(kv: KeyValue, policy: LeasePolicy | None) -> Lease | Rejection:
    """The lease of ``kv``, or why it is not used."""
    name = key_name(kv.key)
    try:
        parse_subnet_key(name)
    except LeaseDecodeError as exc:
        return Rejection(name, RejectReason.BAD_KEY, str(exc), kv.mod_revision)
    try:
        lease = lease_from_kv(kv)
    except LeaseDecodeError as exc:
        return Rejection(name, RejectReason.BAD_VALUE, str(exc), kv.mod_revision)
    verdict = policy.check(lease) if policy is not None else None
    if verdict is not None:
        return Rejection(name, verdict[0], verdict[1], kv.mod_revision, lease)
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
    """Accepted leases by subnet (``accepted``), rejected keys by name (``rejected``)."""

    def __init__(self, policy: LeasePolicy | None = None,
                 on_rejected: Callable[[Rejection], None] | None = None) -> None:
        self.policy = policy
        self.accepted: dict[IPv4Network, Lease] = {}
        self.rejected: dict[str, Rejection] = {}
        self.counts: Counter[RejectReason] = Counter()  # rejected keys by reason, right now
        self._on_rejected = on_rejected
        self._revisions: dict[str, int] = {}  # key name -> last revision applied
        self._shadowed: dict[str, Lease] = {}  # valid leases that lost a subnet to an earlier key

    # -- changes -------------------------------------------------------------------------

    def put(self, kv: KeyValue) -> list[LeaseEvent]:
        """A key was written (watch PUT or one key of a listing)."""
        name = key_name(kv.key)
        if self._revisions.get(name, 0) >= kv.mod_revision > 0:
            return []
        return self._set(name, judge(kv, self.policy), kv.mod_revision)

    def delete(self, key: str, revision: int) -> list[LeaseEvent]:
        name = key_name(key)
        if self._revisions.get(name, 0) >= revision > 0:
            return []
        return self._set(name, None, revision)

    def seed(self, lease: Lease) -> list[LeaseEvent]:
        """Add an already decoded (and trusted) lease, e.g. from a listing made elsewhere."""
        return self._set(lease.key, lease, lease.revision)

    def load(self, kvs: Iterable[KeyValue], revision: int) -> list[LeaseEvent]:
        """Replace everything by a full listing taken at ``revision``; keys this book knows at a
        later revision (from the watch) keep what the book knows.  Returns the events."""
        fresh = LeaseBook(self.policy)
        for kv in kvs:
            fresh.put(kv)
        for name, rev in self._revisions.items():
            if rev > revision and fresh._revisions.get(name, 0) < rev:
                fresh._set(name, self._state(name), rev)
        # Tombstones at or before the listing are moot now: the listing says what exists.
        fresh._revisions = {n: r for n, r in fresh._revisions.items()
                            if r > revision or fresh._state(n) is not None}
        events = diff_leases(self.accepted, fresh.accepted)
        reported = {(r.key, r.revision) for r in self.rejected.values()}
        self.accepted, self.rejected, self.counts = fresh.accepted, fresh.rejected, fresh.counts
        self._revisions, self._shadowed = fresh._revisions, fresh._shadowed
        if self._on_rejected is not None:
            for rejection in self.rejected.values():
                if (rejection.key, rejection.revision) not in reported:
                    self._on_rejected(rejection)
        return events

    # -- internals -----------------------------------------------------------------------

    def _state(self, name: str) -> _State:
        rejection = self.rejected.get(name)
        if rejection is not None:
            shadowed = self._shadowed.get(name)
            return shadowed if shadowed is not None else rejection
        try:
            subnet = parse_subnet_key(name)[0]
        except LeaseDecodeError:
            return None
        lease = self.accepted.get(subnet)
        return lease if lease is not None and lease.key == name else None

    def _reject(self, rejection: Rejection) -> None:
        self.rejected[rejection.key] = rejection
        self.counts[rejection.reason] += 1
        if self._on_rejected is not None:
            self._on_rejected(rejection)

    def _unreject(self, name: str) -> None:
        old = self.rejected.pop(name, None)
        if old is not None:
            self.counts[old.reason] -= 1
            if not self.counts[old.reason]:
                del self.counts[old.reason]
        self._shadowed.pop(name, None)

    def _set(self, name: str, state: _State, revision: int) -> list[LeaseEvent]:
        self._revisions[name] = revision
        events: list[LeaseEvent] = []
        # Take the key's previous state out: it may have held a subnet.
        self._unreject(name)
        try:
            subnet: IPv4Network | None = parse_subnet_key(name)[0]
        except LeaseDecodeError:
            subnet = None
        holder = self.accepted.get(subnet) if subnet is not None else None
        vacated = holder is not None and holder.key == name
        if isinstance(state, Lease):
            return self._claim(state, vacated)
        if isinstance(state, Rejection):
            self._reject(state)
        if vacated and subnet is not None and holder is not None:
            del self.accepted[subnet]
            successor = self._successor(subnet)
            if successor is not None:
                self._unreject(successor.key)
                self.accepted[subnet] = successor
                events.append(LeaseEvent(LeaseEventKind.ADDED, successor))
            else:
                events.append(LeaseEvent(LeaseEventKind.REMOVED, holder))
        return events

    def _claim(self, lease: Lease, holds: bool) -> list[LeaseEvent]:
        subnet = lease.subnet
        holder = self.accepted.get(subnet)
        if holder is not None and not holds and _order(holder) < _order(lease):
            self._shadow(lease, holder)
            return []
        if holder is not None and not holds:
            self._shadow(holder, lease)
        self.accepted[subnet] = lease
        return [LeaseEvent(LeaseEventKind.ADDED, lease)]

    def _shadow(self, loser: Lease, winner: Lease) -> None:
        self._reject(Rejection(loser.key, RejectReason.OVERLAP,
                               f"subnet {loser.subnet} is already held by key {winner.key} "
                               "(created earlier: the first holder wins)", loser.revision))
        self._shadowed[loser.key] = loser

    def disowned_routes(self) -> frozenset[tuple[IPv4Network, IPv4Address]]:
        """(subnet, PublicIP) of every lease refused by the policy: a route to that subnet via
        that address exists only because a flannel once accepted the lease."""
        return frozenset((r.lease.subnet, r.lease.attrs.public_ip)
                         for r in self.rejected.values() if r.lease is not None)

    def _successor(self, subnet: IPv4Network) -> Lease | None:
        claims = [lease for lease in self._shadowed.values() if lease.subnet == subnet]
        return min(claims, key=_order) if claims else None


def _order(lease: Lease) -> tuple[int, str]:
    """First holder first: lower create revision, then key name (0 = unknown sorts last)."""
    return (lease.created or 1 << 62, lease.key)
