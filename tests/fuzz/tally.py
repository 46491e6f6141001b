"""Per-target fuzz bookkeeping: cases run, accepted/rejected, and a histogram of reasons.

Why: a fuzz run that passes says little unless it shows what it exercised; with ``pytest -s``
each target prints one line, and the tests assert the generator reached the interesting paths.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

MIN_CASES = 10_000


@dataclass
class Tally:
    target: str
    cases: int = 0
    accepted: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def accept(self) -> None:
        self.cases += 1
        self.accepted += 1

    def reject(self, reason: str) -> None:
        self.cases += 1
        self.reasons[reason] += 1

    @property
    def rejected(self) -> int:
        return self.cases - self.accepted

    def line(self) -> str:
        hist = ", ".join(f"{r}={n}" for r, n in sorted(self.reasons.items(), key=lambda i: -i[1]))
        return (f"fuzz {self.target}: {self.cases} cases, {self.accepted} accepted, "
                f"{self.rejected} rejected [{hist}]")

    def report(self) -> None:
        print(f"\n{self.line()}")
