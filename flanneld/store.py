"""The lease store interface: the few etcd v3 operations flannel's registry needs.

The subnet manager talks to this protocol only; ``etcd_store.EtcdStore`` is the real thing and
``memory_store.MemoryStore`` an in-memory twin for unit tests of the allocation logic.
Values are bytes, keys are str, revisions are etcd's.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Protocol

# (op, result, seconds) -> None; the daemon feeds metrics from it.  ``op`` is one of STORE_OPS.
RequestObserver = Callable[[str, str, float], None]

# Every request kind a store reports, one per protocol method (the metrics' label values:
# flanneld.metrics.ETCD_OPS is this set, tests/ops/test_ops_metrics.py checks the stores).
STORE_OPS = ("get", "list", "grant", "revoke", "ttl", "create", "update", "put", "delete", "watch")


@dataclass(frozen=True, slots=True)
class KeyValue:
    key: str
    value: bytes
    lease_id: int  # 0: the key has no etcd lease (a reservation)
    mod_revision: int
    # Revision that created the key (0 when unknown): the same on every node, so it orders
    # competing claims deterministically ("first holder wins", see lease_book).
    create_revision: int = 0


@dataclass(frozen=True)
class Snapshot:
    kvs: tuple[KeyValue, ...]
    revision: int


class EventKind(enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True)
class WatchEvent:
    kind: EventKind
    kv: KeyValue  # for DELETE, value is b"" and mod_revision the deletion's revision


@dataclass(frozen=True)
class Grant:
    """A fresh etcd lease: its id and when it runs out (unix time)."""

    lease_id: int
    expiration: float


class CompactedError(Exception):
    """The watch start revision was compacted away; re-list and diff."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revision compacted (oldest available: {compact_revision})")
        self.compact_revision = compact_revision


class LeaseStore(Protocol):
    async def get(self, key: str) -> KeyValue | None: ...

    async def list_prefix(self, prefix: str) -> Snapshot: ...

    async def grant(self, ttl: int) -> Grant: ...

    async def revoke(self, lease_id: int) -> None: ...

    async def time_to_live(self, lease_id: int) -> int:
        """Seconds left on an etcd lease (-1 when it no longer exists)."""
        ...

    async def create(self, key: str, value: bytes, lease_id: int) -> int | None:
        """Put only if the key does not exist (version == 0); the new mod revision, or None."""
        ...

    async def put(self, key: str, value: bytes, lease_id: int = 0) -> int:
        """Unconditional put; returns the key's new mod revision."""
        ...

    async def update(self, key: str, value: bytes, lease_id: int, mod_revision: int) -> int | None:
        """Put only if the key's mod revision is still ``mod_revision``; new revision or None."""
        ...

    async def delete(self, key: str) -> bool: ...

    def watch_prefix(self, prefix: str, start_revision: int) -> AsyncIterator[list[WatchEvent]]:
        """Batches of events from ``start_revision`` on, led by one empty batch as soon as the
        watch is established; raises CompactedError or StoreUnavailableError when the watch
        breaks (the caller resumes)."""
        ...

    async def close(self) -> None: ...
