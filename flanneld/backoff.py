"""Capped exponential backoff with jitter, so an outage never turns into a hot loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from flanneld.errors import FlannelError, OutOfSubnetsError

T = TypeVar("T")
log = logging.getLogger("flanneld")


class Backoff:
    def __init__(
        self, initial: float = 0.5, cap: float = 30.0, factor: float = 2.0, jitter: float = 0.2
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.factor = factor
        self.jitter = jitter
        self._next = initial
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (grows until ``cap``)."""
        delay = self._next
        self._next = min(self.cap, self._next * self.factor)
        self.attempts += 1
        return delay * (1 + random.uniform(-self.jitter, self.jitter))

    def reset(self) -> None:
        self._next = self.initial
        self.attempts = 0


class GaveUpError(FlannelError):
    """``retry`` with ``give_up_after``: the deadline passed; says the last failure."""


async def wait_or_stop(event: asyncio.Event, delay: float | None) -> None:
    """Sleep ``delay`` seconds (None: no limit), or less when ``event`` is set.

    ``asyncio.timeout``, not ``wait_for``: on Python 3.11 wait_for drops a cancellation that
    arrives as the event is set (CPython gh-86296), and the sleeper would go on."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(delay):
            await event.wait()


async def retry(
    what: str,
    fn: Callable[[], Awaitable[T]],
    *,
    stopping: asyncio.Event,
    cap: float = 10.0,
    give_up_after: float | None = None,
    on_failure: Callable[[BaseException], None] = lambda exc: None,
    wait: Callable[[asyncio.Event, float | None], Awaitable[None]] = wait_or_stop,
) -> T:
    """Call ``fn`` until it succeeds (FlannelError and OSError are retried), with capped
    jittered backoff; each distinct failure is logged once, ``out of subnets`` as an error.
    CancelledError once ``stopping`` is set; with ``give_up_after``, GaveUpError naming the
    last failure once that many seconds have passed."""
    backoff = Backoff(0.5, cap)
    last = ""
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    while True:
        try:
            return await fn()
        except (FlannelError, OSError) as exc:
            on_failure(exc)
            message = str(exc)
            if deadline is not None and time.monotonic() >= deadline:
                raise GaveUpError(f"{what}: {message} (gave up after {give_up_after:.0f}s)") from None
            if message != last:
                level = logging.ERROR if isinstance(exc, OutOfSubnetsError) else logging.WARNING
                waiting = "" if give_up_after is None else f", for up to {give_up_after:.0f}s"
                log.log(level, "%s: %s (retrying%s)", what, message, waiting)
                last = message
        await wait(stopping, backoff.next())
        if stopping.is_set():
            raise asyncio.CancelledError
