"""Capped exponential backoff with jitter, so an outage never turns into a hot loop."""

from __future__ import annotations

import random


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
