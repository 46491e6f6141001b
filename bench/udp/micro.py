"""Per-packet cost of the udp datapath's drain functions, without root or the kernel's TUN.

Two real Datapaths over loopback UDP with socketpair "TUNs" (tests/udp/loopback_pair.py); times
TUN->underlay on node A and underlay->TUN on node B, per packet, for 64-byte UDP packets, in
plain and offload mode, beside the bare syscalls. Includes the syscalls on unix/loopback sockets, so it is a lower bound
and a regression check for the Python work, not a network figure.

    .venv/bin/python bench/udp/micro.py [--packets 20000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "udp"))
import loopback_pair as lp

from flanneld.backends.udp.datapath import Drain


def floor_drains(a: lp.Node, b: lp.Node) -> tuple[Drain, Drain]:
    """The syscalls alone (read, send / receive, write): what no Python datapath can beat."""
    buf = bytearray(65536)
    view, bufs, tun_a, tun_b = memoryview(buf), [buf], a.dp.tun.fd, b.dp.tun.fd
    peer = b.dp.sock.getsockname()
    send, recv = a.dp.sock.sendto, b.dp.sock.recvfrom_into

    def tx(budget: int = 64) -> int:
        for i in range(budget):
            try:
                n = os.readv(tun_a, bufs)
            except BlockingIOError:
                return i
            send(view[:n], peer)
        return budget

    def rx(budget: int = 64) -> int:
        for i in range(budget):
            try:
                n, _ = recv(buf)
            except BlockingIOError:
                return i
            os.write(tun_b, view[:n])
        return budget

    return tx, rx


def one_round(offload: bool, packets: int, floor: bool = False,
              batch: int = 256) -> tuple[float, float]:
    a, b = lp.pair(offload)
    pkt = lp.udp_packet("10.244.1.2", "10.244.2.2", bytes(36))
    if offload:  # as the kernel hands a pod's UDP packet over: checksum left partial
        a.vnet = bytes([1, 0, 0, 0, 0, 0, 20, 0, 6, 0])
    t_tx = t_rx = 0.0
    try:
        if floor:
            tx_drain, rx_drain = floor_drains(a, b)
        else:
            tx_drain, _ = a.dp.handlers()
            _, rx_drain = b.dp.handlers()
        done = 0
        while done < packets:
            for _ in range(batch):
                a.inject(pkt)
            t0 = time.perf_counter()
            while tx_drain():
                pass
            t1 = time.perf_counter()
            while rx_drain():
                pass
            t2 = time.perf_counter()
            t_tx += t1 - t0
            t_rx += t2 - t1
            got = len(b.take())
            assert got == batch, f"{got} of {batch} packets forwarded"
            done += batch
    finally:
        a.close()
        b.close()
    return t_tx / done * 1e6, t_rx / done * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--packets", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cases = {"syscalls": (False, True), "plain": (False, False), "offload": (True, False)}
    res: dict[str, list[tuple[float, float]]] = {c: [] for c in cases}
    for _ in range(args.rounds):  # interleaved, so machine noise hits all cases alike
        for case, (offload, floor) in cases.items():
            res[case].append(one_round(offload, args.packets, floor))
    for case, rs in res.items():
        tx = statistics.median(r[0] for r in rs)
        rx = statistics.median(r[1] for r in rs)
        print(f"{case:9s} tun->udp {tx:6.2f} us/pkt   udp->tun {rx:6.2f} us/pkt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
