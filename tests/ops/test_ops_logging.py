"""flanneld.logging_setup: one line per event, key=value or JSON fields, verbosity levels."""

from __future__ import annotations

import io
import json
import logging

import pytest

from flanneld.logging_setup import FieldsAdapter, log_event, setup_logging

pytestmark = pytest.mark.unit


def lines(buf: io.StringIO) -> list[str]:
    return buf.getvalue().splitlines()


def test_key_value_one_line(restore_logging: None) -> None:
    buf = io.StringIO()
    setup_logging(0, stream=buf, timestamps=False)
    log = logging.getLogger("flanneld.lease")
    log_event(log, "lease acquired", subnet="10.244.1.0/24", ttl=86400, note='a "b"\nc')
    log.debug("hidden at -v0")
    try:
        raise ValueError("multi\nline")
    except ValueError:
        log.exception("renew failed")
    out = lines(buf)
    assert out[0] == (
        'level=info logger=flanneld.lease msg="lease acquired" subnet=10.244.1.0/24 '
        'ttl=86400 note="a \\"b\\"\\nc"'
    )
    assert len(out) == 2, out  # the traceback stays on the event's line
    assert out[1].startswith('level=error logger=flanneld.lease msg="renew failed" ')
    assert 'error="ValueError: multi\\nline"' in out[1] and "traceback=" in out[1]


def test_json(restore_logging: None) -> None:
    buf = io.StringIO()
    setup_logging(1, json_format=True, stream=buf, timestamps=True)
    log = FieldsAdapter(logging.getLogger("flanneld.backend"), backend="vxlan")
    log.debug("peer added", peer="10.244.2.0/24", count=3)
    log.bind(vni=1).info("device ready")
    first, second = (json.loads(line) for line in lines(buf))
    assert first["level"] == "debug" and first["msg"] == "peer added"
    assert first["backend"] == "vxlan" and first["peer"] == "10.244.2.0/24" and first["count"] == 3
    assert first["time"].endswith("Z")
    assert second["vni"] == 1 and second["backend"] == "vxlan"


def test_verbosity_levels(restore_logging: None) -> None:
    buf = io.StringIO()
    setup_logging(0, stream=buf)
    assert logging.getLogger().level == logging.INFO
    assert logging.getLogger("aetcd").level == logging.WARNING
    setup_logging(1, stream=buf)
    assert logging.getLogger().level == logging.DEBUG
    assert logging.getLogger("pyroute2").level == logging.WARNING
    setup_logging(2, stream=buf)
    assert logging.getLogger("pyroute2").level == logging.DEBUG
    # reconfiguring replaces our handler instead of stacking a second one
    ours = [h for h in logging.getLogger().handlers if h.get_name() == "flanneld"]
    assert len(ours) == 1


def test_journald_drops_timestamps(restore_logging: None, monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.StringIO()
    monkeypatch.setenv("JOURNAL_STREAM", "8:1234")
    setup_logging(0, stream=buf)
    logging.getLogger("flanneld").info("hello")
    assert lines(buf) == ["level=info logger=flanneld msg=hello"]
    monkeypatch.delenv("JOURNAL_STREAM")
    setup_logging(0, stream=buf)
    logging.getLogger("flanneld").info("hello")
    assert lines(buf)[-1].startswith("time=")
