"""A cancelled task stays cancelled through the etcd store, whatever the client library does.

aetcd waits for a watch's creation with ``asyncio.wait_for``, which on Python 3.11 drops a
cancellation that arrives in the same turn as the awaited answer (CPython gh-86296).  A
daemon shutting down then waited for ever on a watch whose task had been cancelled (seen as a
10 s shutdown timeout in CI, reproduced about 1 run in 8 under load).  Here a fake client
swallows the cancellation exactly that way, deterministically, for the watch and a request.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flanneld.etcd_store import EtcdStore, parse_endpoints

pytestmark = pytest.mark.unit


async def swallowing_wait() -> None:
    """What aetcd's wait looks like when its answer and our cancellation meet: on 3.11 the
    wait returns normally and the cancellation is gone."""
    loop = asyncio.get_running_loop()
    answer = loop.create_future()
    me = asyncio.current_task()
    assert me is not None

    def answer_and_cancel() -> None:
        answer.set_result(None)
        me.cancel()

    loop.call_soon(answer_and_cancel)
    await asyncio.wait_for(answer, 5)


class ForeverWatch:
    """A watch with no events: iterating it waits until cancelled."""

    def __init__(self) -> None:
        self.cancelled = False

    def __aiter__(self) -> ForeverWatch:
        return self

    async def __anext__(self) -> Any:
        await asyncio.Event().wait()

    async def cancel(self) -> None:
        self.cancelled = True


class SwallowingClient:
    def __init__(self) -> None:
        self.watches: list[ForeverWatch] = []
        self.gets = 0

    async def watch_prefix(self, key: bytes, start_revision: int = 0) -> ForeverWatch:
        await swallowing_wait()
        self.watches.append(ForeverWatch())
        return self.watches[-1]

    async def get(self, key: bytes) -> None:
        self.gets += 1
        await swallowing_wait()


def store_with(client: SwallowingClient) -> EtcdStore:
    store = EtcdStore(parse_endpoints("http://127.0.0.1:2379"))
    store._clients[0] = client  # type: ignore[assignment]
    return store


async def test_a_watch_whose_creation_swallowed_the_cancel_ends_cancelled() -> None:
    client = SwallowingClient()
    store = store_with(client)

    async def consume() -> None:
        async for _ in store.watch_prefix("/coreos.com/network/subnets/", 1):
            pass

    task = asyncio.create_task(consume())
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
    assert [w.cancelled for w in client.watches] == [True]  # the created watch is let go


async def test_a_request_that_swallowed_the_cancel_ends_cancelled() -> None:
    client = SwallowingClient()
    store = store_with(client)
    task = asyncio.create_task(store.get("/coreos.com/network/config"))
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()
    assert client.gets == 1  # not retried on the next endpoint, not returned as an answer
