"""Shared fixtures: real etcd servers on loopback, unique etcd prefixes, root checks."""

from __future__ import annotations

import logging
import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from etcd_server import EtcdServer


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Undo what a test's logging set-up did: root handlers and level, our logger's and the
    libraries' levels."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    names = ("flanneld", "aetcd", "grpc", "pyroute2", "asyncio", "urllib3")
    levels = {n: logging.getLogger(n).level for n in names}
    try:
        yield
    finally:
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        root.setLevel(level)
        for n, lvl in levels.items():
            logging.getLogger(n).setLevel(lvl)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests that need root (netlink, lab, fault) are skipped with a reason when not root."""
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (network namespaces, netlink)")
    for item in items:
        if any(item.get_closest_marker(m) for m in ("netlink", "lab", "fault", "kube")):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    """One etcd for the whole session; tests isolate themselves with ``etcd_prefix``."""
    server = EtcdServer(name="session")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/test-{uuid.uuid4().hex[:10]}/network"


@pytest.fixture
def fresh_etcd() -> Iterator[EtcdServer]:
    """A private etcd a test may stop, restart or compact."""
    server = EtcdServer(name="fresh")
    try:
        server.start()
        yield server
    finally:
        server.cleanup()
