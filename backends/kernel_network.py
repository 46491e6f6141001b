"""The kernel network: what every kernel backend's ``Network`` does alike, written once.

vxlan and host-gw (and the IPv6 and wireguard networks to come) differ only in the kernel
objects a peer needs (``peer_spec`` / ``peer_objects``), the objects they own (``owns``) and how
they look at the kernel (``observe``); the rest is here:

- the per-peer state, held once: for each peer, its lease and its spec (what its objects depend
  on), by ``peer_sort_key``; the lease map itself is the daemon's lease book;
- what was applied (``AppliedState``), so an event is planned against it, not a kernel dump;
- ``apply``: lease events planned for the peers they name only (O(changes));
- ``repair``: the full pass (observe, diff, apply), in steps with a pause every ``STEP``
  objects, so that events go first; what an event decided while the repair looked is the
  event's (its peers' specs, its objects' keys), never overwritten from the repair's older
  snapshot.  Events queued behind a repair's netlink batch run after it (the applier's lock
  is first come, first served), so the later decision is the one the kernel keeps.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import Hashable, Iterator, Mapping, Sequence
from ipaddress import IPv4Network
from typing import Generic, TypeVar

from flanneld.backends.base import Backend, Network, ReconcileResult, log_peer_change
from flanneld.backends.family import V4, Half
from flanneld.backends.planner import (
    AppliedState,
    Key,
    count_repaired,
    diff_steps,
    peer_sort_key,
    plan_changed,
    summarize,
)
from flanneld.lease import Lease
from flanneld.netlink import Netlink
from flanneld.netops import Delete, KernelObject, Op, Replace

S = TypeVar("S", bound=Hashable)


class KernelNetwork(Network, Generic[S]):
    """A network programmed as kernel objects per peer (see the module docstring)."""

    # Objects looked at between two pauses of a repair: ~2 ms of planning at most.
    STEP = 500
    # A repair's ops go to the kernel this many at a time: the encoded requests and the
    # outcomes of 15000 ops at once (a first start with 5000 peers) were ~4 MB of peak RSS.
    APPLY_CHUNK = 2048

    def __init__(self, backend: Backend, lease: Lease, netlink: Netlink,
                 log: logging.Logger, half: Half = V4) -> None:
        super().__init__(backend, lease, half)
        self.netlink = netlink
        self.log = log
        # Per peer: its lease, its spec and the spec's objects (made once per spec).
        self._peers: dict[int, tuple[Lease, S, Sequence[KernelObject]]] = {}
        self._applied = AppliedState()
        # While a repair runs: the peers (sort keys) and object keys events decided.
        self._touched_peers: set[int] | None = None
        self._touched_objects: set[Key] | None = None
        self._repairing = asyncio.Lock()

    # -- what a backend supplies ---------------------------------------------------------

    @abc.abstractmethod
    def peer_spec(self, lease: Lease, previous: S | None) -> S | None:
        """What the peer's objects depend on (None: the lease cannot be programmed).
        ``previous`` is the spec made for this very lease object before, if any: return it
        when nothing it depends on changed, so planners skip the peer by identity."""

    @abc.abstractmethod
    def peer_objects(self, spec: S) -> Sequence[KernelObject]:
        """The kernel objects one peer needs."""

    @abc.abstractmethod
    def owns(self, obj: KernelObject) -> bool:
        """Whether an observed object no peer wants is ours to delete."""

    @abc.abstractmethod
    async def observe(self, known: Mapping[Key, KernelObject]) -> list[KernelObject]:
        """The kernel objects on this network's devices (the repair's view of the kernel);
        an object equal to one of ``known`` (what the repair wants) is returned as that one
        (``Netlink.routes``' ``known``)."""

    async def before_repair(self) -> tuple[int, bool]:
        """Device-level repair first: (ops it took, whether the kernel lost every entry, e.g.
        the device was recreated)."""
        return 0, False

    async def prefetch(self, leases: Sequence[Lease], full: bool) -> None:
        """Ask the kernel what ``peer_spec`` needs for ``leases`` (e.g. vxlan's DirectRouting
        asks whether each PublicIP is on-link); ``full``: for every peer, forgetting others."""

    # -- the network ---------------------------------------------------------------------

    @property
    def peer_count(self) -> int:
        return len(self._peers)

    def peer_leases(self) -> list[Lease]:
        """The leases of the peers programmed now."""
        return [peer[0] for peer in self._peers.values()]

    async def apply(self, changes: Mapping[IPv4Network, Lease | None]) -> ReconcileResult:
        wanted = {subnet: self.wanted(lease) for subnet, lease in changes.items()}
        await self.prefetch([p for p in wanted.values() if p is not None], full=False)
        # Each peer's objects before and after, by key: planned as they are kept (made once).
        old: dict[int, Sequence[KernelObject]] = {}
        new: dict[int, Sequence[KernelObject]] = {}
        for subnet, peer in wanted.items():
            key = peer_sort_key(subnet)
            before = self._peers.pop(key, None)
            if before is not None:
                old[key] = before[2]
            spec = self.peer_spec(peer, None) if peer is not None else None
            if peer is not None and spec is not None:
                objects = self.peer_objects(spec)
                self._peers[key] = (peer, spec, objects)
                new[key] = objects
            if self.announce:
                log_peer_change(self.log, before[0] if before is not None else None,
                                peer if spec is not None else None)
        if self._touched_peers is not None and self._touched_objects is not None:
            self._touched_peers.update(peer_sort_key(subnet) for subnet in wanted)
            for objects in (*old.values(), *new.values()):
                self._touched_objects.update(obj.key for obj in objects)
        ops = plan_changed(old, new, _as_is, self._applied.objects)
        outcomes = await self.netlink.apply(ops)
        self._applied.record(outcomes)
        return summarize(outcomes, 0, self.log)

    async def repair(self, leases: Mapping[IPv4Network, Lease]) -> ReconcileResult:
        async with self._repairing:
            self._touched_peers, self._touched_objects = set(), set()
            try:
                return await self._repair(list(leases.values()))
            finally:
                self._touched_peers = self._touched_objects = None

    async def _pause(self) -> None:
        await asyncio.sleep(0)

    async def _repair(self, leases: list[Lease]) -> ReconcileResult:
        repaired, lost = await self.before_repair()
        if lost:
            self._applied.reset(())
        peers = [p for lease in leases if (p := self.wanted(lease)) is not None]
        await self.prefetch(peers, full=True)
        specs: dict[int, tuple[Lease, S, Sequence[KernelObject]]] = {}
        for i, peer in enumerate(peers, 1):
            key = peer_sort_key(peer.subnet)
            hit = self._peers.get(key)
            before = hit[1] if hit is not None and hit[0] is peer else None
            spec = self.peer_spec(peer, before)
            if spec is not None:
                # Unchanged (same lease, same spec): the peer's entry as it is, objects and all.
                specs[key] = (hit if hit is not None and spec is before
                              else (peer, spec, self.peer_objects(spec)))
            if i % self.STEP == 0:
                await self._pause()
        want: dict[Key, KernelObject] = {}  # the desired objects by key, peers in order
        for i, key in enumerate(sorted(specs), 1):
            for obj in specs[key][2]:
                want[obj.key] = obj
            if i % self.STEP == 0:
                await self._pause()
        # What the kernel holds as we want it comes back as our own objects (at a restart
        # too, when nothing was applied yet): no second copy of 15000 objects.
        observed = await self.observe(want)
        ops: list[Op] = []
        have: dict[Key, KernelObject] = {}
        for _ in diff_steps(want, _drain(observed), self.owns, ops, have, self.STEP):
            await self._pause()
        # From here to the first netlink call nothing awaits: what events decided meanwhile
        # is folded in at once; each chunk is filtered again just before it is sent, and
        # events planned after that queue behind it (the applier's lock is first come, first
        # served), so an event's decision is always the later one.
        assert self._touched_peers is not None and self._touched_objects is not None
        touched = self._touched_objects
        ops = _untouched(ops, touched)
        repaired += len(ops) if lost else count_repaired(ops, self._applied.objects)
        for key in self._touched_peers:
            current = self._peers.get(key)
            if current is None:
                specs.pop(key, None)
            else:
                specs[key] = current
        self._peers = specs
        held = have  # what the kernel holds of ours (wanted keys, owned objects)
        for k in touched:
            if (decided := self._applied.objects.get(k)) is not None:
                held[k] = decided
            else:
                held.pop(k, None)
        self._applied.objects = held
        applied = failed = 0
        for start in range(0, len(ops), self.APPLY_CHUNK):
            chunk = _untouched(ops[start:start + self.APPLY_CHUNK], touched)
            outcomes = await self.netlink.apply(chunk)
            self._applied.record(outcomes)
            part = summarize(outcomes, 0, self.log)
            applied, failed = applied + part.applied, failed + part.failed
        return ReconcileResult(applied=applied, repaired=repaired, failed=failed)


def _as_is(objects: Sequence[KernelObject]) -> Sequence[KernelObject]:
    return objects


def _untouched(ops: list[Op], touched: set[Key]) -> list[Op]:
    """``ops`` without those on objects an event decided since the repair began."""
    if not touched:
        return ops
    return [op for op in ops if not isinstance(op, (Replace, Delete)) or op.obj.key not in touched]


def _drain(objects: list[KernelObject]) -> Iterator[KernelObject]:
    """The list's objects, each dropped from it as it is handed out: an observed object that
    nothing keeps is freed within the step that looked at it, not all 15000 at once."""
    while objects:
        yield objects.pop()
