"""Device counters come from the daemon's own namespace, also when sysfs shows another one."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import pytest

pytestmark = pytest.mark.netlink

SNIPPET = (
    "import json, dataclasses; from flanneld.backends.base import netlink_device_source as s; "
    "print(json.dumps([[type(x).__name__, *dataclasses.astuple(x)] for x in s('lo')()]))"
)


def test_counters_follow_the_process_namespace_not_sysfs() -> None:
    ns = f"fknl-cnt{uuid.uuid4().hex[:4]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.01", "-q", "127.0.0.1"],
                       check=True, capture_output=True)
        stats = json.loads(subprocess.run(["ip", "-n", ns, "-s", "-j", "link", "show", "lo"],
                                          check=True, capture_output=True, text=True).stdout)[0]["stats64"]
        # nsenter keeps the root namespace's /sys: a sysfs reader would see the host's lo.
        # (-P: the repo root must not shadow the installed package, whose backends/ is mapped.)
        out = subprocess.run(["nsenter", f"--net=/run/netns/{ns}", sys.executable, "-P", "-c", SNIPPET],
                             check=True, capture_output=True, text=True).stdout
        samples = json.loads(out)
        tx = next(s for s in samples if s[0] == "TrafficSample" and s[1] == "tx")
        assert tx[2] >= stats["tx"]["packets"] >= 6  # 3 echo requests + 3 replies on lo
        assert tx[2] < stats["tx"]["packets"] + 10  # and not the host's loopback counters
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_missing_device_yields_no_samples() -> None:
    from flanneld.backends.base import netlink_device_source

    assert netlink_device_source("fknl-nodev0")() == []
