"""Watch ``<prefix>/subnets`` and turn etcd events into peer lease events.

Starts from the snapshot's revision + 1; on a broken stream resumes from the last revision seen
with capped backoff; on compaction re-lists and diffs against what it knew, so no event is lost
and none is repeated.  (Go flannel once hot-looped here after a compaction and filled disks with
logs: every retry path below sleeps and logs once per outage, not once per attempt.)
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network

from flanneld.backoff import Backoff
from flanneld.errors import LeaseDecodeError, StoreUnavailableError
from flanneld.lease import Lease, parse_subnet_key, subnets_prefix
from flanneld.store import CompactedError, EventKind, WatchEvent
from flanneld.subnet_manager import SubnetManager

log = logging.getLogger(__name__)


class LeaseEventKind(enum.Enum):
    ADDED = "added"  # new or changed lease
    REMOVED = "removed"


@dataclass(frozen=True)
class LeaseEvent:
    kind: LeaseEventKind
    lease: Lease


def diff_leases(old: dict[IPv4Network, Lease], new: dict[IPv4Network, Lease]) -> list[LeaseEvent]:
    """Events that turn ``old`` into ``new`` (pure; used after every re-list)."""
    events = [LeaseEvent(LeaseEventKind.REMOVED, lease) for s, lease in old.items() if s not in new]
    events += [
        LeaseEvent(LeaseEventKind.ADDED, lease)
        for s, lease in new.items()
        if s not in old or old[s] != lease
    ]
    return events


class LeaseWatcher:
    """Keeps ``known`` (every valid lease, own included) current and yields what changed."""

    def __init__(
        self,
        manager: SubnetManager,
        leases: Iterable[Lease],
        revision: int,
        *,
        on_reset: Callable[[str], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self.manager = manager
        self.known: dict[IPv4Network, Lease] = {lease.subnet: lease for lease in leases}
        self.revision = revision
        self._on_reset = on_reset or (lambda reason: None)
        self._sleep = sleep
        self._backoff = backoff or Backoff(0.5, 30.0)
        self.connected = True
        self._wake = asyncio.Event()

    def wake(self) -> None:
        """Cut the current reconnect backoff short once (e.g. the daemon reached etcd again)."""
        self._wake.set()

    async def _pause(self, delay: float) -> None:
        """Sleep ``delay``, or less if woken; each wake-up ends exactly one pause."""
        if not self._wake.is_set():
            sleeper = asyncio.ensure_future(self._sleep(delay))
            waker = asyncio.ensure_future(self._wake.wait())
            try:
                await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                waker.cancel()
        self._wake.clear()

    def _apply(self, event: WatchEvent) -> LeaseEvent | None:
        try:
            subnet = parse_subnet_key(event.kv.key)[0]
        except LeaseDecodeError as exc:
            self.manager.decode_warnings.warn(event.kv, exc)
            return None
        old = self.known.get(subnet)
        if old is not None and old.revision >= event.kv.mod_revision:
            return None  # already known from a newer re-list: a late or repeated event
        if event.kind is EventKind.DELETE:
            self.known.pop(subnet, None)
            return None if old is None else LeaseEvent(LeaseEventKind.REMOVED, old)
        lease = self.manager.decode(event.kv)
        if lease is None:
            # A bad value replaced a good one: the node behind it is no longer usable.
            self.known.pop(subnet, None)
            return None if old is None else LeaseEvent(LeaseEventKind.REMOVED, old)
        self.known[subnet] = lease
        return LeaseEvent(LeaseEventKind.ADDED, lease)

    async def _relist(self) -> tuple[list[LeaseEvent], int]:
        """List the leases, fold them into ``known``; the events and the listing's revision.

        What the watch already knows at a revision after the listing's stays as it is, so a
        watch event that overtook the listing is never undone by it.
        """
        leases, _, revision = await self.manager.list_leases()
        listed = {lease.subnet: lease for lease in leases}
        for subnet, lease in self.known.items():
            if lease.revision > revision:
                listed[subnet] = lease
        events = diff_leases(self.known, listed)
        self.known = listed
        return events, revision

    async def resync(self) -> list[LeaseEvent]:
        """Re-list and report what the watch stream has not told us (a safety net run
        periodically, like an informer's resync; normally it finds nothing)."""
        events, _ = await self._relist()
        return events

    async def _resync_after_compaction(self) -> list[LeaseEvent]:
        while True:
            try:
                events, self.revision = await self._relist()
            except StoreUnavailableError as exc:
                delay = self._backoff.next()
                if self._backoff.attempts == 1:
                    log.warning("re-listing leases failed: %s; retrying with backoff", exc)
                await self._sleep(delay)
                continue
            return events

    async def events(self) -> AsyncIterator[list[LeaseEvent]]:
        prefix = subnets_prefix(self.manager.prefix)
        while True:
            try:
                async for batch in self.manager.store.watch_prefix(prefix, self.revision + 1):
                    if not self.connected:
                        log.info("lease watch resumed at revision %d", self.revision + 1)
                        self.connected = True
                    self._backoff.reset()
                    out = []
                    for event in batch:
                        self.revision = max(self.revision, event.kv.mod_revision)
                        lease_event = self._apply(event)
                        if lease_event is not None:
                            out.append(lease_event)
                    if out:
                        yield out
            except CompactedError as exc:
                log.warning("lease watch: %s; re-listing and diffing", exc)
                self._on_reset("compaction")
                events = await self._resync_after_compaction()
                if events:
                    yield events
            except StoreUnavailableError as exc:
                if self.connected:
                    log.warning("lease watch lost: %s; resuming from revision %d with backoff",
                                exc, self.revision + 1)
                    self.connected = False
                self._on_reset("reconnect")
                await self._pause(self._backoff.next())
