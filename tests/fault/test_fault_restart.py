"""flanneld SIGKILLed and restarted 20 times in a row under a 10 ms ping, on three labs at once.

vxlan (flabf5) and host-gw (flabf6): zero lost pings, and after every restart the same subnet,
the same lease key and (vxlan) the same VTEP MAC, in the kernel and in the lease.  udp (flabf7):
the datapath lives in the daemon, so each restart is an outage; its length (the longest gap
between ping replies around that restart) is measured and reported, not asserted.

Meanwhile a reader re-reads every node's subnet.env: it must never see a torn file (it is
written through a temp file and a rename, so readers see the old or the new one).
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from labkit import (
    FLANNELD_TEST_ARGS,
    HEALTHZ_PORT,
    FaultLab,
    Pinger,
    fault_lab,
    figure,
    poll,
    require_flanneld,
)
from netnslab.state import read_subnet_env

pytestmark = pytest.mark.fault

RESTARTS = 20
NAMES = {"vxlan": "flabf5", "host-gw": "flabf6", "udp": "flabf7"}
ENV_KEYS = {"FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU", "FLANNEL_IPMASQ"}


def _identity(h: FaultLab, node: int) -> tuple[str, str, str]:
    mac = h.vtep_mac(node) if h.state.backend == "vxlan" else ""
    return str(h.subnet(node)), h.lease_of(node)[0], mac


def _restart_loop(h: FaultLab, pinger: Pinger) -> list[tuple[float, float]]:
    """RESTARTS kill+start cycles alternating n2 and n1; returns (killed, ready) times.

    The next kill waits for a ping reply after the restart (immediate on kernel backends; on
    udp it is when the userspace datapath carries traffic again)."""
    before = {n: _identity(h, n) for n in (1, 2)}
    windows = []
    for i in range(RESTARTS):
        node = 2 - i % 2
        killed = time.time()
        h.kill_flanneld(node)
        h.start_flanneld(node)  # returns once subnet.env is rewritten
        poll(lambda n=node: h.readyz(n) == 200, 15.0, 0.02, f"{h.name} n{node} ready")  # type: ignore[misc]
        ready = time.time()
        windows.append((killed, ready))
        poll(lambda t=ready: pinger.last_reply() > t, 15.0, 0.02, f"{h.name}: pings answered again")  # type: ignore[misc]
        assert _identity(h, node) == before[node], f"{h.name} restart {i + 1}: n{node} changed"
        if h.state.backend == "vxlan":
            assert h.lease_of(node)[1]["BackendData"]["VtepMAC"] == before[node][2]
    return windows


def test_sigkill_restart_20_times_under_ping() -> None:
    require_flanneld()
    args = (*FLANNELD_TEST_ARGS, f"--healthz-port={HEALTHZ_PORT}")
    torn: list[str] = []
    stop_reading = threading.Event()
    with contextlib.ExitStack() as stack:
        labs = {
            b: stack.enter_context(fault_lab(name, nodes=2, backend=b, pods_per_node=1, flanneld_args=args))
            for b, name in NAMES.items()
        }

        def read_env_files() -> None:
            files = [h.state.subnet_file(n) for h in labs.values() for n in (1, 2)]
            while not stop_reading.is_set():
                for f in files:
                    env = read_subnet_env(f)
                    if set(env) != ENV_KEYS:
                        torn.append(f"{f}: {sorted(env)}")
                time.sleep(0.005)

        pingers = {b: h.pinger((1, 1), (2, 1)) for b, h in labs.items()}
        reader = threading.Thread(target=read_env_files, daemon=True)
        try:
            for p in pingers.values():
                p.wait_flowing()
            reader.start()
            with ThreadPoolExecutor(len(labs)) as pool:
                futures = {b: pool.submit(_restart_loop, h, pingers[b]) for b, h in labs.items()}
                windows = {b: f.result() for b, f in futures.items()}
            time.sleep(0.5)
        finally:
            stop_reading.set()
            results = {b: p.stop() for b, p in pingers.items()}
    reader.join(5)
    for b, r in results.items():
        w = windows[b]
        # Outage of restart i: the longest reply gap from its kill to the next kill (or +2 s).
        ends = [k for k, _ in w[1:]] + [w[-1][1] + 2.0]
        gaps = sorted(r.max_gap(k, e) for (k, _), e in zip(w, ends, strict=True))
        restart = [ready - killed for killed, ready in w]
        figure(
            f"restart-x{RESTARTS}[{b}]", pings=r.sent, lost=r.lost,
            gap_median_s=statistics.median(gaps), gap_max_s=gaps[-1],
            restart_to_ready_median_s=statistics.median(restart), restart_to_ready_max_s=max(restart),
        )  # fmt: skip
    assert not torn, f"torn subnet.env reads: {torn[:5]}"
    for b in ("vxlan", "host-gw"):
        r = results[b]
        # The pinger ran through all restarts (ping -i 0.01 manages ~60/s on a loaded machine).
        assert r.sent > RESTARTS * 10, r.text[-300:]
        assert r.lost == 0, f"{b}: lost {r.lost} of {r.sent} pings across {RESTARTS} restarts"
    assert results["udp"].received > 0
