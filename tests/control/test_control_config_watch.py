"""A running daemon says once per change that the stored network config changed, what changed,
and that it keeps the config it started with until restarted (Go ignores it silently)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from polling import until as poll_until

from flanneld.config_watch import ConfigWatcher, describe_change
from flanneld.memory_store import MemoryStore
from flanneld.netconfig import parse_network_config

pytestmark = pytest.mark.unit
KEY = "/coreos.com/network/config"
START = b'{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}'


async def until(predicate: Callable[[], bool]) -> None:
    await poll_until(predicate, 5.0, 0.001)


def test_describe_change_names_each_field() -> None:
    old = parse_network_config(START)
    new = parse_network_config(b'{"Network":"10.6.0.0/16","Backend":{"Type":"host-gw"}}')
    text = describe_change(old, new)
    assert "network 10.5.0.0/16 -> 10.6.0.0/16" in text
    assert "Backend.Type vxlan -> host-gw" in text
    assert describe_change(old, parse_network_config(START)) == ""


async def test_each_change_is_reported_once() -> None:
    store = MemoryStore()
    await store.put(KEY, START)
    watcher = ConfigWatcher(store, KEY, parse_network_config(START))
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: store.requests.count("watch") == 1)
        await store.put(KEY + "-other", b"x")  # another key with the same prefix: not ours
        await store.put(KEY, b'{"Network": "10.5.0.0/16", "Backend": {"Type": "vxlan"}}')  # same config
        await store.put(KEY, b'{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan"}}')
        await until(lambda: len(watcher.reported) == 1)
        await store.put(KEY, b'{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan"}}')  # again
        await store.put(KEY, b'{"Netwrok":"10.6.0.0/16"}')
        await until(lambda: len(watcher.reported) == 2)
        await store.delete(KEY)
        await until(lambda: len(watcher.reported) == 3)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    changed, invalid, deleted = watcher.reported
    assert "network 10.5.0.0/16 -> 10.6.0.0/16" in changed
    assert "until it is restarted (as Go flanneld does)" in changed
    assert "invalid" in invalid and "Network" in invalid
    assert "was deleted" in deleted
