"""A real etcd server for tests: Debian's etcd-server on loopback, free ports, temp data dir.

Used by the `etcd` fixtures in conftest.py and by netns-lab-style tests that need an etcd
reachable from namespaces (pass ``listen_ip``/``netns``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

ETCD_BIN = shutil.which("etcd") or "/usr/bin/etcd"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class EtcdServer:
    """One etcd member (single-node cluster unless ``initial_cluster`` is given)."""

    name: str = "default"
    host: str = "127.0.0.1"
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    data_dir: str = ""
    netns: str | None = None
    initial_cluster: str | None = None
    extra_args: tuple[str, ...] = ()
    # (ca, cert, key) PEM paths: serve https and require client certificates signed by ca.
    tls: tuple[str, str, str] | None = None
    proc: subprocess.Popen[bytes] | None = None
    _own_dir: bool = False

    @property
    def endpoint(self) -> str:
        scheme = "https" if self.tls else "http"
        return f"{scheme}://{self.host}:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.host}:{self.peer_port}"

    def start(self, wait: bool = True) -> EtcdServer:
        if not self.data_dir:
            self.data_dir = tempfile.mkdtemp(prefix="flannel-etcd-")
            self._own_dir = True
        cmd = [
            ETCD_BIN,
            "--name", self.name,
            "--data-dir", self.data_dir,
            "--listen-client-urls", self.endpoint,
            "--advertise-client-urls", self.endpoint,
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", self.initial_cluster or f"{self.name}={self.peer_url}",
            "--initial-cluster-state", "new",
            "--logger=zap",
            "--log-level=error",
            *self.extra_args,
        ]
        if self.tls:
            ca, cert, key = self.tls
            cmd += ["--cert-file", cert, "--key-file", key, "--trusted-ca-file", ca,
                    "--client-cert-auth"]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        self.proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if wait:
            self.wait_healthy()
        return self

    def healthy(self) -> bool:
        url = f"{self.endpoint}/health"
        if self.netns:
            r = subprocess.run(
                ["ip", "netns", "exec", self.netns, "curl", "-sf", url],
                capture_output=True,
                check=False,
            )
            return r.returncode == 0 and b'"true"' in r.stdout
        context = None
        if self.tls:
            import ssl

            context = ssl.create_default_context(cafile=self.tls[0])
            context.load_cert_chain(self.tls[1], self.tls[2])
        try:
            with urllib.request.urlopen(url, timeout=1, context=context) as resp:
                return b'"true"' in resp.read()
        except OSError:
            return False

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"etcd {self.name} exited with {self.proc.returncode}")
            if self.healthy():
                return
            time.sleep(0.05)
        raise TimeoutError(f"etcd {self.name} not healthy after {timeout}s at {self.endpoint}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """Stop the process (keeping the data dir, so start() can resume the same member)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        cluster = self.initial_cluster
        self.start_existing(cluster)

    def start_existing(self, cluster: str | None) -> None:
        """Start again on the same data dir (the member rejoins its cluster)."""
        self.initial_cluster = cluster
        self.start()

    def cleanup(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


@contextlib.contextmanager
def running_etcd(**kwargs: object) -> Iterator[EtcdServer]:
    server = EtcdServer(**kwargs)  # type: ignore[arg-type]
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def etcdctl(server: EtcdServer, *args: str) -> str:
    env = dict(os.environ, ETCDCTL_API="3")
    cmd = ["etcdctl", "--endpoints", server.endpoint, *args]
    if server.netns:
        cmd = ["ip", "netns", "exec", server.netns, *cmd]
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


@dataclass
class EtcdCluster:
    """A 3-member (by default) etcd cluster on loopback ports."""

    size: int = 3
    members: list[EtcdServer] = field(default_factory=list)

    def start(self) -> EtcdCluster:
        self.members = [EtcdServer(name=f"m{i}") for i in range(self.size)]
        cluster = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        for m in self.members:
            m.initial_cluster = cluster
            m.start(wait=False)
        for m in self.members:
            m.wait_healthy(30)
        return self

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    def leader(self) -> EtcdServer:
        """The current leader, asked of each live member (etcdctl endpoint status)."""
        import json

        for m in self.members:
            if m.proc is None or m.proc.poll() is not None:
                continue
            r = subprocess.run(
                ["etcdctl", "--endpoints", m.endpoint, "endpoint", "status", "-w", "json"],
                env=dict(os.environ, ETCDCTL_API="3"), capture_output=True, text=True, check=False,
            )
            if r.returncode != 0:
                continue
            status = json.loads(r.stdout)[0]["Status"]
            if status["leader"] and status["leader"] == status["header"]["member_id"]:
                return m
        raise RuntimeError("no leader found")

    def cleanup(self) -> None:
        for m in self.members:
            m.cleanup()
