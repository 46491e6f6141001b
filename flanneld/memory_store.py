"""An in-memory LeaseStore with etcd's semantics, for unit tests of the allocation logic.

Revisions, etcd leases (with an injectable clock and explicit ``expire()``), create-if-absent
and compare-mod-revision transactions, prefix watches from a start revision, and compaction.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable

from flanneld.errors import StoreUnavailableError
from flanneld.store import CompactedError, EventKind, Grant, KeyValue, Snapshot, WatchEvent


class MemoryStore:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._data: dict[str, KeyValue] = {}
        self._history: list[tuple[int, WatchEvent]] = []
        self._revision = 1
        self._compacted = 0
        self._leases: dict[int, float] = {}  # id -> expiration
        self._next_lease = 0x1000
        self._changed = asyncio.Condition()
        self.available = True
        self.requests: list[str] = []

    def _check(self, op: str) -> None:
        self.requests.append(op)
        if not self.available:
            raise StoreUnavailableError(f"memory store: {op}: unavailable")

    async def _record(self, event: WatchEvent) -> None:
        self._history.append((self._revision, event))
        async with self._changed:
            self._changed.notify_all()

    async def get(self, key: str) -> KeyValue | None:
        self._check("get")
        return self._data.get(key)

    async def list_prefix(self, prefix: str) -> Snapshot:
        self._check("list")
        kvs = tuple(kv for k, kv in sorted(self._data.items()) if k.startswith(prefix))
        return Snapshot(kvs, self._revision)

    async def grant(self, ttl: int) -> Grant:
        self._check("grant")
        self._next_lease += 1
        expiration = self._clock() + ttl
        self._leases[self._next_lease] = expiration
        return Grant(self._next_lease, expiration)

    async def revoke(self, lease_id: int) -> None:
        self._check("revoke")
        if self._leases.pop(lease_id, None) is not None:
            await self._drop_keys_of(lease_id)

    async def time_to_live(self, lease_id: int) -> int:
        self._check("ttl")
        exp = self._leases.get(lease_id)
        return -1 if exp is None else max(0, int(exp - self._clock()))

    async def expire(self) -> None:
        """Expire every etcd lease whose time has come (the test advances the clock)."""
        now = self._clock()
        for lease_id, exp in list(self._leases.items()):
            if exp <= now:
                del self._leases[lease_id]
                await self._drop_keys_of(lease_id)

    async def _drop_keys_of(self, lease_id: int) -> None:
        for key, kv in list(self._data.items()):
            if kv.lease_id == lease_id:
                await self.delete(key)

    async def _put(self, key: str, value: bytes, lease_id: int) -> int:
        if lease_id and lease_id not in self._leases:
            raise StoreUnavailableError(f"memory store: lease {lease_id:x} not found")
        self._revision += 1
        old = self._data.get(key)
        created = old.create_revision if old is not None else self._revision
        kv = KeyValue(key, value, lease_id, self._revision, created)
        self._data[key] = kv
        await self._record(WatchEvent(EventKind.PUT, kv))
        return self._revision

    async def create(self, key: str, value: bytes, lease_id: int) -> int | None:
        self._check("create")
        if key in self._data:
            return None
        return await self._put(key, value, lease_id)

    async def update(self, key: str, value: bytes, lease_id: int, mod_revision: int) -> int | None:
        self._check("update")
        current = self._data.get(key)
        if (current.mod_revision if current else 0) != mod_revision:
            return None
        return await self._put(key, value, lease_id)

    async def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        self._check("put")
        return await self._put(key, value, lease_id)

    async def delete(self, key: str) -> bool:
        self._check("delete")
        if key not in self._data:
            return False
        old = self._data.pop(key)
        self._revision += 1
        await self._record(WatchEvent(EventKind.DELETE, KeyValue(key, b"", old.lease_id, self._revision)))
        return True

    def compact(self, revision: int | None = None) -> None:
        self._compacted = revision if revision is not None else self._revision
        self._history = [(r, e) for r, e in self._history if r > self._compacted]

    async def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        self._check("watch")
        if start_revision <= self._compacted:
            raise CompactedError(self._compacted + 1)
        next_rev = start_revision
        yield []  # established
        while True:
            batch = [e for r, e in self._history if r >= next_rev and e.kv.key.startswith(prefix)]
            if batch:
                next_rev = self._revision + 1
                for event in batch:
                    yield [event]
                continue
            if not self.available:
                raise StoreUnavailableError("memory store: watch broke")
            if self._compacted >= next_rev:
                raise CompactedError(self._compacted + 1)
            async with self._changed:
                await self._changed.wait()

    async def close(self) -> None:
        return None

    async def poke(self) -> None:
        """Wake watchers (after flipping ``available`` or compacting)."""
        async with self._changed:
            self._changed.notify_all()
