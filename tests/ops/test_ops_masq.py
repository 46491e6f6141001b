"""--ip-masq rules: golden renderings, then the real thing in namespaces (nft and iptables)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ops_netns import MasqLab, in_ns
from udp_probe import udp_probe

from flanneld.masq import (
    MasqConfig,
    MasqError,
    MasqRules,
    choose_masq_backend,
    command_runner,
    make_masq_rules,
)
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


# --masq-mode x EnableNFTables x which firewall tools work here -> (firewall, fallback?)
DECISIONS = [
    # auto: what the network config's EnableNFTables says, as Go flanneld decides
    ("auto", False, {"nft", "iptables"}, "iptables", False),
    ("auto", True, {"nft", "iptables"}, "nft", False),
    # ... unless that firewall's tool does not work here and the other one does
    ("auto", False, {"nft"}, "nft", True),
    ("auto", True, {"iptables"}, "iptables", True),
    # neither works: the configured one (its apply fails with a clear MasqError)
    ("auto", False, set(), "iptables", False),
    ("auto", True, set(), "nft", False),
    # an explicit --masq-mode wins over EnableNFTables and never falls back
    ("nftables", False, {"nft", "iptables"}, "nft", False),
    ("nftables", True, {"iptables"}, "nft", False),
    ("nft", False, set(), "nft", False),
    ("iptables", True, {"nft", "iptables"}, "iptables", False),
    ("iptables", False, {"nft"}, "iptables", False),
]


@pytest.mark.unit
@pytest.mark.parametrize(("mode", "enable_nftables", "usable", "kind", "fallback"), DECISIONS)
def test_choose_masq_backend(
    mode: str, enable_nftables: bool, usable: set[str], kind: str, fallback: bool
) -> None:
    choice = choose_masq_backend(mode, enable_nftables, usable=lambda k: k in usable)
    assert (choice.kind, choice.fallback) == (kind, fallback)
    assert choice.reason  # logged by make_masq_rules


@pytest.mark.unit
def test_choose_masq_backend_explains_itself() -> None:
    assert choose_masq_backend("auto", False).reason == "EnableNFTables=false"
    assert choose_masq_backend("auto", True).reason == "EnableNFTables=true"
    assert "overrides EnableNFTables=true" in choose_masq_backend("iptables", True).reason
    assert "overrides" not in choose_masq_backend("iptables", False).reason
    why = choose_masq_backend("auto", False, usable=lambda k: k == "nft").reason
    assert "iptables" in why and "nftables" in why
    with pytest.raises(ValueError, match="--masq-mode"):
        choose_masq_backend("pf", False)


@pytest.mark.unit
def test_make_masq_rules_follows_enable_nftables(monkeypatch: pytest.MonkeyPatch) -> None:
    import flanneld.masq as masq

    monkeypatch.setattr(masq, "nft_available", lambda run: True)
    monkeypatch.setattr(masq, "iptables_available", lambda family: True)
    assert make_masq_rules(V4).name == "iptables"  # EnableNFTables absent means false
    assert make_masq_rules(V4, "auto", enable_nftables=False).name == "iptables"
    assert make_masq_rules(V4, "auto", enable_nftables=True).name == "nft"
    assert make_masq_rules(V6, "auto", enable_nftables=True).name == "nft"
    assert make_masq_rules(V4, "iptables", enable_nftables=True).name == "iptables"
    assert make_masq_rules(V4, "nftables", enable_nftables=False).name == "nft"
    monkeypatch.setattr(masq, "iptables_available", lambda family: False)
    assert make_masq_rules(V4, "auto", enable_nftables=False).name == "nft"


@pytest.mark.unit
def test_missing_program_is_a_masq_error() -> None:
    run = command_runner()
    proc = run(["/nonexistent/iptables-restore", "--noflush"], None)
    assert proc.returncode == 127 and b"not found" in proc.stderr
    with pytest.raises(MasqError, match=r"iptables-restore.*not found"):
        IptablesMasq(V4, lambda argv, stdin: run(["/nonexistent/" + argv[0], *argv[1:]], stdin)).apply()


@pytest.mark.netlink
def test_auto_follows_enable_nftables(make_netns: Callable[[str], str]) -> None:
    ns = make_netns("a")
    assert make_masq_rules(V4, "auto", netns=ns, enable_nftables=False).name == "iptables"
    assert make_masq_rules(V4, "auto", netns=ns, enable_nftables=True).name == "nft"
    assert make_masq_rules(V4, "nftables", netns=ns).name == "nft"
    assert make_masq_rules(V4, "iptables", netns=ns, enable_nftables=True).name == "iptables"


def iptables_chains(ns: str) -> set[str]:
    text = in_ns(ns, "iptables-save").stdout
    return {c for c in ("FLANNEL-POSTRTG", "FLANNEL-FWD") if f":{c} " in text}


@pytest.mark.netlink
def test_switching_firewall_removes_the_other_ones_rules(make_netns: Callable[[str], str]) -> None:
    """A node whose firewall changes (EnableNFTables edited, or an upgrade from the old auto =
    nftables) must not keep the other firewall's rules of an older subnet: they would
    masquerade pod-to-pod traffic of the new one."""
    ns = make_netns("w")
    old = MasqConfig.parse("10.244.0.0/16", "10.244.9.1/24")
    rules_for("nft", old, ns).apply()
    assert "10.244.9.0/24" in listing("nft", ns)
    rules = make_masq_rules(V4, "auto", netns=ns, enable_nftables=False)
    rules.apply()
    assert "flannel" not in listing("nft", ns)
    assert iptables_chains(ns) == {"FLANNEL-POSTRTG", "FLANNEL-FWD"}
    assert rules.check()

    rules = make_masq_rules(V4, "auto", netns=ns, enable_nftables=True)
    rules.apply()
    assert iptables_chains(ns) == set()
    assert "table ip flannel-ipv4" in listing("nft", ns)
    assert rules.check()
    # later passes leave the other firewall alone (it was cleared once)
    rules_for("iptables", V4, ns).apply()
    assert rules.ensure() is False
    assert iptables_chains(ns) == {"FLANNEL-POSTRTG", "FLANNEL-FWD"}
    rules.remove()
    rules_for("iptables", V4, ns).remove()


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
