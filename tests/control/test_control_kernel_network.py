"""The shared kernel network (backends/kernel_network.py) on an in-memory kernel, no root:
events applied while a repair is between its steps win over the repair's older snapshot, the
repair pauses every STEP objects, drift is counted, and a network's lifecycle holds.

The kernel here is a dict behind the applier's interface; its calls are served first come,
first served after one loop turn, as the real applier's lock and worker thread serve them.
"""

from __future__ import annotations

import asyncio
import copy
import gc
import weakref
from collections.abc import Awaitable, Callable
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest

from flanneld.backends.base import BackendContext, ExternalInterface
from flanneld.backends.hostgw import HostGWBackend, HostGWNetwork
from flanneld.backends.kernel_network import KernelNetwork
from flanneld.backends.planner import Key
from flanneld.lease import Lease, LeaseAttrs
from flanneld.netconfig import network_config_from_dict
from flanneld.netops import AF_INET, Address, Delete, KernelObject, Op, OpResult, Outcome, Replace, Route

pytestmark = pytest.mark.unit

EXT = 2
NETWORK = IPv4Network("10.224.0.0/12")
OWN = Lease(IPv4Network("10.224.0.0/24"), LeaseAttrs(IPv4Address("198.18.0.1"), "host-gw"))


class MemoryKernel:
    """The part of ``Netlink`` a kernel network uses, over a dict of objects."""

    def __init__(self) -> None:
        self.objects: dict[Key, KernelObject] = {}
        self.batches: list[list[Op]] = []
        self.before_batch: Callable[[int], Awaitable[None]] | None = None

    async def apply(self, ops: list[Op]) -> list[Outcome]:
        if self.before_batch is not None:
            await self.before_batch(len(self.batches))
        await asyncio.sleep(0)
        self.batches.append(list(ops))
        out = []
        for op in ops:
            assert isinstance(op, (Replace, Delete))
            if isinstance(op, Replace):
                self.objects[op.obj.key] = op.obj
                out.append(Outcome(op, OpResult.OK))
            else:
                gone = self.objects.pop(op.obj.key, None) is None
                out.append(Outcome(op, OpResult.ALREADY_GONE if gone else OpResult.OK))
        return out

    async def routes(self, family: int = AF_INET,
                     known: dict[Key, KernelObject] | None = None) -> list[Route]:
        """As a dump: equal copies of the kernel's objects, or the known ones when equal."""
        await asyncio.sleep(0)
        out = []
        for o in self.objects.values():
            if isinstance(o, Route) and o.family == family:
                same = (known or {}).get(o.key)
                out.append(same if isinstance(same, Route) and same == o else copy.copy(o))
        return out

    async def addresses(self, ifindex: int | None = None, family: int = AF_INET) -> list[Address]:
        return []

    def routes_by_dst(self) -> dict[IPv4Network, IPv4Address | None]:
        return {o.dst: o.gateway for o in self.objects.values()  # type: ignore[misc]
                if isinstance(o, Route)}


def peer(i: int, gateway: str | None = None) -> Lease:
    subnet = IPv4Network((int(NETWORK.network_address) + (i + 1) * 256, 24))
    ip = gateway or str(IPv4Address(int(IPv4Address("198.18.1.0")) + i))
    return Lease(subnet, LeaseAttrs(IPv4Address(ip), "host-gw"), etcd_lease_id=1)


def network(kernel: MemoryKernel) -> HostGWNetwork:
    ctx = BackendContext(
        ExternalInterface("eth0", EXT, OWN.attrs.public_ip, OWN.attrs.public_ip, 1500),
        network_config_from_dict({"Network": str(NETWORK), "Backend": {"Type": "host-gw"}}))
    backend = HostGWBackend(ctx, kernel)  # type: ignore[arg-type]
    return HostGWNetwork(backend, OWN)


def leases(n: int) -> dict[IPv4Network, Lease]:
    table = {p.subnet: p for p in map(peer, range(n))}
    table[OWN.subnet] = OWN  # the book holds our own lease too: never a peer
    return table


def on_pause(net: KernelNetwork[Any], at: int, action: Callable[[], Awaitable[None]]) -> list[int]:
    """Run ``action`` (as another task would) at the repair's ``at``-th pause; count pauses."""
    count = [0]
    real = net._pause

    async def pause() -> None:
        count[0] += 1
        if count[0] == at:
            await action()
        await real()

    net._pause = pause  # type: ignore[method-assign]
    return count


N = 3000  # 3000 peers: 12000 objects looked at by a repair, 24 pauses at STEP 500


@pytest.mark.parametrize("at", [1, 6, 7, 20])  # specs, the last before observing, after it, diffing
def test_events_during_a_repair_win_over_its_snapshot(at: int) -> None:
    async def main() -> None:
        kernel = MemoryKernel()
        net = network(kernel)
        table = leases(N)
        first = await net.repair(table)
        assert (first.applied, first.failed, net.peer_count) == (N, 0, N)

        gone, moved, new = peer(10).subnet, peer(11, "198.18.9.9"), peer(N + 5)
        snapshot = dict(table)  # what the repair sees: none of the three events

        async def events() -> None:
            await net.apply({gone: None, moved.subnet: moved, new.subnet: new})

        count = on_pause(net, at, events)
        await net.repair(snapshot)
        assert count[0] >= at
        routes = kernel.routes_by_dst()
        assert gone not in routes
        assert routes[moved.subnet] == IPv4Address("198.18.9.9")
        assert routes[new.subnet] == new.attrs.public_ip
        assert net.peer_count == N
        assert {lease.subnet for lease in net.peer_leases()} == set(routes)

        # The book now holds the events: a repair over it finds the kernel right.
        del table[gone]
        table[moved.subnet], table[new.subnet] = moved, new
        again = await net.repair(table)
        assert (again.applied, again.repaired, again.failed) == (0, 0, 0)

    asyncio.run(main())


def test_repair_pauses_every_step_objects() -> None:
    """Between two pauses a repair looks at no more than STEP objects (specs, desired,
    observed, compared): an event waits for one step, not for the whole pass."""

    async def main() -> None:
        kernel = MemoryKernel()
        net = network(kernel)
        table = leases(N)
        await net.repair(table)
        work = [0]
        stretches: list[int] = []
        real_spec, real_owns = net.peer_spec, net.owns

        def spec(lease: Lease, previous: Route | None) -> Route:
            work[0] += 1
            return real_spec(lease, previous)

        def owns(obj: KernelObject) -> bool:
            work[0] += 1
            return real_owns(obj)

        real_pause = net._pause

        async def pause() -> None:
            stretches.append(work[0])
            work[0] = 0
            await real_pause()

        net.peer_spec, net.owns, net._pause = spec, owns, pause  # type: ignore[method-assign]
        kernel.objects.pop(("route", 254, peer(3).subnet))  # drift
        result = await net.repair(table)
        assert (result.repaired, result.applied) == (1, 1)
        assert len(stretches) >= 4 * N // net.STEP - 1
        assert max(stretches) <= net.STEP

    asyncio.run(main())


def test_repair_removes_stale_and_foreign_routes_but_not_others() -> None:
    async def main() -> None:
        kernel = MemoryKernel()
        net = network(kernel)
        stale = Route(peer(50).subnet, EXT, IPv4Address("198.18.7.7"))
        device_route = Route(IPv4Network("198.18.0.0/24"), EXT)  # not via a gateway: not ours
        other_dev = Route(peer(51).subnet, 9, IPv4Address("198.18.7.8"))  # another device
        for obj in (stale, device_route, other_dev):
            kernel.objects[obj.key] = obj
        result = await net.repair(leases(3))
        routes = kernel.routes_by_dst()
        assert result.repaired == 1  # the stale delete: the last applied state had none of it
        assert set(routes) == {device_route.dst, other_dev.dst, *(peer(i).subnet for i in range(3))}

    asyncio.run(main())


def test_an_event_between_two_chunks_of_a_repair_is_not_undone() -> None:
    """A first start programs 3000 routes in chunks; a peer removed (and one moved) by events
    after the first chunk was sent stays removed (moved), although the repair had planned
    their routes from its snapshot."""

    async def main() -> None:
        kernel = MemoryKernel()
        net = network(kernel)
        net.APPLY_CHUNK = 500
        table = leases(N)
        gone, moved = peer(N - 10).subnet, peer(N - 11, "198.18.9.9")

        async def event(batch: int) -> None:
            if batch == 1:  # the first chunk is in the kernel; the second not yet
                kernel.before_batch = None
                await net.apply({gone: None, moved.subnet: moved})

        kernel.before_batch = event
        result = await net.repair(table)
        assert len(kernel.batches) >= N // 500
        routes = kernel.routes_by_dst()
        assert gone not in routes
        assert routes[moved.subnet] == IPv4Address("198.18.9.9")
        assert result.failed == 0 and net.peer_count == N - 1
        del table[gone]
        table[moved.subnet] = moved
        again = await net.repair(table)
        assert (again.applied, again.repaired) == (0, 0)

    asyncio.run(main())


@pytest.mark.parametrize("restarted", [False, True])
def test_a_repair_keeps_no_observed_copy_of_what_it_wanted(restarted: bool) -> None:
    """A drift pass over a kernel that holds exactly what we want (a dump: equal objects,
    not ours) keeps none of the dump: the applied state's keys and objects are the planned
    ones, so 5000 peers are not held twice (~2 MB) until the next pass.  The same for the
    first pass of a restarted daemon (nothing applied yet, the kernel as it left it)."""

    async def main() -> None:
        kernel = MemoryKernel()
        net = network(kernel)
        table = leases(50)
        await net.repair(table)
        if restarted:
            net = network(kernel)
        kernel.objects = {k: copy.deepcopy(o) for k, o in kernel.objects.items()}
        dumped = [weakref.ref(o.dst) for o in kernel.objects.values()  # type: ignore[attr-defined]
                  if isinstance(o, Route)]
        assert len(dumped) == 50
        result = await net.repair(table)
        assert (result.applied, result.repaired, result.failed) == (0, 0, 0)
        kernel.objects.clear()
        gc.collect()
        assert [r for r in dumped if r() is not None] == []
        assert (await net.repair(table)).applied == 50  # the network still knows every peer

    asyncio.run(main())
