"""A cancelled task stays cancelled, whatever the call it was waiting in does.

On Python 3.11 ``asyncio.wait_for`` drops a cancellation that arrives in the same turn as the
awaited answer (CPython gh-86296); the task then goes on.  aetcd waits for a watch's creation
that way, and a daemon shutting down waited for ever on a watch whose task had been cancelled
(a 10 s shutdown timeout in CI, reproduced about 1 run in 8 under load).  Our own waits had the
same shape: the keeper's and every retry's sleep (``wait_or_stop``), the reconcile loop's
wait, the Kubernetes client's connect.  Each case here makes the answer and the cancellation
meet exactly so, deterministically.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from flanneld import kube_client as kc
from flanneld.backoff import wait_or_stop
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


async def test_a_sleep_whose_event_comes_with_the_cancel_ends_cancelled() -> None:
    """``wait_or_stop``: the event is set and the sleeper cancelled in one turn (the keeper's
    renew sleep at a shutdown: ``stopping`` set, then every task cancelled)."""
    event = asyncio.Event()
    task = asyncio.create_task(wait_or_stop(event, 5.0))
    await asyncio.sleep(0)  # asleep

    def set_and_cancel() -> None:
        event.set()
        task.cancel()

    asyncio.get_running_loop().call_soon(set_and_cancel)
    done, _ = await asyncio.wait({task}, timeout=2)
    assert task in done and task.cancelled()


async def test_a_sleep_still_ends_at_its_delay_or_its_event() -> None:
    event = asyncio.Event()
    await asyncio.wait_for(wait_or_stop(event, 0.01), 2)  # the delay
    sleeper = asyncio.create_task(wait_or_stop(event, 30.0))
    await asyncio.sleep(0)
    event.set()
    await asyncio.wait_for(sleeper, 2)  # the event, long before the delay


async def test_a_connect_that_completes_with_the_cancel_ends_cancelled() -> None:
    """The connection is made in the very turn the connecting task is cancelled."""
    client = kc.KubeClient(kc.KubeConfig(server="http://apiserver:8080"))
    tasks: list[asyncio.Task[Any]] = []
    opened: list[bool] = []

    async def open_() -> tuple[Any, Any]:
        loop = asyncio.get_running_loop()
        connected = loop.create_future()

        def connected_and_cancelled() -> None:
            connected.set_result(None)
            tasks[0].cancel()

        loop.call_soon(connected_and_cancelled)
        await connected
        opened.append(True)
        return None, None

    client._open = open_  # type: ignore[method-assign]
    tasks.append(asyncio.create_task(client._connect("get nodes")))
    done, _ = await asyncio.wait(set(tasks), timeout=2)
    assert tasks[0] in done and tasks[0].cancelled() and opened == []
