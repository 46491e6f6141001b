"""Polling instead of sleeping, for asyncio tests: wait until a condition holds, or fail."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path


async def until(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> None:
    """Return once ``predicate()`` holds; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(interval)


def process_alive(pid: int) -> bool:
    """``pid`` runs (a zombie or a dead task counts as gone: it is only waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")
