"""Reporting rejected etcd keys without flooding the log.

Ten thousand garbage keys once gave ten thousand log lines (2.5 MB, lines of 2,000 characters).
Here the first rejection of each reason in a window is logged at once, with its key name
shortened; the rest are counted and summed up in one line per window (counts per reason and a
few example keys).  What is rejected right now is also a metric (the lease book's counts).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from flanneld.lease_policy import Rejection

KEY_CHARS = 64
DETAIL_CHARS = 200
EXAMPLES = 3


def shorten(text: str, limit: int) -> str:
    """``text`` with unprintable characters escaped, cut to ``limit`` characters."""
    printable = text.encode("unicode_escape").decode("ascii") if not text.isprintable() else text
    return printable if len(printable) <= limit else printable[: limit - 3] + "..."


class RejectionLog:
    """One line per reason per ``window`` seconds, then one summary line per window."""

    def __init__(self, logger: logging.Logger, *, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._window = window
        self._clock = clock
        self._window_start = clock()
        self._logged: set[str] = set()  # reasons already logged in this window
        self._suppressed: Counter[str] = Counter()
        self._examples: list[str] = []

    def rejected(self, rejection: Rejection) -> None:
        self._roll()
        reason = rejection.reason.value
        if reason not in self._logged:
            self._logged.add(reason)
            self._log.warning("ignoring lease %s (%s): %s", shorten(rejection.name, KEY_CHARS), reason,
                              shorten(rejection.detail, DETAIL_CHARS))
            return
        self._suppressed[reason] += 1
        if len(self._examples) < EXAMPLES:
            self._examples.append(shorten(rejection.name, KEY_CHARS))

    def flush(self, force: bool = False) -> None:
        """Log the summary of what was suppressed, when the window is over (or ``force``)."""
        if force or self._clock() - self._window_start >= self._window:
            self._summarize()
            self._window_start = self._clock()
            self._logged.clear()

    def _roll(self) -> None:
        if self._clock() - self._window_start >= self._window:
            self.flush()

    def _summarize(self) -> None:
        total = sum(self._suppressed.values())
        if not total:
            return
        counts = ", ".join(f"{reason}={n}" for reason, n in sorted(self._suppressed.items()))
        self._log.warning("ignoring %d more leases (%s); e.g. %s", total, counts,
                          ", ".join(self._examples))
        self._suppressed.clear()
        self._examples.clear()
