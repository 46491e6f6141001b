"""What an operator reads when etcd cannot be used: the cause per endpoint, never a TLS
failure for a plain-http endpoint, and the flag to set when etcd wants credentials."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from etcd_server import EtcdServer

from flanneld.errors import StoreUnavailableError
from flanneld.etcd_store import EtcdStore, StoreAuthError, parse_endpoints

pytestmark = pytest.mark.etcd
CTL = str(Path(sys.executable).parent / "flannelctl")


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A TCP listener that accepts and never says a word (like a host that drops packets
    after the handshake, or something that is not etcd)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    try:
        yield int(srv.getsockname()[1])
    finally:
        srv.close()


async def unavailable_error(port: int) -> str:
    """The StoreUnavailableError text of one get against 127.0.0.1:``port``."""
    store = EtcdStore(parse_endpoints(f"http://127.0.0.1:{port}"), timeout=1)
    try:
        with pytest.raises(StoreUnavailableError) as info:
            await store.get("/x")
    finally:
        await store.close()
    return str(info.value)


async def test_refused_is_reported_as_refused_not_tls() -> None:
    port = closed_port()
    text = await unavailable_error(port)
    assert f"http://127.0.0.1:{port}: connection refused" in text, text
    assert "TLS" not in text and "\n" not in text, text


async def test_no_answer_is_reported_as_a_timeout_not_tls(silent_listener: int) -> None:
    text = await unavailable_error(silent_listener)
    assert "no answer within 2s" in text, text
    assert "TLS" not in text and "\n" not in text, text


def test_flannelctl_names_each_endpoints_cause(silent_listener: int) -> None:
    refused = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANNELD_")}
    r = subprocess.run([CTL, "--etcd-endpoints",
                        f"http://127.0.0.1:{refused},http://127.0.0.1:{silent_listener}",
                        "--etcd-timeout", "1", "subnets"],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert f"127.0.0.1:{refused}: connection refused" in r.stderr, r.stderr
    assert f"127.0.0.1:{silent_listener}: no answer within" in r.stderr, r.stderr
    assert "TLS" not in r.stderr and "Traceback" not in r.stderr, r.stderr


async def test_auth_without_a_user_names_the_flag(fresh_etcd: EtcdServer) -> None:
    env = dict(os.environ, ETCDCTL_API="3")
    ep = ["etcdctl", "--endpoints", fresh_etcd.endpoint]
    for args in (["user", "add", "root:rootpw"], ["auth", "enable"]):
        subprocess.run(ep + args, env=env, check=True, capture_output=True)
    store = EtcdStore(parse_endpoints(fresh_etcd.endpoint), timeout=3)
    try:
        with pytest.raises(StoreAuthError, match="--etcd-username and --etcd-password"):
            await store.get("/coreos.com/network/config")
    finally:
        await store.close()
