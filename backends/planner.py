"""The pure planner shared by the kernel backends (vxlan, host-gw): diffing of kernel objects.

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
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network
from typing import Any

from flanneld.backends.base import ReconcileResult
from flanneld.backends.family import V4, Half
from flanneld.lease import Lease
from flanneld.netops import (
    Address,
    Delete,
    KernelObject,
    Op,
    Outcome,
    Replace,
    Route,
)
from flanneld.subnets import within

_REPLACE_ORDER = {"addr": 0, "fdb": 1, "neigh": 2, "route": 3, "unreachable": 4}
_DELETE_ORDER = {"route": 0, "neigh": 1, "fdb": 2, "addr": 3, "unreachable": 4}

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
    ops: list[Op] = []
    for _ in diff_steps({obj.key: obj for obj in desired}, observed, owned, ops, {},
                        step=_NEVER):
        pass
    return ops


_NEVER = 1 << 62


def diff_steps(
    want: dict[Key, KernelObject],
    observed: Iterable[KernelObject],
    owned: Callable[[KernelObject], bool],
    out: list[Op],
    have: dict[Key, KernelObject],
    step: int = 1000,
) -> Iterator[None]:
    """``diff`` as steps, of the desired objects by key (``want``, in desired order; emptied
    at the end): yields after every ``step`` objects looked at and leaves the plan in ``out``
    and the observed objects that matter (wanted keys, owned) in ``have``, so a caller on the
    event loop can let lease events go first between steps (a full pass over 5000 peers looks
    at 45000 objects; in one stretch that held events back ~80 ms).  ``want`` made before the
    kernel is observed is also what the observation may return equal objects as (the
    applier's ``known``), so the kernel's copies are never held."""
    seen = 0
    for obj in observed:
        key = obj.key
        wanted = want.get(key)
        if wanted is obj:  # the observation returned our own object (its ``known``)
            have[key] = obj
        elif wanted is not None:
            # An observed object equal to the desired one is kept as the desired one (which
            # the caller holds anyway), under the desired one's key: the observed copy and
            # its key's fields can be freed at once.
            if wanted == obj:
                have[wanted.key] = wanted
            else:
                have[key] = obj
        elif owned(obj):
            have[key] = obj
        seen += 1
        if seen % step == 0:
            yield
    buckets: list[list[Op]] = [[] for _ in _REPLACE_ORDER]
    for key, obj in want.items():
        if have.get(key) is not obj:
            buckets[_REPLACE_ORDER[obj.kind]].append(Replace(obj))
        seen += 1
        if seen % step == 0:
            yield
    deletes: list[KernelObject] = []
    for key, obj in have.items():
        if key not in want:
            deletes.append(obj)
        seen += 1
        if seen % step == 0:
            yield
    want.clear()
    yield
    deletes.sort(key=lambda o: (_DELETE_ORDER[o.kind], o.key))
    out.extend(op for bucket in buckets for op in bucket)
    out.extend(Delete(o) for o in deletes)


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
    network: IPv4Network | IPv6Network, subnet_len: int, ifindexes: set[int]
) -> Callable[[Route], bool]:
    """A route is ours when it sends a lease-sized subnet of the Network to one of our devices
    (our own subnet included: such a route via a gateway is what a peer's lease left behind
    when that subnet became ours)."""

    def owned(route: Route) -> bool:
        return (
            route.ifindex in ifindexes
            and route.dst.prefixlen == subnet_len
            and within(route.dst, network)
        )

    return owned


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


def plan_address(own: Lease, device_index: int, observed: Sequence[Address],
                 half: Half = V4) -> list[Op]:
    """``<subnet .0>/32`` (IPv6: ``<subnet ::>/128``) on the device and no other address of
    that family (all such addresses on it are ours; IPv6 link-local ones are the kernel's)."""
    subnet = half.subnet(own)
    assert subnet is not None
    want = Address(device_index, subnet.network_address, half.host_prefix)
    mine = [a for a in observed if a.ifindex == device_index and a.family == half.family
            and not (half.v6 and a.address.is_link_local)]
    return diff([want], mine, lambda _: True)
