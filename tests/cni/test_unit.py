"""Pure tier: rendering, Go JSON, netconf / subnet.env parsing, version conversion, CHECK rules."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flanneld.cni import check, gojson, netconf, render, subnetenv, versions
from flanneld.cni.conflist import render_conflist, write_conflist
from flanneld.cni.errors import CniError

from .harness import GOLDEN

pytestmark = pytest.mark.unit

KUBE_FLANNEL_NETCONF = {
    "cniVersion": "0.3.1",
    "name": "cbr0",
    "type": "flannel",
    "delegate": {"hairpinMode": True, "isDefaultGateway": True},
}
ENV_TEXT = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)


def _render(conf: dict[str, Any], env_text: str = ENV_TEXT) -> bytes:
    doc = netconf.decode(json.dumps(conf).encode())
    return render.delegate_bytes(netconf.parse(doc), subnetenv.parse(env_text, "subnet.env"))


def test_kube_flannel_delegate_config_is_the_reference_bytes() -> None:
    assert _render(KUBE_FLANNEL_NETCONF) == (GOLDEN / "delegate-kube-flannel.json").read_bytes()


def test_delegate_keys_present_are_kept_and_ipmasq_inverted() -> None:
    conf = dict(KUBE_FLANNEL_NETCONF, delegate={"type": "ipvlan", "mtu": 1400, "master": "x"})
    out = json.loads(_render(conf, ENV_TEXT.replace("IPMASQ=true", "IPMASQ=false")))
    assert out["mtu"] == 1400 and out["ipMasq"] is True and out["type"] == "ipvlan"
    assert "isGateway" not in out  # only bridge gets isGateway


def test_ipam_routes_reencoded_and_networks_appended() -> None:
    conf = dict(
        KUBE_FLANNEL_NETCONF,
        runtimeConfig={"portMappings": []},
        ipam={"type": "host-local", "dataDir": "/x",
              "routes": [{"GW": "10.0.0.1", "dst": "192.168.7.9/24", "junk": 1, "mtu": 1400.0}]},
    )
    env = ENV_TEXT.replace("10.244.0.0/16", "10.244.0.0/16,10.245.0.0/16,10.244.0.0/16") + (
        "FLANNEL_IPV6_NETWORK=fd00::/48\nFLANNEL_IPV6_SUBNET=fd00:0:0:1::1/64\n")
    raw = _render(conf, env)
    assert raw.startswith(b'{"cniVersion":"0.3.1","hairpinMode":true,"ipMasq":false,"ipam":')
    assert b'"routes":[{"dst":"192.168.7.9/24","gw":"10.0.0.1","mtu":1400},' in raw
    out = json.loads(raw)
    assert out["ipam"]["ranges"] == [[{"subnet": "10.244.1.0/24"}], [{"subnet": "fd00:0:0:1::/64"}]]
    assert [r["dst"] for r in out["ipam"]["routes"]][1:] == [
        "10.244.0.0/16", "10.245.0.0/16", "fd00::/48"]
    assert out["runtimeConfig"] == {"portMappings": []}


DUAL_STACK_ENV = (
    "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
    "FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET=fd10:244:0:1::1/64\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)
IPV6_ONLY_ENV = (
    "FLANNEL_IPV6_NETWORK=fd10:244::/56\nFLANNEL_IPV6_SUBNET=fd10:244:0:1::1/64\n"
    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
)


@pytest.mark.parametrize(
    ("env_text", "golden"),
    [(DUAL_STACK_ENV, "delegate-kube-flannel-dualstack.json"),
     (IPV6_ONLY_ENV, "delegate-kube-flannel-ipv6only.json")],
)
def test_dual_stack_and_ipv6_only_delegate_configs_are_the_reference_bytes(
    env_text: str, golden: str
) -> None:
    """kube-flannel's netconf with a dual-stack / IPv6-only subnet.env, byte for byte.

    The golden files were written from the reference's Go code (flannel-io/cni-plugin,
    flannel.go @088da1a9, flannel_linux.go @6f13a99d), not from this implementation:
    * subnet.env: flannel.go L144-155 / L163-174 FLANNEL_NETWORK / FLANNEL_IPV6_NETWORK, each a
      comma list of net.ParseCIDR networks (masked: fd10:244::/56); L157-161 / L176-180
      FLANNEL_SUBNET / FLANNEL_IPV6_SUBNET, `_, se.ip6Sn, err = net.ParseCIDR(parts[1])`, so the
      masked network (10.244.1.1/24 -> 10.244.1.0/24, fd10:244:0:1::1/64 -> fd10:244:0:1::/64);
      L72-88 missing(): either family's NETWORK and SUBNET suffice, so IPv6-only is accepted.
    * `name` "cbr0": flannel_linux.go L85; `type` "bridge" (absent in the delegate): L87-89;
      `ipMasq` false = !FLANNEL_IPMASQ(true): L91-95; `mtu` 1450 = FLANNEL_MTU: L97-100;
      `isGateway` true because type is bridge: L102-106; `cniVersion` "0.3.1" copied: L107-109;
      `hairpinMode` and `isDefaultGateway` are kube-flannel's delegate keys, kept as given
      (flannel.go L291-303 only refuses name/ipam and a non-string type).
    * `ipam`: flannel_linux.go L35-42 (no netconf ipam -> {} with type host-local);
      `ranges`: L46-51 the IPv4 subnet first, L53-58 the IPv6 subnet second, each its own
      range set [[{"subnet": ...}]], only for the subnets present (IPv6-only: one range set);
      `routes`: L62 the netconf's ipam routes (none), L67-71 every FLANNEL_NETWORK, then L73-77
      every FLANNEL_IPV6_NETWORK, as types.Route{Dst} (`{"dst": ...}`, no gw).
    * Bytes: flannel.go L251 json.Marshal of the map (keys sorted, no spaces, no newline), the
      same bytes saved as state (L259) and sent to the delegate (L263).
    """
    assert _render(KUBE_FLANNEL_NETCONF, env_text) == (GOLDEN / golden).read_bytes()


_REF_IPAM_ROUTES = [{"dst": "10.96.0.0/12"}, {"dst": "192.168.244.0/24", "gw": "10.1.17.20"}]
_REF_IPV6_ENV = "FLANNEL_IPV6_NETWORK=fc00::/48\nFLANNEL_IPV6_SUBNET=fc00::1/64\n" \
    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n"
_REF_DUAL_ENV = "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.17.1/24\n" + _REF_IPV6_ENV


@pytest.mark.parametrize(
    ("env_text", "ipam", "expected"),
    [
        # "uses dataDir for storing network configuration with ipv6 stack"
        (_REF_IPV6_ENV, None, {
            "ipMasq": False, "isGateway": True, "mtu": 1472, "name": "cni-flannel",
            "type": "bridge", "ipam": {"routes": [{"dst": "fc00::/48"}],
                                       "ranges": [[{"subnet": "fc00::/64"}]],
                                       "type": "host-local"}}),
        # "uses dataDir for storing network configuration with dual stack"
        (_REF_DUAL_ENV, None, {
            "ipMasq": False, "isGateway": True, "mtu": 1472, "name": "cni-flannel",
            "type": "bridge", "ipam": {"routes": [{"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
                                       "ranges": [[{"subnet": "10.1.17.0/24"}],
                                                  [{"subnet": "fc00::/64"}]],
                                       "type": "host-local"}}),
        # "configures Delegate IPAM accordingly with dual stack" (input IPAM with routes)
        (_REF_DUAL_ENV,
         {"type": "my-ipam", "unknown-param": "unknown-value", "routes": _REF_IPAM_ROUTES},
         {"ipMasq": False, "isGateway": True, "mtu": 1472, "name": "cni-flannel",
          "type": "bridge", "ipam": {
              "type": "my-ipam", "unknown-param": "unknown-value",
              "routes": [*_REF_IPAM_ROUTES, {"dst": "10.1.0.0/16"}, {"dst": "fc00::/48"}],
              "ranges": [[{"subnet": "10.1.17.0/24"}], [{"subnet": "fc00::/64"}]]}}),
        # "configures Delegate IPAM with 'host-local' ipam with ipv6 stack" (no ipam type)
        (_REF_IPV6_ENV, {"routes": _REF_IPAM_ROUTES},
         {"ipMasq": False, "isGateway": True, "mtu": 1472, "name": "cni-flannel",
          "type": "bridge", "ipam": {
              "type": "host-local", "routes": [*_REF_IPAM_ROUTES, {"dst": "fc00::/48"}],
              "ranges": [[{"subnet": "fc00::/64"}]]}}),
    ],
)
def test_reference_test_vectors_ipv6_and_dual_stack(
    env_text: str, ipam: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    """The reference's own expectations (flannel_linux_test.go @04854dff, the MatchJSON cases
    named above, netconf {"name": "cni-flannel", "type": "flannel"} with no cniVersion): JSON-equal,
    as MatchJSON compares. The last two are its getDelegateIPAM cases, here seen inside the
    whole delegate config: the netconf's ipam routes come first (flannel_linux.go L62), then the
    IPv4 networks, then the IPv6 ones (L67-77); unknown ipam keys are kept."""
    conf: dict[str, Any] = {"name": "cni-flannel", "type": "flannel"}
    if ipam is not None:
        conf["ipam"] = ipam
    assert json.loads(_render(conf, env_text)) == expected


def test_ipv6_printed_as_go_prints_it() -> None:
    """Go's IP.String / IPNet.String, not glibc's inet_ntop (which writes ::0.1.0.0 and
    ::ffff:10.1.2.0): netip's appendTo6 writes RFC 5952 hex (first longest zero run), an
    IPv4-mapped network prints as IPv4 with the mask's last 32 bits (networkNumberAndMask)."""
    env = subnetenv.parse(
        "FLANNEL_IPV6_NETWORK=::1:2/112,1:0:0:0:1::/128,::FFFF:10.1.2.3/120\n"
        "FLANNEL_IPV6_SUBNET=0:0:1:0:0:1:0:0/96\nFLANNEL_MTU=1\nFLANNEL_IPMASQ=false\n", "f")
    assert env.ip6_networks == ["::1:0/112", "1::1:0:0:0/128", "10.1.2.0/24"]
    assert env.ip6_subnet == "::1:0:0:1:0:0/96"
    conf = dict(KUBE_FLANNEL_NETCONF, ipam={"routes": [
        {"dst": "::1.2.3.4/126", "gw": "::ffff:10.0.0.1"}, {"dst": "::ffff:10.1.2.3/64"}]})
    routes = json.loads(_render(conf, DUAL_STACK_ENV))["ipam"]["routes"]
    # types.Route keeps dst unmasked (types.ParseIPNet sets ipn.IP = ip); gw is net.IP.String.
    assert routes[:2] == [{"dst": "::102:304/126", "gw": "10.0.0.1"}, {"dst": "10.1.2.3/0"}]


@pytest.mark.parametrize(
    ("line", "msg"),
    [
        ("FLANNEL_IPV6_SUBNET=fd10:244:0:1::zz/64", "invalid CIDR address: fd10:244:0:1::zz/64"),
        ("FLANNEL_IPV6_SUBNET=fd10:244:0:1::1/129", "invalid CIDR address: fd10:244:0:1::1/129"),
        ("FLANNEL_IPV6_SUBNET=fd10:244:0:1::1", "invalid CIDR address: fd10:244:0:1::1"),
        ("FLANNEL_IPV6_SUBNET=fe80::1%eth0/64", "invalid CIDR address: fe80::1%eth0/64"),
        ("FLANNEL_IPV6_SUBNET=", "invalid CIDR address: "),
        ("FLANNEL_IPV6_NETWORK=fd10:244::/56,x", "invalid CIDR address: x"),
        ("FLANNEL_MTU=4294967296", 'strconv.ParseUint: parsing "4294967296": value out of range'),
        ("FLANNEL_MTU=1e3", 'strconv.ParseUint: parsing "1e3": invalid syntax'),
    ],
)
def test_bad_subnet_env_value_has_the_reference_text(line: str, msg: str) -> None:
    """flannel.go L176-180 returns net.ParseCIDR's error as is ("invalid CIDR address: " + s,
    Go's net.ParseError), L182-186 strconv.ParseUint's; which file and key goes in details."""
    with pytest.raises(subnetenv.SubnetEnvError) as err:
        subnetenv.parse(DUAL_STACK_ENV + line + "\n", "/run/flannel/subnet.env")
    assert str(err.value) == msg
    assert err.value.details == f"/run/flannel/subnet.env: {line.partition('=')[0]}"
    assert not err.value.incomplete


@pytest.mark.parametrize(
    "delegate", [{"name": "x"}, {"ipam": {}}, {"type": 3}, {"type": None}]
)
def test_delegate_refused_like_the_reference(delegate: dict[str, Any]) -> None:
    with pytest.raises(CniError) as err:
        _render(dict(KUBE_FLANNEL_NETCONF, delegate=delegate))
    assert err.value.code == 7


def test_netconf_go_rules() -> None:
    doc = netconf.decode(b'{"NAME":"n","SubnetFile":"/a","subnetfile":"/b","dataDir":null}')
    conf = netconf.parse(doc)
    assert (conf.name, conf.subnet_file, conf.data_dir) == ("n", "/b", netconf.DEFAULT_DATA_DIR)
    assert netconf.config_version(doc) == "0.1.0"
    for bad in (b'{"name":"n","delegate":[]}', b'{"name":"n","capabilities":{"a":1}}',
                b'{"name":"n","dns":{"nameservers":"x"}}'):
        with pytest.raises(CniError) as err:
            netconf.parse(netconf.decode(bad))
        assert err.value.code == 7
    for undecodable in (b"", b"{", b"[]", b'{"a":1} x', b'{"a":NaN}', "\ufeff{}".encode()):
        with pytest.raises(CniError) as err:
            netconf.decode(undecodable)
        assert err.value.code == 6


def test_subnet_env_rules() -> None:
    env = subnetenv.parse(ENV_TEXT + "FLANNEL_MTU=1400\r\nOTHER=x\n", "f")
    assert (env.subnet, env.networks, env.mtu, env.ipmasq) == (
        "10.244.1.0/24", ["10.244.0.0/16"], 1400, True)
    assert subnetenv.parse(ENV_TEXT.replace("=true", "=True"), "f").ipmasq is False
    with pytest.raises(subnetenv.SubnetEnvError) as err:
        subnetenv.parse("FLANNEL_MTU=1450\n", "f")
    assert err.value.incomplete
    assert str(err.value) == ("f is missing FLANNEL_NETWORK, FLANNEL_IPV6_NETWORK, "
                              "FLANNEL_SUBNET, FLANNEL_IPV6_SUBNET, FLANNEL_IPMASQ")
    for bad in ("FLANNEL_MTU=-1", "FLANNEL_SUBNET=10.0.0.1", "FLANNEL_NETWORK=1.2.3.4/33"):
        with pytest.raises(subnetenv.SubnetEnvError) as err:
            subnetenv.parse(ENV_TEXT + bad + "\n", "f")
        assert not err.value.incomplete


@pytest.mark.parametrize(
    ("value", "go"),
    [(1450.0, "1450"), (-0.0, "-0"), (0.5, "0.5"), (1e-05, "0.00001"), (1.5e-07, "1.5e-7"),
     (1e21, "1e+21"), (1e20, "100000000000000000000"), (12345678901234567890.0,
     "12345678901234567000"), (123.456, "123.456"), (1e-10, "1e-10"), (5, "5")],
)
def test_go_float_format(value: float, go: str) -> None:
    assert gojson.marshal(value) == go.encode()


def test_go_string_escapes_and_sorted_keys() -> None:
    assert gojson.marshal({"b": "<a&b>\u2028é\n", "a": [True, None]}) == (
        '{"a":[true,null],"b":"\\u003ca\\u0026b\\u003e\\u2028é\\n"}'.encode())
    assert gojson.marshal(gojson.GoStruct(z=1, a=2)) == b'{"z":1,"a":2}'


@given(st.recursive(
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
))
def test_marshal_round_trips_through_json(value: Any) -> None:
    assert json.loads(gojson.marshal(value), parse_int=float) == value
    assert gojson.loads(gojson.marshal(value), go_numbers=True) == value


def _result_1_0() -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/run/netns/p"}],
        "ips": [{"interface": 0, "address": "10.244.1.2/24", "gateway": "10.244.1.1"},
                {"interface": 0, "address": "fd00::2/64"}],
        "routes": [{"dst": "10.244.0.0/16"}],
        "dns": {},
    }


@pytest.mark.parametrize("to", versions.SUPPORTED)
def test_result_conversion(to: str) -> None:
    out = versions.convert_result(_result_1_0(), to)
    assert list(out) == ["cniVersion", "interfaces", "ips", "routes", "dns"]
    assert out["cniVersion"] == to
    if to.startswith("0."):
        assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
        assert list(out["ips"][0]) == ["version", "interface", "address", "gateway"]
    else:
        assert all("version" not in ip for ip in out["ips"])
    back = versions.convert_result(out, "1.0.0")
    assert back == _result_1_0()


def test_version_negotiation_picks_highest_below() -> None:
    theirs = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert versions.highest_common("1.1.0", theirs) == "1.0.0"
    assert versions.highest_common("0.3.1", theirs) == "0.3.1"
    assert versions.highest_common("0.3.1", ["1.0.0"]) is None


def test_check_rules() -> None:
    prev = _result_1_0()
    prev["ips"] = prev["ips"][:1]
    link = {"address": "AA:BB:CC:DD:EE:FF", "mtu": 1450,
            "addr_info": [{"family": "inet", "local": "10.244.1.2", "prefixlen": 24}]}
    routes = [{"dst": "10.244.0.0/16", "gateway": "10.244.1.1", "dev": "eth0"}]
    view = check.PodView(link, routes)
    assert check.mismatches(view, prev, "eth0", "/run/netns/p", 1450) == []
    assert check.mismatches(view, prev, "eth0", "/run/netns/p", 1400) == [
        "eth0 has MTU 1450, expected 1400"]
    assert check.mismatches(check.PodView(link, []), prev, "eth0", "p", None) == [
        "route 10.244.0.0/16 missing in p"]
    filled = check.with_route_gateways(prev)
    assert filled["routes"] == [{"dst": "10.244.0.0/16", "gw": "10.244.1.1"}]


def test_conflist_is_kube_flannels(tmp_path: Path) -> None:
    assert render_conflist() == (GOLDEN / "10-flannel.conflist").read_text()
    target = tmp_path / "net.d" / "10-flannel.conflist"
    assert write_conflist(str(target)) is True
    assert target.read_text() == render_conflist()
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert write_conflist(str(target)) is False
    assert write_conflist(str(target), subnet_file="/x/subnet.env") is True
    assert json.loads(target.read_text())["plugins"][0]["subnetFile"] == "/x/subnet.env"
    assert sorted(p.name for p in target.parent.iterdir()) == ["10-flannel.conflist"]


@pytest.mark.parametrize("name", ["\x00", "bridge\x00", "\x00bridge"])
def test_a_nul_in_the_delegate_type_is_a_plugin_not_found(tmp_path: Path, name: str) -> None:
    """Go's os.Stat fails with EINVAL on a name with a NUL byte, so libcni's FindInPath answers
    "failed to find plugin"; Python's stat raises ValueError instead (the fuzz target found the
    plugin answering 999 "ValueError: embedded null byte")."""
    from flanneld.cni.errors import DELEGATE_UNAVAILABLE
    from flanneld.cni.invoke import find_in_path

    (tmp_path / "bridge").write_bytes(b"")
    with pytest.raises(CniError) as info:
        find_in_path(name, str(tmp_path))
    assert info.value.code == DELEGATE_UNAVAILABLE
    assert str(info.value).startswith(f'failed to find plugin "{name}" in path [{tmp_path}]')
