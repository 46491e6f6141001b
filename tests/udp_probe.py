"""A UDP round trip between two network namespaces that says which source address arrived:
how the masquerade tests see whether a packet was masqueraded (IPv4 or IPv6, by the address)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

# argv: family (4|6), port
_SERVER = textwrap.dedent(
    """
    import socket, sys
    v6 = sys.argv[1] == "6"
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("::" if v6 else "0.0.0.0", int(sys.argv[2])))
    s.settimeout(10)
    print("ready", flush=True)
    data, peer = s.recvfrom(2048)
    print(peer[0], flush=True)
    try:
        s.sendto(b"pong", peer)
    except OSError:  # no route back to an unmasqueraded pod: the point of some tests
        pass
    """
)

# argv: address, port, tries
_CLIENT = textwrap.dedent(
    """
    import socket, sys
    v6 = ":" in sys.argv[1]
    s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.2)
    for _ in range(int(sys.argv[3])):
        s.sendto(b"ping", (sys.argv[1], int(sys.argv[2])))
        try:
            s.recvfrom(64)
            print("reply", flush=True)
            break
        except TimeoutError:
            pass
    else:
        print("no-reply", flush=True)
    """
)


def udp_probe(src_ns: str, dst_ns: str, dst_ip: str, port: int = 5353, tries: int = 25) -> tuple[str, bool]:
    """Send UDP from ``src_ns`` to a listener in ``dst_ns`` (IPv4 or IPv6, from ``dst_ip``);
    return (source address the listener saw, whether the client got the reply back).  The
    client resends every 0.2 s, ``tries`` times at most, until a reply arrives."""
    family = "6" if ":" in dst_ip else "4"
    server = subprocess.Popen(
        ["ip", "netns", "exec", dst_ns, sys.executable, "-c", _SERVER, family, str(port)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().strip() == "ready"
        client = subprocess.run(
            ["ip", "netns", "exec", src_ns, sys.executable, "-c", _CLIENT, dst_ip, str(port),
             str(tries)], capture_output=True, text=True, timeout=60)
        seen = server.stdout.readline().strip()
        server.wait(timeout=15)
        return seen, client.stdout.strip() == "reply"
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
