"""Tell the operator when the stored network config changes under a running daemon.

Go flanneld reads ``<prefix>/config`` once at start and silently ignores later changes; an
operator who edits it (``flannelctl config set``) then wonders why nothing happened.  We do the
same thing (a running fabric is not renumbered under its pods) but say so, once per change:
what changed, and that a restart applies it.  ``describe_change`` is pure.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from flanneld.backoff import Backoff
from flanneld.errors import FlannelError
from flanneld.netconfig import NetworkConfig, parse_network_config
from flanneld.store import CompactedError, EventKind, LeaseStore

log = logging.getLogger("flanneld.config")

_IGNORED = {"unknown_fields"}


def describe_change(old: NetworkConfig, new: NetworkConfig) -> str:
    """``Network 10.5.0.0/16 -> 10.6.0.0/16, Backend vxlan -> host-gw`` ('' when equal)."""
    parts = []
    for f in dataclasses.fields(old):
        if f.name in _IGNORED:
            continue
        a, b = getattr(old, f.name), getattr(new, f.name)
        if f.name == "backend":
            if a.type != b.type:
                parts.append(f"Backend.Type {a.type} -> {b.type}")
            if a.options != b.options:
                parts.append(f"Backend options {a.options} -> {b.options}")
            continue
        if a != b:
            parts.append(f"{f.name} {a} -> {b}")
    return ", ".join(parts)


class ConfigWatcher:
    """Watches the config key; logs each change (once per distinct value) until cancelled."""

    def __init__(self, store: LeaseStore, key: str, running: NetworkConfig, *,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.store, self.key, self.running = store, key, running
        self._sleep = sleep
        self._last: bytes | None = None  # the value last reported (or the running one)
        self.reported: list[str] = []

    def _report(self, value: bytes | None, revision: int) -> None:
        if value == self._last:
            return
        self._last = value
        if value is None:
            message = (f"network config {self.key} was deleted (revision {revision}); this daemon "
                       "keeps the config it started with")
        else:
            try:
                new = parse_network_config(value)
            except FlannelError as exc:
                message = (f"network config {self.key} changed to an invalid one (revision "
                           f"{revision}): {exc}; this daemon keeps the config it started with")
            else:
                change = describe_change(self.running, new)
                if not change:
                    return
                message = (f"network config {self.key} changed (revision {revision}): {change}; "
                           "this daemon keeps using the config it started with until it is "
                           "restarted (as Go flanneld does)")
        self.reported.append(message)
        log.warning("%s", message)

    async def run(self) -> None:
        backoff = Backoff(1.0, 30.0)
        revision = 0
        while True:
            try:
                kv = await self.store.get(self.key)
                if kv is None:
                    self._report(None, revision)
                else:  # silent while it equals what we run with
                    self._report(kv.value, kv.mod_revision)
                    revision = kv.mod_revision
                async for batch in self.store.watch_prefix(self.key, revision + 1):
                    backoff.reset()
                    for event in batch:
                        if event.kv.key != self.key:
                            continue  # another key that starts with ".../config"
                        revision = event.kv.mod_revision
                        self._report(None if event.kind is EventKind.DELETE else event.kv.value,
                                     revision)
            except CompactedError:
                revision = 0
            except FlannelError:  # etcd unreachable: the lease watch says so already
                await self._sleep(backoff.next())
