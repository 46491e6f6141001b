"""Watch ``<prefix>/subnets`` and turn etcd events into peer lease events.

Starts from the snapshot's revision + 1; on a broken stream resumes from the last revision seen
with capped backoff; on compaction re-lists and diffs against what it knew, so no event is lost
and none is repeated.  (Go flannel once hot-looped here after a compaction and filled disks with
logs: every retry path below sleeps and logs once per outage, not once per attempt.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from ipaddress import IPv4Network

from flanneld.backoff import Backoff
from flanneld.errors import StoreUnavailableError
from flanneld.lease import Lease, subnets_prefix
from flanneld.lease_book import LeaseBook, LeaseEvent, LeaseEventKind, diff_leases
from flanneld.store import CompactedError, EventKind, WatchEvent
from flanneld.subnet_manager import SubnetManager

log = logging.getLogger(__name__)

__all__ = ["LeaseEvent", "LeaseEventKind", "LeaseWatcher", "diff_leases"]


class LeaseWatcher:
    """Keeps the lease book (every key; ``known`` = the accepted leases, own included)
    current and yields what changed."""

    def __init__(
        self,
        manager: SubnetManager,
        leases: Iterable[Lease],
        revision: int,
        *,
        book: LeaseBook | None = None,
        on_reset: Callable[[str], None] | None = None,
        on_batch: Callable[[], None] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        backoff: Backoff | None = None,
    ) -> None:
        self.manager = manager
        self.book = book if book is not None else LeaseBook()
        for lease in leases:
            self.book.seed(subnets_prefix(manager.prefix) + lease.key, lease)
        self.revision = revision
        self._on_reset = on_reset or (lambda reason: None)
        self._on_batch = on_batch or (lambda: None)
        self._sleep = sleep
        self._backoff = backoff or Backoff(0.5, 30.0)
        self.connected = True
        self._wake = asyncio.Event()

    @property
    def known(self) -> dict[IPv4Network, Lease]:
        return self.book.accepted

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

    def _apply(self, event: WatchEvent) -> list[LeaseEvent]:
        if event.kind is EventKind.DELETE:
            return self.book.delete(event.kv.key, event.kv.mod_revision)
        return self.book.put(event.kv)

    async def _relist(self) -> tuple[list[LeaseEvent], int]:
        """List every key and fold the listing into the book; the events and its revision.

        What the watch already knows at a revision after the listing's stays as it is, so a
        watch event that overtook the listing is never undone by it.
        """
        snap = await self.manager.list_snapshot()
        events = self.book.load(snap.kvs, snap.revision)
        self._on_batch()
        return events, snap.revision

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
                    # The store yields an empty batch once the watch is established: "resumed"
                    # is logged then, not at the next lease event (minutes later in a quiet
                    # cluster).
                    if not self.connected:
                        log.info("lease watch resumed at revision %d", self.revision + 1)
                        self.connected = True
                    self._backoff.reset()
                    if not batch:
                        continue
                    out: list[LeaseEvent] = []
                    for event in batch:
                        self.revision = max(self.revision, event.kv.mod_revision)
                        out += self._apply(event)
                    self._on_batch()
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
                    self._on_reset("reconnect")  # once per outage, not once per retry
                await self._pause(self._backoff.next())
