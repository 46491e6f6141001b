"""Every pod pings every other pod, in parallel, with a short timeout; the result is a matrix.

A pair is retried (``tries``) before it counts as failed, so a first packet lost to a slow
neighbour resolution does not fail the run, but a missing route does.

``family=6`` pings the pods' IPv6 addresses (``PodState.address6``, dual-stack labs) with
``ping -6``; a pod without one counts as unreachable.
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


def ping(src_ns: str, dst_ip: str, timeout: float = 1.0, tries: int = 2, family: int = 4) -> bool:
    fam = ["-6"] if family == 6 else []
    cmd = nsexec(src_ns, ["ping", *fam, "-n", "-q", "-c", "1", "-W", f"{timeout:g}", dst_ip])
    return any(run(cmd, check=False).returncode == 0 for _ in range(tries))


def pod_ip(pod: PodState, family: int = 4) -> str:
    """The pod's address of ``family`` without its prefix length ('' if it has none)."""
    return (pod.address6 if family == 6 else pod.address).split("/")[0]


def ping_all(
    pods: Sequence[PodState], timeout: float = 1.0, tries: int = 2, workers: int = 12,
    family: int = 4,
) -> list[PingResult]:
    pairs = [(s, d) for s in pods for d in pods if s.name != d.name]

    def one(pair: tuple[PodState, PodState]) -> PingResult:
        s, d = pair
        ip = pod_ip(d, family)
        return PingResult(s.name, d.name, bool(ip) and ping(s.name, ip, timeout, tries, family))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, pairs))


def render(
    pods: Sequence[PodState], results: Sequence[PingResult], prefix: str, family: int | None = None
) -> str:
    """Rows: source pod; columns: destination pod; '.' = reached, 'X' = failed.  With
    ``family`` (dual-stack labs) the title and the summary line name it: ``IPv6: 28/30 ...``."""
    ok = {(r.src, r.dst): r.ok for r in results}

    def short(name: str) -> str:
        return name.removeprefix(prefix + "-")

    width = max([len(short(p.name)) for p in pods] + [8])
    head = " " * (width + 2) + " ".join(f"{short(p.name):>{width}}" for p in pods)
    fam = f"IPv{family}: " if family else ""
    lines = [f"{fam}src \\ dst (. = reached, X = failed)", head]
    for s in pods:
        cells = []
        for d in pods:
            cell = "-" if s.name == d.name else ("." if ok.get((s.name, d.name)) else "X")
            cells.append(f"{cell:>{width}}")
        lines.append(f"{short(s.name):>{width}}  " + " ".join(cells))
    good = sum(r.ok for r in results)
    lines.append(f"{fam}{good}/{len(results)} pod pairs reachable")
    return "\n".join(lines)
