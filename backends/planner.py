"""Planner helpers shared by the kernel backends (vxlan, host-gw): pure diffing of kernel objects.

Why: Go flannel programs routes imperatively and needs a namespace even for small tests.  Here a
backend describes the objects it wants (``desired``) and which kernel objects it owns, and
``diff`` returns the ops that turn ``observed`` into ``desired``.  The same function serves the
three passes: the full pass at start (observed = a kernel dump, so stale entries of peers that
lost their lease are deleted), the incremental pass on a watch event (observed = what we applied
last), and the periodic drift-repair pass (a kernel dump again; whatever differs from the last
applied state is counted as repaired).

Op order is fixed so golden lists are stable: replaces first (addr, fdb, neigh, route: a route
never points at a neighbour that is not there yet), then deletes (route, neigh, fdb, addr: the
route stops attracting traffic before its neighbour goes).  Within a kind, ops sort by key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network
from typing import Any, Generic, TypeVar

from flanneld.backends.base import ReconcileResult
from flanneld.lease import Lease
from flanneld.netops import (
    Delete,
    KernelObject,
    Op,
    Outcome,
    Replace,
    Route,
)

T = TypeVar("T")

_REPLACE_ORDER = {"addr": 0, "fdb": 1, "neigh": 2, "route": 3}
_DELETE_ORDER = {"route": 0, "neigh": 1, "fdb": 2, "addr": 3}

Key = tuple[Any, ...]


def diff(
    desired: Iterable[KernelObject],
    observed: Iterable[KernelObject],
    owned: Callable[[KernelObject], bool],
) -> list[Op]:
    """Ops turning the owned part of ``observed`` into ``desired``.

    An observed object under a desired key with another value is replaced (whoever owns it: the
    slot is ours now); an observed object under no desired key is deleted only when ``owned``.
    Replaces keep the order of ``desired`` within each kind (callers list peers sorted), so a
    plan of 15000 objects needs no sort; deletes are sorted by key.
    """
    want: dict[Key, KernelObject] = {obj.key: obj for obj in desired}
    have: dict[Key, KernelObject] = {}
    for obj in observed:
        if obj.key in want or owned(obj):
            have[obj.key] = obj
    buckets: list[list[Op]] = [[] for _ in _REPLACE_ORDER]
    for key, obj in want.items():
        if have.get(key) != obj:
            buckets[_REPLACE_ORDER[obj.kind]].append(Replace(obj))
    deletes = [obj for key, obj in have.items() if key not in want]
    deletes.sort(key=lambda o: (_DELETE_ORDER[o.kind], o.key))
    return [op for bucket in buckets for op in bucket] + [Delete(o) for o in deletes]


def peer_sort_key(subnet: IPv4Network) -> int:
    """An int that orders subnets like IPv4Network does and hashes fast (IPv4Network.__hash__
    is Python code: with 5000 peers it dominated the cost of one incremental pass)."""
    return int(subnet.network_address) << 6 | subnet.prefixlen


def plan_changed(
    old: Mapping[int, Hashable],
    new: Mapping[int, Hashable],
    objects_of: Callable[[Any], Sequence[KernelObject]],
    applied: Mapping[Key, KernelObject],
) -> list[Op]:
    """Incremental plan: only peers whose spec changed (added, removed, different) are planned,
    against what we applied for them, so one lease change costs O(changed), not O(peers)."""
    desired: list[KernelObject] = []
    before: list[KernelObject] = []
    changed = [subnet for subnet, spec in new.items()
               if (old_spec := old.get(subnet)) is not spec and old_spec != spec]
    for subnet in sorted(changed):
        desired.extend(objects_of(new[subnet]))
        if (old_spec := old.get(subnet)) is not None:
            before.extend(objects_of(old_spec))
    before.extend(o for subnet, spec in old.items() if subnet not in new for o in objects_of(spec))
    observed = [applied[k] for k in {o.key for o in (*before, *desired)} if k in applied]
    return diff(desired, observed, lambda _: True)


def count_repaired(ops: Sequence[Op], applied: Mapping[Key, KernelObject]) -> int:
    """Ops of a full plan that the last applied state did not predict: a replace of something
    we believed present as is, or a delete of something we did not believe present."""
    repaired = 0
    for op in ops:
        if isinstance(op, Replace):
            repaired += applied.get(op.obj.key) == op.obj
        elif isinstance(op, Delete):
            repaired += op.obj.key not in applied
    return repaired


def route_owned_in(
    network: IPv4Network, subnet_len: int, own_subnet: IPv4Network | None, ifindexes: set[int]
) -> Callable[[Route], bool]:
    """A route is ours when it sends a lease-sized subnet of the Network to one of our devices."""

    def owned(route: Route) -> bool:
        return (
            route.ifindex in ifindexes
            and route.dst.prefixlen == subnet_len
            and route.dst.subnet_of(network)
            and route.dst != own_subnet
        )

    return owned


def peer_leases(
    peers: Mapping[IPv4Network, Lease], own: Lease, handles: Callable[[Lease], bool]
) -> list[Lease]:
    """Peer leases this backend programs (planners sort); the own subnet never counts."""
    return [
        lease
        for subnet, lease in peers.items()
        if handles(lease) and subnet != own.subnet and lease.attrs.public_ip != own.attrs.public_ip
    ]


class PeerMemo(Generic[T]):
    """Per-peer values derived once per lease object.

    The daemon hands the backend the same Lease objects pass after pass (a changed lease is a
    new object), so an identity check finds what changed with one dict lookup per peer, instead
    of redoing ``ipaddress`` comparisons and object construction for every peer on every
    incremental pass (with 3000 peers that cost ~10 ms per lease change).
    """

    def __init__(self) -> None:
        self._own: Lease | None = None
        self._memo: dict[int, tuple[Lease, T | None]] = {}

    def derive(
        self,
        peers: Mapping[IPv4Network, Lease],
        own: Lease,
        handles: Callable[[Lease], bool],
        make: Callable[[Lease], T | None],
    ) -> list[T]:
        """``make(lease)`` for every lease ``peer_leases`` would keep (None results dropped)."""
        if own is not self._own:
            self._own, self._memo = own, {}
        memo = self._memo
        fresh: dict[int, tuple[Lease, T | None]] = {}
        own_subnet, own_ip = own.subnet, own.attrs.public_ip
        out: list[T] = []
        for lease in peers.values():
            hit = memo.get(id(lease))
            if hit is not None and hit[0] is lease:
                value = hit[1]
            else:
                keep = handles(lease) and lease.subnet != own_subnet and lease.attrs.public_ip != own_ip
                value = make(lease) if keep else None
            fresh[id(lease)] = (lease, value)  # the lease is held here, so its id stays unique
            if value is not None:
                out.append(value)
        self._memo = fresh
        return out


@dataclass
class AppliedState:
    """The objects we believe the kernel holds because we put them there (or found them)."""

    objects: dict[Key, KernelObject] = field(default_factory=dict)

    def reset(self, observed: Iterable[KernelObject]) -> None:
        self.objects = {obj.key: obj for obj in observed}

    def record(self, outcomes: Sequence[Outcome]) -> None:
        """Fold outcomes in: a failed replace forgets the key, so the next pass retries it."""
        for outcome in outcomes:
            op = outcome.op
            if not isinstance(op, (Replace, Delete)):
                continue
            key = op.obj.key
            if isinstance(op, Replace):
                if outcome.ok:
                    self.objects[key] = op.obj
                else:
                    self.objects.pop(key, None)
            elif outcome.ok:
                self.objects.pop(key, None)


def summarize(outcomes: Sequence[Outcome], repaired: int,
              log: logging.Logger | None = None) -> ReconcileResult:
    """The pass's result; each failed operation is logged on ``log``."""
    failed = 0
    for o in outcomes:
        if not o.ok:
            failed += 1
            if log is not None:
                log.warning("%s failed: %s (errno %d %s)", o.kind, o.op, o.errno, o.message)
    return ReconcileResult(applied=len(outcomes) - failed, repaired=repaired, failed=failed)


