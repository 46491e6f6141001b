"""--ip-masq rules: golden renderings, then the real thing in namespaces (nft and iptables)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ops_netns import MasqLab, in_ns, udp_probe

from flanneld.masq import MasqConfig, MasqRules, command_runner, make_masq_rules
from flanneld.masq_iptables import IptablesMasq, render_restore
from flanneld.masq_nft import NftMasq, render_replace

GOLDEN = Path(__file__).parent / "golden"

V4 = MasqConfig.parse("10.244.0.0/16", "10.244.1.1/24")
V6 = MasqConfig.parse("fd00:10:244::/48", "fd00:10:244:1::1/64")


def golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} differs; UPDATE_GOLDEN=1 rewrites it"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "config"),
    [
        ("masq-ipv4", V4),
        ("masq-ipv6", V6),
        ("forward-only-ipv4", MasqConfig.parse("10.244.0.0/16", "10.244.1.1/24", ip_masq=False)),
        (
            "disabled-ipv4",
            MasqConfig.parse("10.244.0.0/16", "10.244.1.1/24", ip_masq=False, forward_rules=False),
        ),
    ],
)
def test_nft_golden(name: str, config: MasqConfig) -> None:
    golden(f"{name}.nft", render_replace(config))


@pytest.mark.unit
@pytest.mark.parametrize(("name", "config"), [("masq-ipv4", V4), ("masq-ipv6", V6)])
def test_iptables_golden(name: str, config: MasqConfig) -> None:
    golden(f"{name}.iptables", render_restore(config))


@pytest.mark.unit
def test_config_validation() -> None:
    with pytest.raises(ValueError, match="not inside"):
        MasqConfig.parse("10.244.0.0/16", "10.245.1.1/24")
    with pytest.raises(ValueError, match="family"):
        MasqConfig.parse("10.244.0.0/16", "fd00::1/64")
    assert MasqConfig.parse("10.244.0.0/16", "10.244.1.1/24").subnet.exploded == "10.244.1.0/24"


def rules_for(kind: str, config: MasqConfig, ns: str) -> MasqRules:
    run = command_runner(ns)
    return NftMasq(config, run) if kind == "nft" else IptablesMasq(config, run)


def delete_by_hand(kind: str, ns: str) -> None:
    if kind == "nft":
        in_ns(ns, "nft", "delete", "table", "ip", "flannel-ipv4")
    else:
        in_ns(ns, "iptables", "-t", "nat", "-D", "POSTROUTING", "-m", "comment", "--comment",
              "flanneld masq", "-j", "FLANNEL-POSTRTG")  # fmt: skip


def listing(kind: str, ns: str) -> str:
    if kind == "nft":
        return in_ns(ns, "nft", "list", "ruleset").stdout
    return in_ns(ns, "iptables-save").stdout


@pytest.mark.netlink
@pytest.mark.parametrize("kind", ["nft", "iptables"])
def test_apply_check_repair_update_remove(kind: str, make_netns: Callable[[str], str]) -> None:
    ns = make_netns("m")
    rules = rules_for(kind, V4, ns)
    assert not rules.check()  # nothing applied yet
    rules.apply()
    assert rules.check()
    text = listing(kind, ns)
    assert "10.244.1.0/24" in text and "10.244.0.0/16" in text
    rules.apply()  # idempotent
    assert rules.check()
    assert listing(kind, ns) == text or kind == "iptables"  # iptables-save has a timestamp

    delete_by_hand(kind, ns)
    assert not rules.check()
    assert rules.ensure() is True
    assert rules.check()
    assert rules.ensure() is False

    # someone edits a rule: detected too
    if kind == "nft":
        in_ns(ns, "nft", "flush", "chain", "ip", "flannel-ipv4", "forward")
    else:
        in_ns(ns, "iptables", "-D", "FLANNEL-FWD", "1")
    assert not rules.check()
    assert rules.ensure() is True

    # subnet change: the old subnet's rules are gone
    rules.update(MasqConfig.parse("10.244.0.0/16", "10.244.7.1/24"))
    text = listing(kind, ns)
    assert "10.244.7.0/24" in text and "10.244.1.0/24" not in text
    assert rules.check()

    rules.remove()
    text = listing(kind, ns)
    assert "flannel" not in text.lower(), text


@pytest.mark.netlink
def test_auto_prefers_nft(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("a")
    assert make_masq_rules(V4, "auto", netns=ns).name == "nft"
    assert make_masq_rules(V4, "nftables", netns=ns).name == "nft"
    assert make_masq_rules(V4, "iptables", netns=ns).name == "iptables"


@pytest.mark.netlink
def test_ipv6_nft_applies(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("6")
    rules = rules_for("nft", V6, ns)
    rules.apply()
    assert rules.check()
    assert "table ip6 flannel-ipv6" in listing("nft", ns)
    rules.remove()
    assert "flannel" not in listing("nft", ns)


@pytest.mark.netlink
@pytest.mark.parametrize("kind", ["nft", "iptables"])
def test_traffic_masquerade(kind: str, masq_lab: MasqLab) -> None:
    lab = masq_lab
    # Without rules the outside sees the pod address and cannot answer (no route back).
    seen, replied = udp_probe(lab.pod, lab.outside, lab.outside_ip, tries=3)
    assert (seen, replied) == (lab.pod_ip, False)

    rules = rules_for(kind, MasqConfig.parse(lab.network, lab.subnet), lab.node)
    rules.apply()
    # pod -> outside: masqueraded to the node's address, and the reply comes back
    assert udp_probe(lab.pod, lab.outside, lab.outside_ip, port=5354) == (
        lab.node_outside_ip,
        True,
    )
    # pod -> pod of another subnet of the Network: not masqueraded
    assert udp_probe(lab.pod, lab.peer_pod, lab.peer_pod_ip, port=5355) == (lab.pod_ip, True)
    # remote pod -> our pod (N -> P): not masqueraded either
    assert udp_probe(lab.peer_pod, lab.pod, lab.pod_ip, port=5356) == (lab.peer_pod_ip, True)

    # deleted by hand: the periodic pass puts it back and masquerading works again
    delete_by_hand(kind, lab.node)
    assert udp_probe(lab.pod, lab.outside, lab.outside_ip, port=5357, tries=3)[0] == lab.pod_ip
    assert rules.ensure() is True
    assert udp_probe(lab.pod, lab.outside, lab.outside_ip, port=5358) == (
        lab.node_outside_ip,
        True,
    )
    rules.remove()
