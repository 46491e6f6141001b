"""How long the store (etcd) has been unreachable, from the outcome of every request.

The store's request observer reports each request's result; any success means reachable, and
the first failure after a success starts the clock.  A quiet, healthy daemon makes few
requests but its last one succeeded; a daemon cut off from etcd retries its watch and its
renewal every few seconds, so failures keep coming.  Pure apart from the injected clock.

Why a bound: a node cut off from etcd keeps forwarding (the datapath stays as it is) but
learns no new peers and cannot renew its lease; past the bound /readyz says so, instead of
staying 200 for minutes as it once did while a hostile route blackholed etcd.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_BOUND = 30.0  # seconds; --etcd-unreachable-not-ready


class StoreHealth:
    def __init__(self, bound: float = DEFAULT_BOUND,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self._clock = clock
        self._failing_since: float | None = None

    def observe(self, result: str) -> None:
        """One request's result: ``ok``, or anything else for a failure."""
        if result == "ok":
            self._failing_since = None
        elif self._failing_since is None:
            self._failing_since = self._clock()

    @property
    def reachable(self) -> bool:
        return self._failing_since is None

    def unreachable_for(self) -> float:
        return 0.0 if self._failing_since is None else self._clock() - self._failing_since

    def problem(self) -> str | None:
        """A readiness problem once the store has been unreachable longer than the bound
        (a bound of 0 disables it)."""
        down = self.unreachable_for()
        if self.bound <= 0 or self._failing_since is None or down < self.bound:
            return None
        return f"etcd unreachable for {down:.0f}s"
