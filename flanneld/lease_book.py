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
In a dual-stack network (the policy judges IPv6 halves) the IPv6 half is claimed the same way:
``10.5.1.0-24&fc00::-64`` and a later ``10.5.2.0-24&fc00::-64`` cannot both be used.

Precisely: the accepted keys are what taking the valid leases in create order (then key
order) and accepting each whose halves no lease accepted before it holds gives.  That depends
only on the set of current keys, never on the order events came in; a change is propagated
from the key that changed to the later claims it frees or displaces, in create order (so the
work is proportional to what changes, not to the number of keys).

Every key's last revision is remembered (deleted ones until the next full listing), so a late
or repeated watch event, or a listing older than what the watch already told, undoes nothing.
"""

from __future__ import annotations

import bisect
import enum
import heapq
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network

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
_Res = IPv4Network | IPv6Network  # what a lease claims: its subnet, and its IPv6 half
_Order = tuple[int, str]


class _Change:
    """What one change did: the accepted lease of each IPv4 subnet before it touched it, the
    keys whose status may have moved, and the propagation's work list."""

    __slots__ = ("before", "chains", "heap", "keys", "queued")

    def __init__(self) -> None:
        self.before: dict[IPv4Network, Lease | None] = {}
        self.keys: set[str] = set()
        self.heap: list[_Order] = []
        self.queued: set[str] = set()
        # key -> freed claims it is the next candidate for (passed on if it cannot take them)
        self.chains: dict[str, set[_Res]] = {}

    def push(self, order: _Order) -> None:
        if order[1] not in self.queued:
            self.queued.add(order[1])
            heapq.heappush(self.heap, order)


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
        # IPv6 halves compete only when the policy judges them (dual stack).
        self._dual = policy is not None and policy.dual_stack
        self._valid: dict[str, Lease] = {}  # key -> its lease, for every key that passed the policy
        self._orders: dict[str, _Order] = {}  # key -> its place in the queue (valid keys)
        self._claims: dict[_Res, list[_Order]] = {}  # subnet or IPv6 half -> valid claims, in order
        self._holders: dict[_Res, str] = {}  # subnet or IPv6 half -> key of the accepted lease
        self._shadowed: dict[str, Lease] = {}  # valid leases that lost a claim to an earlier key
        self._revisions: dict[str, int] = {}  # key -> last revision applied
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

    def key_of(self, subnet: IPv4Network | IPv6Network) -> str | None:
        """The etcd key of the accepted lease of ``subnet`` (an IPv4 subnet, or in a dual-stack
        network an IPv6 half)."""
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
        self._valid, self._orders, self._claims = fresh._valid, fresh._orders, fresh._claims
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

    def disowned_routes6(self) -> frozenset[tuple[IPv6Network, IPv6Address]]:
        """As ``disowned_routes``, for the IPv6 halves: (IPv6 subnet, PublicIPv6) of every lease
        refused by the policy that has both."""
        return frozenset((r.lease.ipv6_subnet, r.lease.attrs.public_ipv6)
                         for r in self.rejected.values()
                         if r.lease is not None and r.lease.ipv6_subnet is not None
                         and r.lease.attrs.public_ipv6 is not None)

    # -- internals -----------------------------------------------------------------------

    def _state(self, key: str) -> _State:
        lease = self._valid.get(key)
        return lease if lease is not None else self.rejected.get(key)

    def _res(self, lease: Lease) -> tuple[_Res, ...]:
        """What ``lease`` claims (both halves are in its key, so a key always claims the same)."""
        if self._dual and lease.ipv6_subnet is not None:
            return (lease.subnet, lease.ipv6_subnet)
        return (lease.subnet,)

    def _set(self, key: str, state: _State, revision: int) -> list[LeaseEvent]:
        self.version += 1
        self._revisions[key] = revision
        change = _Change()
        change.keys.add(key)
        old = self._valid.get(key)
        new = state if isinstance(state, Lease) else None
        if old is not None and (new is None or _order(new, key) != self._orders[key]
                                or self._res(new) != self._res(old)):
            self._withdraw(key, old, change)
            old = None
        if new is not None and old is not None:  # rewritten in place: keeps its standing
            self._valid[key] = new
            if self._holders.get(old.subnet) == key:
                self._touch(old.subnet, change)
                self.accepted[new.subnet] = new
            else:
                self._shadowed[key] = new
        elif new is not None:
            order = _order(new, key)
            self._valid[key], self._orders[key], self._shadowed[key] = new, order, new
            for res in self._res(new):
                bisect.insort(self._claims.setdefault(res, []), order)
            change.push(order)
        self._propagate(change)
        for k in change.keys:
            self._update_rejection(k, state if k == key and isinstance(state, Rejection) else None)
        return self._events(change, key if new is not None else None)

    def _withdraw(self, key: str, lease: Lease, change: _Change) -> None:
        """``key`` no longer claims anything (deleted, refused, or re-created): what it held is
        free for the next claim."""
        order = self._orders.pop(key)
        del self._valid[key]
        for res in self._res(lease):
            claims = self._claims[res]
            del claims[bisect.bisect_left(claims, order)]
            if not claims:
                del self._claims[res]
        if self._holders.get(lease.subnet) == key:
            self._release(key, lease, order, change)
        else:
            self._shadowed.pop(key, None)

    def _touch(self, subnet: IPv4Network, change: _Change) -> None:
        if subnet not in change.before:
            change.before[subnet] = self.accepted.get(subnet)

    def _release(self, key: str, lease: Lease, order: _Order, change: _Change) -> None:
        """``key`` gives up what it still holds; each freed claim goes to the next claim."""
        freed = [res for res in self._res(lease) if self._holders.get(res) == key]
        if lease.subnet in freed:
            self._touch(lease.subnet, change)
            del self.accepted[lease.subnet]
        for res in freed:
            del self._holders[res]
        for res in freed:
            self._offer(res, order, change)

    def _offer(self, res: _Res, after: _Order, change: _Change) -> None:
        """``res`` is free: the first claim on it after ``after`` is looked at (and if it cannot
        take it, the one after that: see ``_evaluate``)."""
        claims = self._claims.get(res)
        if not claims:
            return
        i = bisect.bisect_right(claims, after)
        if i < len(claims):
            change.chains.setdefault(claims[i][1], set()).add(res)
            change.push(claims[i])

    def _propagate(self, change: _Change) -> None:
        while change.heap:
            order = heapq.heappop(change.heap)
            change.queued.discard(order[1])
            self._evaluate(order, change)

    def _blocker(self, key: str, lease: Lease, order: _Order) -> tuple[_Res, str] | None:
        """The first claim of ``key`` an earlier key holds, with that key."""
        for res in self._res(lease):
            holder = self._holders.get(res)
            if holder is not None and holder != key and self._orders[holder] < order:
                return res, holder
        return None

    def _evaluate(self, order: _Order, change: _Change) -> None:
        key = order[1]
        lease = self._valid.get(key)
        if lease is None or self._orders[key] != order:
            return
        change.keys.add(key)
        held = self._holders.get(lease.subnet) == key
        blocked = self._blocker(key, lease, order) is not None
        if not held and not blocked:
            self._accept(key, lease, change)
        elif held and blocked:  # cannot happen (taking displaces), kept for safety
            self._release(key, lease, order, change)
            self._shadowed[key] = lease
        for res in change.chains.pop(key, ()):
            if res not in self._holders:  # still free: the next claim may take it
                self._offer(res, order, change)

    def _accept(self, key: str, lease: Lease, change: _Change) -> None:
        """``key`` takes what it claims; later holders of any of it lose all they hold."""
        displaced = {self._holders[res] for res in self._res(lease)
                     if self._holders.get(res, key) != key}
        self._touch(lease.subnet, change)
        for res in self._res(lease):
            self._holders[res] = key
        self.accepted[lease.subnet] = lease
        self._shadowed.pop(key, None)
        for other in sorted(displaced, key=self._orders.__getitem__):
            loser = self._valid[other]
            self._release(other, loser, self._orders[other], change)
            self._shadowed[other] = loser
            change.keys.add(other)

    def _update_rejection(self, key: str, refusal: Rejection | None) -> None:
        """Bring ``rejected[key]`` in line with the key's standing; report a new rejection."""
        wanted = refusal
        loser = self._shadowed.get(key)
        if loser is not None:
            wanted = self._overlap(key, loser)
        old = self.rejected.get(key)
        if old == wanted:
            return
        if old is not None:
            del self.rejected[key]
            self.counts[old.reason] -= 1
            if not self.counts[old.reason]:
                del self.counts[old.reason]
        if wanted is not None:
            self.rejected[key] = wanted
            self.counts[wanted.reason] += 1
            if self._on_rejected is not None:
                self._on_rejected(wanted)

    def _overlap(self, key: str, loser: Lease) -> Rejection:
        found = self._blocker(key, loser, self._orders[key])
        assert found is not None, key
        res, winner = found
        what = (f"subnet {res}" if isinstance(res, IPv4Network)
                else f"IPv6 subnet {res} (the IPv6 half)")
        return Rejection(key, RejectReason.OVERLAP,
                         f"{what} is already held by key {key_name(winner)} (created earlier: "
                         "the first holder wins)", loser.revision)

    def _events(self, change: _Change, written: str | None) -> list[LeaseEvent]:
        """Removals first (a half that moves to another lease is withdrawn before it is
        added), then additions and changes; the written key's lease is always (re)announced."""
        events: list[LeaseEvent] = []
        added: list[LeaseEvent] = []
        for subnet, before in change.before.items():
            after = self.accepted.get(subnet)
            if after is None:
                if before is not None:
                    events.append(LeaseEvent(LeaseEventKind.REMOVED, before))
            elif before != after or self._holders.get(subnet) == written:
                added.append(LeaseEvent(LeaseEventKind.ADDED, after))
        return events + added


def _order(lease: Lease, key: str) -> _Order:
    """First holder first: lower create revision, then key (0 = unknown sorts last)."""
    return (lease.created or 1 << 62, key)
