"""Pure parts of the lab: naming (what `down` relies on after a crash) and the ping matrix."""

from __future__ import annotations

import pytest
from labkit import REPO  # noqa: F401  (puts netns-lab on sys.path)
from netnslab.names import LabNames, NameError_, Target, check_name, parse_target
from netnslab.pingmatrix import PingResult, render
from netnslab.state import PodState

pytestmark = pytest.mark.lab


def test_lab_owns_only_its_own_namespaces() -> None:
    flab = LabNames("flab")
    assert flab.owns_ns("flab-ul") and flab.owns_ns("flab-n12") and flab.owns_ns("flab-n3p2")
    for other in ("flabt1-ul", "flab-n1x", "flab-ul2", "xflab-n1", "flab-", "flab-p1"):
        assert not flab.owns_ns(other), other
    assert flab.link_pattern.match("flab-p7") and not flab.link_pattern.match("flabt1-p7")


def test_interface_names_fit_ifnamsiz() -> None:
    names = LabNames("abcdefghi")  # longest allowed
    for link in (names.bridge, names.uplink, names.bridge_port(253), names.pod_host_veth(99)):
        assert len(link) <= 15, link


@pytest.mark.parametrize("bad", ["", "Flab", "1lab", "flab-x", "abcdefghij"])
def test_bad_lab_names_rejected(bad: str) -> None:
    with pytest.raises(NameError_):
        check_name(bad)


def test_targets() -> None:
    names = LabNames("flab")
    assert parse_target("ul", names) == Target(None)
    assert parse_target("n2", names) == Target(2) == parse_target("2", names)
    assert parse_target("flab-n2p1", names).ns(names) == "flab-n2p1"
    with pytest.raises(NameError_):
        parse_target("other-n2", names)


def test_matrix_marks_failures() -> None:
    pods = [PodState("flab-n1p1", 1, 1, "10.244.1.2/24"), PodState("flab-n2p1", 2, 1, "10.244.2.2/24")]
    results = [PingResult("flab-n1p1", "flab-n2p1", True), PingResult("flab-n2p1", "flab-n1p1", False)]
    text = render(pods, results, "flab")
    rows = text.splitlines()
    assert rows[2].split() == ["n1p1", "-", "."]
    assert rows[3].split() == ["n2p1", "X", "-"]
    assert rows[-1] == "1/2 pod pairs reachable"
