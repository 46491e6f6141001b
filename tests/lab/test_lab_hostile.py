"""Hostile etcd content against a running 3-node lab, on vxlan, host-gw and udp.

Each test writes what a buggy tool or a compromised node could write under
``/coreos.com/network/subnets/`` (the items of the hostile-input issue), then checks what an
operator cares about: every legitimate pod pair still reaches (ping-all), every node still
reaches etcd, the hostile leases are counted as rejected and programmed nowhere, and the
daemons stay alive.  One lab per backend serves the module (flabh1 vxlan, flabh2 host-gw,
flabh3 udp); every test removes what it wrote, also when it fails.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from ipaddress import IPv4Network
from pathlib import Path
from typing import Any

import pytest
from labkit import (
    FLANNELD_TEST_ARGS,
    HEALTHZ_PORT,
    REPO,
    FaultLab,
    fault_lab,
    figure,
    poll,
    require_flanneld,
)
from netnslab import daemon, pingmatrix
from netnslab.proc import nsexec, run

pytestmark = pytest.mark.lab

NAMES = {"vxlan": "flabh1", "host-gw": "flabh2", "udp": "flabh3"}
SUBNETS = "/coreos.com/network/subnets/"
ATTACKER = "198.18.0.50"  # no node has this address
ATTACKER_MAC = "0e:aa:00:00:00:50"
PYTHON = str(REPO / ".venv" / "bin" / "python")


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "udp"])
def lab(request: pytest.FixtureRequest) -> Iterator[FaultLab]:
    require_flanneld()
    backend = str(request.param)
    args = (*FLANNELD_TEST_ARGS, f"--healthz-port={HEALTHZ_PORT}")
    with fault_lab(NAMES[backend], nodes=3, backend=backend, pods_per_node=1, flanneld_args=args) as h:
        h.backend = backend  # type: ignore[attr-defined]
        yield h


# ---- helpers -----------------------------------------------------------------------------------

def backend_of(lab: FaultLab) -> str:
    return str(lab.backend)  # type: ignore[attr-defined]


def lease_value(lab: FaultLab, ip: str, mac: str = ATTACKER_MAC) -> str:
    """A lease in the lab's backend format, as a Go node of that backend writes it."""
    obj: dict[str, Any] = {"PublicIP": ip, "PublicIPv6": None}
    backend = backend_of(lab)
    if backend != "udp":
        obj["BackendType"] = backend
    if backend == "vxlan":
        obj["BackendData"] = {"VNI": 1, "VtepMAC": mac}
    return json.dumps(obj, separators=(",", ":"))


def http(lab: FaultLab, node: int, path: str) -> tuple[int, str]:
    cmd = nsexec(lab.node_ns(node), ["curl", "-s", "-m", "2", "-w", "\n%{http_code}",
                                     f"http://127.0.0.1:{HEALTHZ_PORT}{path}"])
    out = run(cmd, check=False).stdout
    body, _, code = out.rpartition("\n")
    return (int(code) if code.isdigit() else 0), body


def metric(lab: FaultLab, node: int, series: str) -> float | None:
    status, text = http(lab, node, "/metrics")
    if status != 200:
        return None
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return None


def rejected(lab: FaultLab, node: int, reason: str) -> float | None:
    return metric(lab, node, f'flannel_leases_rejected{{reason="{reason}"}}')


def full_passes(lab: FaultLab, node: int) -> float:
    return metric(lab, node, 'flannel_reconcile_duration_seconds_count{kind="full"}') or 0.0


def wait_rejected(lab: FaultLab, counts: dict[str, int], timeout: float = 20.0) -> None:
    """Every node has counted the rejections, then finished a drift pass after that."""
    for node in lab.state.nodes:
        poll(lambda n=node: all(rejected(lab, n, r) == c for r, c in counts.items()), timeout, 0.1,
             f"n{node} counts rejections {counts}")
    passes = {node: full_passes(lab, node) for node in lab.state.nodes}
    for node in lab.state.nodes:
        poll(lambda n=node: full_passes(lab, n) > passes[n], 15, 0.2, f"n{node} drift pass")


def assert_network_intact(lab: FaultLab, what: str) -> None:
    """Every pod pair reaches, every node reaches etcd, every daemon is alive and ready."""
    results = pingmatrix.ping_all(lab.state.pods(), timeout=1.0, tries=3)
    failed = [(r.src, r.dst) for r in results if not r.ok]
    assert not failed, f"{what}: pod pairs cut off: {failed}"
    for node in lab.state.nodes:
        out = lab.etcdctl("get", "--keys-only", "/coreos.com/network/config", from_node=node)
        assert "/coreos.com/network/config" in out, f"{what}: n{node} cannot reach etcd"
        assert http(lab, node, "/healthz")[0] == 200, f"{what}: n{node} daemon not answering"
    figure(f"hostile_{what}", backend=backend_of(lab), pairs_ok=f"{len(results)}/{len(results)}")


def routes_to(lab: FaultLab, node: int, dst: str) -> list[dict[str, Any]]:
    return [r for r in lab.ipj(lab.node_ns(node), "-4", "route") if r.get("dst") == dst]


@contextlib.contextmanager
def keys(lab: FaultLab, puts: dict[str, str]) -> Iterator[None]:
    """Put ``puts`` (names under subnets/); delete them afterwards, whatever happens."""
    try:
        for name, value in puts.items():
            lab.etcdctl("put", SUBNETS + name, value)
        yield
    finally:
        for name in puts:
            lab.etcdctl("del", SUBNETS + name)


def etcd_writer(lab: FaultLab, script: str, *args: str) -> None:
    """Run a Python snippet with an EtcdStore ``store`` inside the underlay namespace (etcd is
    reachable there only); large values do not fit etcdctl's command line."""
    prog = (
        "import asyncio, sys\n"
        "from flanneld.etcd_store import EtcdStore, parse_endpoints\n"
        "async def main():\n"
        "    store = EtcdStore(parse_endpoints(sys.argv[1]), timeout=30)\n"
        "    sem = asyncio.Semaphore(32)\n"
        "    try:\n"
        + "".join(f"        {line}\n" for line in script.strip().splitlines())
        + "    finally:\n"
        "        await store.close()\n"
        "asyncio.run(main())\n"
    )
    subprocess.run(nsexec(lab.names.underlay_ns, [PYTHON, "-c", prog, lab.names.etcd_endpoint, *args]),
                   check=True, timeout=300, cwd="/")


# ---- items 1-3: leases that must never be programmed -----------------------------------------

def test_leases_outside_the_network_are_never_routed(lab: FaultLab) -> None:
    """Item 1: a /25 over the node addresses and one over etcd's used to be routed into the
    overlay on every node (nodes lost each other and etcd); drift repair re-installed them."""
    value = lease_value(lab, ATTACKER)
    with keys(lab, {"198.18.0.0-25": value, "198.18.0.128-25": value}):
        wait_rejected(lab, {"outside_network": 2})
        for node in lab.state.nodes:
            assert not routes_to(lab, node, "198.18.0.0/25"), f"n{node} routes the underlay"
            assert not routes_to(lab, node, "198.18.0.128/25"), f"n{node} routes etcd's /25"
        assert_network_intact(lab, "outside_network")
        if backend_of(lab) == "udp":
            return  # udp programs no per-peer kernel routes
        # What an older daemon that accepted the lease left behind: the drift pass removes it.
        dev = "flannel.1" if backend_of(lab) == "vxlan" else lab.names.uplink
        via = ["198.18.0.0", "onlink"] if backend_of(lab) == "vxlan" else [ATTACKER]
        node_ns = lab.node_ns(1)
        lab.ip(node_ns, "route", "add", "198.18.0.0/25", "via", *via[:1], "dev", dev, *via[1:])
        took = poll(lambda: not routes_to(lab, 1, "198.18.0.0/25"), 15, 0.05, "stale route removed")
        figure("hostile_stale_route_removed", backend=backend_of(lab), seconds=took)
        assert_network_intact(lab, "outside_network_after_stale_route")


def test_a_subnet_inside_a_peers_subnet_hijacks_nothing(lab: FaultLab) -> None:
    """Item 2: a /25 inside node 2's /24 used to get a route and, on vxlan, rewrote the
    neighbour of node 2's VTEP address to the attacker's MAC on every node."""
    victim = lab.subnet(2)
    half = IPv4Network((victim.network_address, 25))
    mac2 = lab.vtep_mac(2)
    with keys(lab, {f"{half.network_address}-25": lease_value(lab, ATTACKER)}):
        wait_rejected(lab, {"wrong_prefix_length": 1})
        for node in (1, 3):
            assert not routes_to(lab, node, str(half)), f"n{node} routes the hijacking /25"
            if backend_of(lab) != "udp":  # udp routes peers in userspace
                assert routes_to(lab, node, str(victim)), f"n{node} lost the route to n2"
            if backend_of(lab) == "vxlan":
                neigh = lab.ip(lab.node_ns(node), "neigh", "show", str(victim.network_address),
                               "dev", "flannel.1")
                assert mac2 in neigh and ATTACKER_MAC not in neigh, neigh
        assert_network_intact(lab, "overlap")


def test_wrong_prefix_lengths_and_absurd_public_ips_are_refused(lab: FaultLab) -> None:
    """Item 3: other prefix lengths and PublicIPs 0.0.0.0, 255.255.255.255, 127.0.0.1,
    224.0.0.1 used to be accepted (``fdb ... dst 0.0.0.0``)."""
    # subnets no node holds (nodes pick theirs at random): the pair for the /23, then four
    taken = {lab.subnet(n).network_address.packed[2] for n in lab.state.nodes}
    pair = next(o for o in range(100, 254, 2) if not {o, o + 1} & taken)
    free = [o for o in range(pair + 2, 254) if o not in taken][:4]
    ips = ["0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"]
    puts = {f"10.244.{pair}.0-23": lease_value(lab, ATTACKER)}
    puts.update({f"10.244.{o}.0-24": lease_value(lab, ip, f"0e:aa:00:00:00:0{i + 1}")
                 for i, (o, ip) in enumerate(zip(free, ips, strict=True))})
    with keys(lab, puts):
        wait_rejected(lab, {"wrong_prefix_length": 1, "bad_public_ip": 4})
        for node in lab.state.nodes:
            for dst in (f"10.244.{pair}.0/23", *(f"10.244.{o}.0/24" for o in free)):
                assert not routes_to(lab, node, dst), f"n{node} routes {dst}"
            if backend_of(lab) == "vxlan":
                dsts = {entry.get("dst") for entry in lab.fdb(node)}
                assert not dsts & {"0.0.0.0", "255.255.255.255", "127.0.0.1", "224.0.0.1"}, dsts
        assert_network_intact(lab, "absurd_public_ips")


# ---- item 4: a listing over 4 MiB ----------------------------------------------------------------

def test_a_huge_listing_does_not_stop_a_daemon_from_starting(lab: FaultLab) -> None:
    """Item 4: five 1 MB junk values under subnets/ made the listing exceed grpc's 4 MiB and
    a restarted daemon never became ready."""
    write = "await asyncio.gather(*(store.put(f'" + SUBNETS + "junk-big-{i}', b'x' * 1_000_000) for i in range(5)))"
    try:
        etcd_writer(lab, write)
        lab.kill_flanneld(3)
        t0 = time.monotonic()
        lab.start_flanneld(3)
        took = poll(lambda: lab.readyz(3) == 200, 60, 0.1, "n3 ready with 5 MB of junk listed")
        figure("hostile_huge_listing", backend=backend_of(lab), ready_after_s=round(took, 2),
               restart_s=round(time.monotonic() - t0, 2))
        poll(lambda: rejected(lab, 3, "bad_key") == 5, 20, 0.1, "n3 counts the junk")
        assert_network_intact(lab, "huge_listing")
    finally:
        lab.etcdctl("del", "--prefix", SUBNETS + "junk-big-")


# ---- item 5: our own lease rewritten -------------------------------------------------------------

def test_our_lease_rewritten_by_someone_else_is_reasserted(lab: FaultLab) -> None:
    """Item 5: a put of node 1's key with another PublicIP used to make node 1 re-acquire
    another subnet; its pods kept the old addresses and were cut off for good."""
    key, original = lab.lease_of(1)
    subnet = lab.subnet(1)
    before = metric(lab, 1, 'flannel_lease_events_total{event="conflict",result="ok"}') or 0.0
    lab.etcdctl("put", key, lease_value(lab, "198.18.0.99", "0e:aa:00:00:00:99"))
    took = poll(lambda: json.loads(lab.etcdctl("get", key, "--print-value-only") or "{}") == original,
                10, 0.02, "n1's lease re-asserted")
    assert lab.subnet(1) == subnet, "n1 renumbered"
    assert metric(lab, 1, 'flannel_lease_events_total{event="conflict",result="ok"}') == before + 1
    assert "LEASE CONFLICT" in lab.log_tail(1)
    poll(lambda: lab.readyz(1) == 200, 10, 0.05, "n1 ready again")
    figure("hostile_own_lease_rewritten", backend=backend_of(lab), reasserted_after_s=round(took, 3))
    assert_network_intact(lab, "own_lease_rewritten")


# ---- item 8: subnet.env cannot be written --------------------------------------------------------

def test_a_read_only_or_full_subnet_file_system_keeps_the_node_up(lab: FaultLab) -> None:
    """Item 8: a read-only or full file system for subnet.env used to be a traceback and
    exit 1 at start.  Now the daemon runs, says why on /readyz, retries, and recovers."""
    mount = Path(tempfile.mkdtemp(prefix="flabh-ro-", dir=str(lab.state.dir)))
    mounted = False
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", str(mount)], check=True)
        mounted = True
        filler = mount / "filler"
        with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 4096)
        lab.kill_flanneld(3)
        # started without waiting for the lab's subnet file (the lab's start waits for it)
        daemon.start(lab.state, 3, ("--subnet-file", str(mount / "subnet.env")))
        poll(lambda: "No space left" in http(lab, 3, "/readyz")[1], 30, 0.1, "503 disk full, with why")
        assert metric(lab, 3, 'flannel_file_written{file="subnet_env"}') == 0
        assert_network_intact(lab, "subnet_file_full")
        subprocess.run(["mount", "-o", "remount,ro", str(mount)], check=True)
        poll(lambda: "Read-only file system" in http(lab, 3, "/readyz")[1], 20, 0.1, "503 read-only")
        status, body = http(lab, 3, "/readyz")
        assert status == 503 and body.startswith("subnet.env not written: "), body
        assert_network_intact(lab, "subnet_file_read_only")
        subprocess.run(["mount", "-o", "remount,rw", str(mount)], check=True)
        filler.unlink()
        took = poll(lambda: lab.readyz(3) == 200, 20, 0.1, "ready once the disk has room")
        assert (mount / "subnet.env").read_text().startswith("FLANNEL_NETWORK=")
        assert metric(lab, 3, 'flannel_file_written{file="subnet_env"}') == 1
        figure("hostile_subnet_file_unwritable", backend=backend_of(lab), recovered_after_s=round(took, 2))
    finally:
        with contextlib.suppress(AssertionError):
            lab.kill_flanneld(3)
        if mounted:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        mount.rmdir()
        lab.start_flanneld(3)
        poll(lambda: lab.readyz(3) == 200, 30, 0.1, "n3 back on its own subnet file")
    assert_network_intact(lab, "subnet_file_restored")


# ---- item 9: ten thousand garbage keys -----------------------------------------------------------

def test_ten_thousand_garbage_keys_log_a_few_lines(lab: FaultLab) -> None:
    """Item 9: 10,000 garbage keys gave 10,026 log lines (2.5 MB, lines up to 2,176
    characters); now a line per reason and a summary, and the counts are metrics."""
    offsets = {node: lab.log_size(node) for node in lab.state.nodes}
    long = "x" * 2000
    write = (
        "async def put(key, value):\n"
        "    async with sem:\n"
        "        await store.put(key, value)\n"
        f"await asyncio.gather(*(put(f'{SUBNETS}junk-{{i}}-{long}', b'{{}}') for i in range(5000)))\n"
        f"await asyncio.gather(*(put(f'{SUBNETS}10.{{100 + i // 256}}.{{i % 256}}.0-24', b'\\x00' * 200) "
        "for i in range(5000)))\n"
    )
    try:
        t0 = time.monotonic()
        etcd_writer(lab, write)
        wait_rejected(lab, {"bad_key": 5000, "bad_value": 5000}, timeout=120)
        took = time.monotonic() - t0
        for node in lab.state.nodes:
            lines = lab.log_since(node, offsets[node])
            ignoring = [line for line in lines if "ignoring" in line]
            assert 1 <= len(ignoring) <= 6, ignoring  # a reason logged < 60 s ago waits
            assert max(len(line) for line in lines) < 600, max(lines, key=len)
            assert sum(len(line) + 1 for line in lines) < 20_000, len(lines)
        assert_network_intact(lab, "garbage_keys")
        figure("hostile_garbage_keys", backend=backend_of(lab), keys=10000,
               log_lines=len(lab.log_since(1, offsets[1])), counted_after_s=round(took, 1))
    finally:
        lab.etcdctl("del", "--prefix", SUBNETS + "junk-")
        lab.etcdctl("del", SUBNETS + "10.1", SUBNETS + "10.2")  # the range 10.100.. - 10.119..
    for node in lab.state.nodes:
        poll(lambda n=node: rejected(lab, n, "bad_key") == 0 and rejected(lab, n, "bad_value") == 0,
             60, 0.2, f"n{node} counts back to 0")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))
