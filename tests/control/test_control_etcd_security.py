"""etcd TLS (mutual, with a CA the test makes) and basic auth, against a real etcd."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from etcd_server import EtcdServer
from pki import CA, make_ca

from flanneld.errors import ConfigError, StoreUnavailableError
from flanneld.etcd_store import EtcdStore, StoreAuthError, TLSFiles, parse_endpoints

pytestmark = pytest.mark.etcd


@dataclass
class TLSCluster:
    server: EtcdServer
    ca: CA
    client: tuple[str, str]
    rogue_ca: CA
    rogue_client: tuple[str, str]


@pytest.fixture(scope="module")
def tls_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSCluster]:
    d = tmp_path_factory.mktemp("pki")
    ca = make_ca(d, "ca")
    server_cert, server_key = ca.issue("server", "etcd", server=True)
    client = ca.issue("client", "flanneld")
    rogue = make_ca(d / "rogue", "rogue-ca")
    rogue_client = rogue.issue("rogue-client", "flanneld")
    server = EtcdServer(name="tls", tls=(ca.cert, server_cert, server_key))
    try:
        server.start()
        yield TLSCluster(server, ca, client, rogue, rogue_client)
    finally:
        server.cleanup()


async def test_mutual_tls_works(tls_etcd: TLSCluster) -> None:
    store = EtcdStore(parse_endpoints(tls_etcd.server.endpoint), timeout=3,
                      tls=TLSFiles(tls_etcd.ca.cert, *tls_etcd.client))
    try:
        await store.put("/tls/probe", b"ok")
        kv = await store.get("/tls/probe")
        assert kv is not None and kv.value == b"ok"
    finally:
        await store.close()


async def test_wrong_ca_is_refused_clearly(tls_etcd: TLSCluster) -> None:
    # Our client trusts a different CA than the one that signed etcd's certificate.
    store = EtcdStore(parse_endpoints(tls_etcd.server.endpoint), timeout=2,
                      tls=TLSFiles(tls_etcd.rogue_ca.cert, *tls_etcd.rogue_client))
    try:
        with pytest.raises(StoreUnavailableError, match=r"TLS failed.*not signed by --etcd-cafile"):
            await store.get("/tls/probe")
    finally:
        await store.close()


async def test_client_cert_from_another_ca_is_refused(tls_etcd: TLSCluster) -> None:
    store = EtcdStore(parse_endpoints(tls_etcd.server.endpoint), timeout=2,
                      tls=TLSFiles(tls_etcd.ca.cert, *tls_etcd.rogue_client))
    try:
        with pytest.raises(StoreUnavailableError, match=r"TLS failed.*refused our client certificate"):
            await store.get("/tls/probe")
    finally:
        await store.close()


def test_https_endpoint_without_tls_files_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="need --etcd-cafile, --etcd-certfile and --etcd-keyfile"):
        EtcdStore(parse_endpoints("https://127.0.0.1:2379"))


def test_unreadable_or_mismatched_tls_files_are_config_errors(tls_etcd: TLSCluster, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read --etcd-cafile"):
        EtcdStore(parse_endpoints("https://127.0.0.1:2379"),
                  tls=TLSFiles(str(tmp_path / "none.pem"), *tls_etcd.client))
    cert, _ = tls_etcd.client
    _, other_key = tls_etcd.rogue_client
    with pytest.raises(ConfigError, match="do not load"):
        EtcdStore(parse_endpoints("https://127.0.0.1:2379"), tls=TLSFiles(tls_etcd.ca.cert, cert, other_key))


def test_daemon_refuses_ca_without_client_cert_at_startup(tls_etcd: TLSCluster) -> None:
    flanneld = str(Path(sys.executable).parent / "flanneld")
    r = subprocess.run([flanneld, "--etcd-endpoints", tls_etcd.server.endpoint,
                        "--etcd-cafile", tls_etcd.ca.cert],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2
    assert "refusing to fall back to plain http" in r.stderr


async def test_basic_auth(fresh_etcd: EtcdServer) -> None:
    env = dict(os.environ, ETCDCTL_API="3")
    ep = ["etcdctl", "--endpoints", fresh_etcd.endpoint]
    for args in (["user", "add", "root:rootpw"], ["user", "add", "flannel:s3cret"],
                 ["role", "add", "flannel"],
                 ["role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/coreos.com/"],
                 ["user", "grant-role", "flannel", "flannel"], ["auth", "enable"]):
        subprocess.run(ep + args, env=env, check=True, capture_output=True)
    good = EtcdStore(parse_endpoints(fresh_etcd.endpoint), timeout=3, username="flannel", password="s3cret")
    bad = EtcdStore(parse_endpoints(fresh_etcd.endpoint), timeout=3, username="flannel", password="wrong")
    try:
        await good.put("/coreos.com/network/probe", b"1")
        assert (await good.get("/coreos.com/network/probe")) is not None
        with pytest.raises(StoreAuthError, match="refused our credentials"):
            await bad.get("/coreos.com/network/probe")
    finally:
        await good.close()
        await bad.close()
