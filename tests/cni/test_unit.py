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
