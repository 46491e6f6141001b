"""Every pod pings every other pod, in parallel, with a short timeout; the result is a matrix.

A pair is retried (``tries``) before it counts as failed, so a first packet lost to a slow
neighbour resolution does not fail the run, but a missing route does.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from netnslab.proc import nsexec, run
from netnslab.state import PodState


@dataclass(frozen=True)
class PingResult:
    src: str
    dst: str
    ok: bool


def ping(src_ns: str, dst_ip: str, timeout: float = 1.0, tries: int = 2) -> bool:
    cmd = nsexec(src_ns, ["ping", "-n", "-q", "-c", "1", "-W", f"{timeout:g}", dst_ip])
    return any(run(cmd, check=False).returncode == 0 for _ in range(tries))


def ping_all(
    pods: Sequence[PodState], timeout: float = 1.0, tries: int = 2, workers: int = 12
) -> list[PingResult]:
    pairs = [(s, d) for s in pods for d in pods if s.name != d.name]

    def one(pair: tuple[PodState, PodState]) -> PingResult:
        s, d = pair
        ip = d.address.split("/")[0]
        return PingResult(s.name, d.name, bool(ip) and ping(s.name, ip, timeout, tries))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def render(pods: Sequence[PodState], results: Sequence[PingResult], prefix: str) -> str:
    """Rows: source pod; columns: destination pod; '.' = reached, 'X' = failed."""
    ok = {(r.src, r.dst): r.ok for r in results}

    def short(name: str) -> str:
        return name.removeprefix(prefix + "-")

    width = max([len(short(p.name)) for p in pods] + [8])
    head = " " * (width + 2) + " ".join(f"{short(p.name):>{width}}" for p in pods)
    lines = ["src \\ dst (. = reached, X = failed)", head]
    for s in pods:
        cells = []
        for d in pods:
            cell = "-" if s.name == d.name else ("." if ok.get((s.name, d.name)) else "X")
            cells.append(f"{cell:>{width}}")
        lines.append(f"{short(s.name):>{width}}  " + " ".join(cells))
    good = sum(r.ok for r in results)
    lines.append(f"{good}/{len(results)} pod pairs reachable")
    return "\n".join(lines)
