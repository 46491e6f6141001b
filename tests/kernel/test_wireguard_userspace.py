"""The userspace WireGuard driver with the real wireguard-go: two nodes in namespaces.

Each node is ``wg_node.py`` (a ``UserspaceDriver`` driven by JSON lines) in a network namespace
of this test and a mount namespace of its own: wireguard-go's socket path
/var/run/wireguard/<dev>.sock is the same in every network namespace, so each node gets a
private tmpfs on /run with the node's directory bound over /run/wireguard (nothing is created
outside the test's directories, not even an empty /run/wireguard).  ``wg`` and new node
processes join a node's mount namespace with ``nsenter -t <pid> -m -n``: a plain ``ip netns exec``
makes a new mount namespace each time and would not see the node's sockets.

Underlay 198.18.41.0/24 on a veth between the two namespaces; pod networks 10.244.1.0/24 (a)
and 10.244.2.0/24 (b), set with ``ip`` as the backend would.  Every process in the namespaces
is killed and reaped after the test (the test process is a child subreaper meanwhile, so a
wireguard-go that outlived its node is reaped too).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from polling import process_alive, until

from flanneld.backends.wireguard.keys import Key

from .conftest import sh

pytestmark = [
    pytest.mark.netlink,
    pytest.mark.skipif(shutil.which("wireguard-go") is None or shutil.which("wg") is None
                       or shutil.which("nsenter") is None,
                       reason="needs wireguard-go, wg (wireguard-tools) and nsenter"),
]

NODE_SCRIPT = Path(__file__).with_name("wg_node.py")
DEV = "flannel-wg"
UNDERLAY = ("198.18.41.1", "198.18.41.2")
PODS = ("10.244.1.0/24", "10.244.2.0/24")
POD_IPS = ("10.244.1.1", "10.244.2.1")
PORTS = (51820, 51821)
# Run as: sh -c RECIPE <node dir> <command...>: a private /run with the node's directory as
# /run/wireguard (= /var/run/wireguard), then the command.
RECIPE = ('mount -t tmpfs -o mode=0755,size=4m wgt-run /run && mkdir /run/wireguard '
          '&& mount --bind "$0/wireguard" /run/wireguard && exec "$@"')
PR_SET_CHILD_SUBREAPER = 36


class Node:
    """One node process; ``call`` sends a command and returns its answer."""

    def __init__(self, ns: str, workdir: Path, cmd: list[str], pids: set[int]) -> None:
        self.ns, self.workdir = ns, workdir
        self.pids = pids  # every pid an answer named, to be killed and reaped at the end
        self.stderr_path = workdir / f"node-{time.monotonic_ns()}.stderr"
        with self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err)
        self._buf = b""
        hello = self._read(15.0)
        self.pid: int = hello["pid"]

    @property
    def sockdir(self) -> Path:
        return self.workdir / "wireguard"

    @property
    def logdir(self) -> Path:
        return self.workdir / "log"

    def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as sel:
            sel.register(self.proc.stdout, selectors.EVENT_READ)
            while b"\n" not in self._buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    raise AssertionError(f"node in {self.ns} did not answer; {self.stderr_tail()}")
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise AssertionError(f"node in {self.ns} exited; {self.stderr_tail()}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        answer: dict[str, Any] = json.loads(line)
        if isinstance(answer.get("pid"), int):
            self.pids.add(answer["pid"])
        return answer

    def call(self, op: str, timeout: float = 20.0, **kw: Any) -> dict[str, Any]:
        """The answer of a command that must succeed."""
        answer = self.try_call(op, timeout, **kw)
        assert answer["ok"], f"{op} in {self.ns}: {answer.get('error')}"
        return answer

    def try_call(self, op: str, timeout: float = 20.0, **kw: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **kw}).encode() + b"\n")
        self.proc.stdin.flush()
        return self._read(timeout)

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = self.call("state", ifname=DEV)["state"]
        return state

    def wg(self, *args: str) -> str:
        """``wg`` in this node's mount and network namespaces."""
        proc = subprocess.run(["nsenter", "-t", str(self.pid), "-m", "-n", "wg", *args],
                              capture_output=True, text=True, timeout=20)
        assert proc.returncode == 0, f"wg {' '.join(args)} in {self.ns}: {proc.stderr.strip()}"
        return proc.stdout

    def exit(self) -> None:
        self.call("exit")
        self.proc.wait(timeout=10)

    def stderr_tail(self) -> str:
        try:
            lines = self.stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return "(no stderr)"
        return "stderr ends:\n" + "\n".join(lines[-15:])


@dataclass
class Lab:
    namespaces: tuple[str, str]
    base: Path
    nodes: list[Node] = field(default_factory=list)
    pids: set[int] = field(default_factory=set)

    def start(self, i: int) -> Node:
        """A node process in namespace ``i`` with a fresh mount namespace."""
        ns = self.namespaces[i]
        workdir = self.base / ns
        (workdir / "wireguard").mkdir(parents=True, exist_ok=True)
        (workdir / "log").mkdir(exist_ok=True)
        cmd = ["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private",
               "sh", "-c", RECIPE, str(workdir), sys.executable, str(NODE_SCRIPT),
               str(workdir / "log")]
        node = Node(ns, workdir, cmd, self.pids)
        self.nodes.append(node)
        return node

    def join(self, i: int, pid: int) -> Node:
        """A node process in the mount and network namespaces of process ``pid`` (a daemon
        restarted next to the wireguard-go its previous run left)."""
        ns = self.namespaces[i]
        workdir = self.base / ns
        cmd = ["nsenter", "-t", str(pid), "-m", "-n", sys.executable, str(NODE_SCRIPT),
               str(workdir / "log")]
        node = Node(ns, workdir, cmd, self.pids)
        self.nodes.append(node)
        return node


def _set_subreaper(on: bool) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _gone(pid: int) -> bool:
    """A child of ours: reaped now or before; another process: dead.  (A zombie thread group
    leader cannot be reaped until its other threads are gone: wireguard-go has many.)"""
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return not process_alive(pid)
    return reaped == pid


def _kill_all(pids: set[int], timeout: float = 10.0) -> None:
    """SIGKILL processes of our namespaces and wait until they are gone (reaped if ours)."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _reap_all(pids, timeout)


def _reap_all(pids: set[int], timeout: float = 10.0) -> None:
    """Wait until each is gone, reaping those that are children of ours (nothing is killed:
    a pid seen earlier may belong to another process by now)."""
    deadline = time.monotonic() + timeout
    left = set(pids)
    while left and time.monotonic() < deadline:
        left = {pid for pid in left if not _gone(pid)}
        time.sleep(0.01)


def _ns_pids(ns: str) -> set[int]:
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    return {int(t) for t in out.split() if t.isdigit()}


@pytest.fixture
def lab(netns_factory: Callable[[str], str], tmp_path: Path) -> Iterator[Lab]:
    """Two namespaces joined by a veth (198.18.41.1/24 and .2/24); node processes started by
    the test; everything in the namespaces killed and reaped afterwards (then the namespaces
    are deleted by ``netns_factory``)."""
    _set_subreaper(True)
    lab = Lab(("", ""), tmp_path)
    try:
        namespaces = lab.namespaces = (netns_factory("a"), netns_factory("b"))
        sh("ip", "link", "add", "wgtv-a", "netns", namespaces[0], "type", "veth",
           "peer", "name", "wgtv-b", "netns", namespaces[1])
        for ns, link, addr in zip(namespaces, ("wgtv-a", "wgtv-b"), UNDERLAY, strict=True):
            sh("ip", "addr", "add", f"{addr}/24", "dev", link, ns=ns)
            sh("ip", "link", "set", link, "up", ns=ns)
        yield lab
    finally:
        try:
            for node in lab.nodes:
                if node.proc.poll() is None:
                    node.proc.kill()
                node.proc.wait(timeout=10)
            for _ in range(3):  # a restart may race the first round
                pids = set().union(*(_ns_pids(ns) for ns in lab.namespaces if ns))
                if not pids:
                    break
                lab.pids |= pids
                _kill_all(pids)
            # wireguard-go a test killed, or that outlived its node, is a zombie child of ours
            _reap_all(lab.pids)
        finally:
            _set_subreaper(False)


# -- helpers -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Keys:
    private: tuple[Key, Key]

    def public(self, i: int) -> str:
        return self.private[i].public().base64()


def configure(node: Node, i: int, keys: Keys) -> None:
    """Node ``i``'s key and port, the other node as its one peer (what the backend does)."""
    j = 1 - i
    node.call("configure", ifname=DEV, config={
        "private_key": keys.private[i].base64(), "listen_port": PORTS[i], "replace_peers": True,
        "peers": [{"public_key": keys.public(j), "endpoint": f"{UNDERLAY[j]}:{PORTS[j]}",
                   "allowed_ips": [PODS[j]]}],
    })


def set_up_link(ns: str, i: int) -> None:
    """The pod address on the device, up, and the other node's pod network through it."""
    sh("ip", "addr", "replace", f"{POD_IPS[i]}/32", "dev", DEV, ns=ns)
    sh("ip", "link", "set", DEV, "up", ns=ns)
    sh("ip", "route", "replace", PODS[1 - i], "dev", DEV, "scope", "link", ns=ns)


def ping(ns: str, dst: str) -> bool:
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-q", "-c", "1", "-W", "1",
                           dst], capture_output=True, timeout=10).returncode == 0


def tunnel(lab: Lab, keys: Keys) -> tuple[Node, Node]:
    """Both nodes started, their devices made, configured and up."""
    nodes = (lab.start(0), lab.start(1))
    for i, node in enumerate(nodes):
        answer = node.call("ensure", ifname=DEV)
        assert answer["created"] is True
        assert answer["pid"]
        configure(node, i, keys)
        set_up_link(lab.namespaces[i], i)
    return nodes


def dump(node: Node) -> tuple[list[str], list[list[str]]]:
    """``wg show DEV dump``: the interface's fields without its private key, and the peers'."""
    lines = node.wg("show", DEV, "dump").splitlines()
    return lines[0].split("\t")[1:], [line.split("\t") for line in lines[1:]]


def host_socket_exists() -> bool:
    return Path(f"/var/run/wireguard/{DEV}.sock").exists()


def addresses(ns: str) -> list[str]:
    out = sh("ip", "-j", "addr", "show", "dev", DEV, ns=ns)
    return [a["local"] for link in json.loads(out) for a in link.get("addr_info", [])]


# -- tests ---------------------------------------------------------------------------------

async def test_two_nodes_talk_through_wireguard_go(lab: Lab) -> None:
    keys = Keys((Key.generate(), Key.generate()))
    a, b = tunnel(lab, keys)
    ns_a, ns_b = lab.namespaces
    # each node's socket is in its own directory, none in the machine's /var/run/wireguard
    assert (a.sockdir / f"{DEV}.sock").exists() and (b.sockdir / f"{DEV}.sock").exists()
    assert not host_socket_exists()

    await until(lambda: ping(ns_a, POD_IPS[1]), timeout=15, interval=0.2)
    assert ping(ns_b, POD_IPS[0])

    state = a.state()
    assert state["public_key"] == keys.public(0)
    assert state["listen_port"] == PORTS[0]
    (peer,) = state["peers"]
    assert peer["public_key"] == keys.public(1)
    assert peer["endpoint"] == f"{UNDERLAY[1]}:{PORTS[1]}"
    assert peer["allowed_ips"] == [PODS[1]]
    assert time.time() - 60 < peer["last_handshake"] <= time.time() + 1
    assert peer["rx_bytes"] > 0 and peer["tx_bytes"] > 0
    assert peer["has_preshared_key"] is False and peer["keepalive"] == 0

    # `wg` (same mount namespace) agrees; counters can move between two reads: read again
    # until both reads are of the same moment
    def agrees() -> bool:
        st = a.state()
        device, peers = dump(a)
        p = st["peers"][0]
        return device == [keys.public(0), str(PORTS[0]), "off"] and peers == [[
            p["public_key"], "(none)", p["endpoint"], ",".join(p["allowed_ips"]),
            str(int(p["last_handshake"])), str(p["rx_bytes"]), str(p["tx_bytes"]), "off"]]
    await until(agrees, timeout=10, interval=0.2)

    # a peer removed is gone from the device, and so is the traffic to it
    a.call("configure", ifname=DEV, config={"peers": [{"public_key": keys.public(1),
                                                       "remove": True}]})
    assert a.state()["peers"] == []
    assert dump(a)[1] == []
    assert not ping(ns_a, POD_IPS[1])
    assert len(b.state()["peers"]) == 1  # b still has a

    # wireguard-go writes to its log file, not to the node's output
    log = a.logdir / f"wireguard-go-{DEV}.log"
    assert log.read_text().startswith("--- ")


async def test_supervision_restarts_and_a_new_driver_attaches(lab: Lab) -> None:
    keys = Keys((Key.generate(), Key.generate()))
    a, _ = tunnel(lab, keys)
    ns_a, _ = lab.namespaces
    await until(lambda: ping(ns_a, POD_IPS[1]), timeout=15, interval=0.2)
    first = a.call("pid", ifname=DEV)["pid"]

    # wireguard-go killed: restarted (a new, empty device) and on_lost called
    os.kill(first, signal.SIGKILL)
    await until(lambda: a.call("lost")["events"] == [DEV], timeout=15, interval=0.1)
    second = a.call("pid", ifname=DEV)["pid"]
    assert second and second != first and process_alive(second)
    assert not process_alive(first)
    state = a.state()
    assert state["public_key"] is None and state["peers"] == []
    assert addresses(ns_a) == []  # the TUN device is new
    # set up again, as the backend does on on_lost: traffic flows again
    configure(a, 0, keys)
    set_up_link(ns_a, 0)
    await until(lambda: ping(ns_a, POD_IPS[1]), timeout=15, interval=0.2)
    log = (a.logdir / f"wireguard-go-{DEV}.log").read_text()
    assert log.count("--- ") == 2

    # close() leaves wireguard-go running; a new driver attaches to it
    a.call("close")
    assert process_alive(second)
    a.call("new_driver")
    answer = a.call("ensure", ifname=DEV)
    assert answer == {"ok": True, "created": False, "pid": second}

    # the daemon restarts: the node process exits, wireguard-go and the tunnel stay, and the
    # next process (in the same mount namespace) attaches to it
    a.exit()
    assert process_alive(second)
    assert ping(ns_a, POD_IPS[1])
    a2 = lab.join(0, second)
    answer = a2.call("ensure", ifname=DEV)
    assert answer == {"ok": True, "created": False, "pid": second}
    assert a2.state()["public_key"] == keys.public(0)

    # killed while attached (not our child): noticed by polling the socket, restarted
    os.kill(second, signal.SIGKILL)
    await until(lambda: a2.call("lost")["events"] == [DEV], timeout=15, interval=0.1)
    third = a2.call("pid", ifname=DEV)["pid"]
    assert third and third not in (first, second)
    assert a2.state()["public_key"] is None

    # stop_device terminates it (and the device goes with it)
    assert a2.call("stop", ifname=DEV)["stopped"] is True
    assert not process_alive(third)
    assert sh("ip", "-j", "link", "show", ns=ns_a).count(f'"{DEV}"') == 0
    assert a2.call("lost")["events"] == [DEV]  # not restarted


async def test_a_start_failure_says_why(lab: Lab) -> None:
    ns_a, _ = lab.namespaces
    sh("ip", "link", "add", "wgbusy", "type", "veth", "peer", "name", "wgbusy-p", ns=ns_a)
    a = lab.start(0)
    answer = a.try_call("ensure", ifname="wgbusy")
    assert answer["ok"] is False
    assert "exited with status 1 at start" in answer["error"]
    assert "Failed to create TUN device" in answer["error"]
    assert str(a.logdir / "wireguard-go-wgbusy.log") in answer["error"]
    assert a.call("pid", ifname="wgbusy")["pid"] is None


async def test_a_deleted_device_is_made_again(lab: Lab) -> None:
    """wireguard-go exits (status 0) when its TUN device is deleted: restarted, on_lost."""
    ns_a, _ = lab.namespaces
    a = lab.start(0)
    assert a.call("ensure", ifname=DEV)["created"] is True
    first = a.call("pid", ifname=DEV)["pid"]
    sh("ip", "link", "del", DEV, ns=ns_a)
    await until(lambda: a.call("lost")["events"] == [DEV], timeout=15, interval=0.1)
    assert a.call("pid", ifname=DEV)["pid"] not in (None, first)
    assert f'"{DEV}"' in sh("ip", "-j", "link", "show", ns=ns_a)
    assert "exited with status 0" in a.stderr_path.read_text()
