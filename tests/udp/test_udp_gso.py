"""Offload-mode helpers: TCP super-packet segmentation and checksum finishing, against scapy."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.packet import Raw

from flanneld.backends.udp import core, gso

pytestmark = pytest.mark.unit


def super_packet(payload: int, flags: str = "PA", options: bool = True) -> bytes:
    opts = [("NOP", None), ("NOP", None), ("Timestamp", (12345, 678))] if options else []
    return bytes(IP(src="10.244.1.2", dst="10.244.2.2", id=65530, flags="DF")
                 / TCP(sport=40000, dport=5201, seq=2**32 - 1000, ack=77, flags=flags,
                       window=501, options=opts)
                 / Raw(bytes(range(256)) * (payload // 256) + b"z" * (payload % 256)))


@pytest.mark.parametrize(("payload", "mss"), [(64000, 1420), (1420 * 3, 1420), (5000, 1448),
                                              (1, 1420), (2841, 1420)])
def test_segments_match_scapy(payload: int, mss: int) -> None:
    sp = super_packet(payload)
    out = np.zeros(70000 + 64 * 128, dtype=np.uint8)
    total, seglen, nseg = gso.segment_tcp4(memoryview(bytearray(sp)), mss, out)
    hl = 20 + 32
    assert seglen == hl + mss and nseg == -(-payload // mss)
    assert total == len(sp) + (nseg - 1) * hl
    data = out[:total].tobytes()
    orig = IP(sp)
    got = b""
    for i in range(nseg):
        seg = data[i * seglen: min(total, (i + 1) * seglen)]
        p = IP(seg)
        assert p.len == len(seg) and p.id == (65530 + i) & 0xFFFF
        assert p[TCP].seq == (orig[TCP].seq + i * mss) & 0xFFFFFFFF
        assert str(p[TCP].flags) == ("PA" if i == nseg - 1 else "A")
        assert p[TCP].options == orig[TCP].options
        again = IP(seg)
        del again.chksum
        del again[TCP].chksum
        assert bytes(again) == seg, f"checksum mismatch in segment {i}"
        got += bytes(p[TCP].payload)
    assert got == bytes(orig[TCP].payload)


def test_odd_mss_rejected() -> None:
    out = np.zeros(70000, dtype=np.uint8)
    with pytest.raises(ValueError):
        gso.segment_tcp4(memoryview(bytearray(super_packet(3000))), 1421, out)


@given(payload=st.binary(min_size=0, max_size=1400), udp=st.booleans())
@settings(max_examples=300, deadline=None)
def test_finish_partial_checksum(payload: bytes, udp: bool) -> None:
    l4 = UDP(sport=1, dport=2) if udp else TCP(sport=1, dport=2)
    full = bytes(IP(src="10.244.1.2", dst="10.244.2.2") / l4 / Raw(payload))
    pkt = bytearray(full)
    off = 6 if udp else 16
    plen = len(full) - 20
    ph = core.pseudo_header_sum(full[12:16], full[16:20], 17 if udp else 6, plen)
    pkt[20 + off: 22 + off] = ph.to_bytes(2, "big")  # what a TUN with TUN_F_CSUM hands us
    assert gso.finish_checksum(pkt, 20, off)
    assert bytes(pkt) == full
