"""Fuzz the network config (``<prefix>/config``) and the backend options it carries.

Property: ``parse_network_config`` returns a NetworkConfig whose subnet range is sane, or
raises NetworkConfigError whose ``field`` is a real field (or "(document)") named in its
message; nothing else escapes. For accepted configs, the backend's ``validate_options`` raises
only NetworkConfigError naming ``Backend.<Option>`` (an option that is present) or
UnknownBackendError listing the known types.
"""

from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.backends import backend_class, known_types
from flanneld.errors import NetworkConfigError, UnknownBackendError
from flanneld.netconfig import BackendConfig, NetworkConfig, parse_network_config

from .strategies import (
    CASE_STYLE,
    case_variant,
    chance,
    deep_document,
    dumps,
    ints,
    junk,
    mutated,
    presence,
    raw_junk,
    styled,
    weighted,
)
from .tally import MIN_CASES, Tally

pytestmark = pytest.mark.unit

FIELDS = ("Network", "SubnetLen", "SubnetMin", "SubnetMax", "EnableIPv4", "EnableIPv6",
          "IPv6Network", "IPv6SubnetLen", "IPv6SubnetMin", "IPv6SubnetMax", "EnableNFTables",
          "Backend")
ERROR_FIELDS = {"(document)", "Backend.Type", *FIELDS}
BACKEND_OPTIONS = ("VNI", "Port", "GBP", "Learning", "DirectRouting", "MTU", "Offload",
                   "DeviceName")
VALID = b'{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan", "VNI": 1}}'


def _ipv4_text(value: int) -> str:
    return str(IPv4Address(value % (1 << 32)))


_ADDR_SUFFIX = st.sampled_from([" ", "/24", ".0", "%eth0"])
_BAD_NETWORKS = st.sampled_from(["10.244.0.0/33", "10.244.0.0/-1", "10.244.0.0", "fc00::/48", "",
                                 "10.244.0.0/\uff11\uff16", " 10.244.0.0/16", "010.244.0.0/16",
                                 "10.244.0.0/16\n"])
_FLAG_VALUES = st.one_of(st.booleans(), junk)
_V6_VALUES = st.one_of(st.sampled_from(["fc00::/48", "fc00::/127", "fc00::/0", 64, 130]), junk)
_EXTRA_FIELDS = st.dictionaries(st.text(max_size=8), junk, max_size=2)
_TYPES = weighted(
    (85, st.sampled_from(["vxlan", "host-gw", "udp", "VXLAN", "Host-GW", "ipip", "wireguard", "",
                          "vxlan "])),
    (15, junk),
)
_OPTION_NAMES = st.lists(st.sampled_from(BACKEND_OPTIONS), max_size=4, unique=True)
_OPTION_VALUES = st.one_of(
    st.integers(-2, 70_000),
    st.sampled_from([0, 1, 67, 68, 65535, 65536, (1 << 24) - 1, 1 << 24, 8472, 4789]),
    st.booleans(),
    junk,
)


@st.composite
def backend(draw: st.DrawFn) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not chance(draw, 6):
        out[draw(case_variant("Type"))] = draw(_TYPES)
    for name in draw(_OPTION_NAMES):
        out[draw(case_variant(name))] = draw(_OPTION_VALUES)
    return out


_BACKEND_OBJECT = backend()


@st.composite
def _backends(draw: st.DrawFn) -> Any:
    return draw(junk) if chance(draw, 6) else draw(_BACKEND_OBJECT)


_BACKENDS = _backends()


_FIELDS_PRESENT = presence({"Network": 90, "SubnetLen": 50, "SubnetMin": 50, "SubnetMax": 50,
                            "EnableIPv4": 12, "EnableIPv6": 12, "EnableNFTables": 12,
                            "IPv6Network": 16, "IPv6SubnetLen": 16, "Backend": 84,
                            "(extra)": 16})


@st.composite
def structured(draw: st.DrawFn) -> dict[str, Any]:
    """Right field names (any case) with values that are right, slightly wrong or junk."""
    plen = draw(ints(0, 32))
    base = draw(ints(0, (1 << 32) - 1))
    net = IPv4Network((base >> (32 - plen) << (32 - plen) if plen else 0, plen))
    slen = draw(ints(max(0, plen - 2), 33))
    size = 1 << (32 - min(slen, 32))
    doc: dict[str, Any] = {}
    style = draw(CASE_STYLE)
    fields = draw(_FIELDS_PRESENT)

    def put(name: str, value: Any) -> None:
        if name in fields:
            doc[styled(name, style)] = value

    def address() -> Any:
        if chance(draw, 4):
            return draw(junk)
        if draw(st.booleans()):  # on a subnet boundary, inside or just outside Network
            offset = draw(ints(-2, (1 << (32 - plen)) // size + 1)) * size
        else:
            offset = draw(ints(-(1 << (33 - plen)), 1 << (33 - plen)))
        text = _ipv4_text(int(net.network_address) + offset)
        return text + draw(_ADDR_SUFFIX) if chance(draw, 8) else text

    kind = draw(ints(0, 5))
    network_value: Any = [
        str(net), f"{_ipv4_text(base)}/{plen}",  # host bits set: flannel accepts them
        f"{net.network_address}/{net.netmask}", str(net),
    ][kind] if kind < 4 else draw(_BAD_NETWORKS if kind == 4 else junk)
    put("Network", network_value)
    if "SubnetLen" in fields:
        put("SubnetLen", slen if draw(st.booleans()) else draw(
            ints(-3, 40) if draw(st.booleans()) else junk))
    for name in ("SubnetMin", "SubnetMax"):
        if name in fields:
            put(name, address())
    for flag in ("EnableIPv4", "EnableIPv6", "EnableNFTables"):
        if flag in fields:
            put(flag, draw(_FLAG_VALUES))
    for v6 in ("IPv6Network", "IPv6SubnetLen"):
        if v6 in fields:
            put(v6, draw(_V6_VALUES))
    if "Backend" in fields:
        put("Backend", draw(_BACKENDS))
    if "(extra)" in fields:
        doc.update(draw(_EXTRA_FIELDS))
    return doc


# which kind of document, in percent
documents = weighted(
    (45, structured().map(lambda d: dumps(d).encode())),
    (15, structured().map(dumps)),  # parse_network_config takes str too
    (15, raw_junk), (23, mutated(VALID)), (1, deep_document(None)),
    (1, deep_document("Network")),
)


def _present(doc: Any, name: str) -> bool:
    return isinstance(doc, dict) and any(k.lower() == name.lower() for k in doc)


def check_accepted(cfg: NetworkConfig) -> None:
    net = cfg.network
    assert net.prefixlen + 2 <= cfg.subnet_len <= 30
    mask = (0xFFFFFFFF << (32 - cfg.subnet_len)) & 0xFFFFFFFF
    for addr in (cfg.subnet_min, cfg.subnet_max):
        assert addr in net
        assert int(addr) & mask == int(addr)
    assert cfg.subnet_min <= cfg.subnet_max
    assert cfg.subnet_count >= 1
    assert cfg.backend.type and cfg.backend.type == cfg.backend.type.lower()
    assert not any(k.lower() == "type" for k in cfg.backend.options)


def check_rejected(exc: NetworkConfigError, doc: Any) -> None:
    assert exc.field in ERROR_FIELDS, exc.field
    assert exc.field in str(exc), str(exc)
    if exc.field in ("(document)", "Network", "IPv6Network", "Backend.Type"):
        return  # the document itself, or a required field that may be absent
    # the named field is in the document, or the message also names one that is
    assert _present(doc, exc.field) or any(
        _present(doc, f) and f in str(exc) for f in FIELDS), str(exc)


def check_backend(cfg: NetworkConfig, tally: Tally) -> None:
    try:
        cls = backend_class(cfg.backend.type)
    except UnknownBackendError as exc:
        assert all(t in str(exc) for t in known_types()), str(exc)
        assert repr(cfg.backend.type) in str(exc)
        tally.reject("UnknownBackend")
        return
    try:
        cls.validate_options(cfg.backend.options)
    except NetworkConfigError as exc:
        assert exc.field.startswith("Backend."), exc.field
        option = exc.field.removeprefix("Backend.")
        assert any(k.lower() == option.lower() for k in cfg.backend.options), (exc, cfg)
        assert exc.field in str(exc)
        tally.reject(exc.field)
        return
    tally.accept()


def _variants(name: str) -> list[str]:
    alternate = "".join(c.swapcase() if i % 2 else c for i, c in enumerate(name))
    return list(dict.fromkeys([name, name.lower(), name.upper(), alternate]))


_OPTION_TYPES = st.sampled_from(
    [v for t in known_types() for v in _variants(t)] * 3
    + ["ipip", "wireguard", "vxlan ", "alloc", "extension", "\u0130", "udp\u0000", "gre"])


def _with_options(btype: str, opts: dict[str, Any]) -> NetworkConfig:
    return NetworkConfig(
        network=IPv4Network("10.244.0.0/16"), subnet_len=24,
        subnet_min=IPv4Address("10.244.1.0"), subnet_max=IPv4Address("10.244.255.0"),
        backend=BackendConfig(btype.lower(), {k: v for k, v in opts.items()
                                              if k.lower() != "type"}),
    )


def test_fuzz_network_config_and_backend_options() -> None:
    """Each example is one config document and, separately, one (type, options) pair fed to
    the backend straight away (so the options get 10,000 cases of their own, not only the
    few hundred that survive config parsing); one example per pair halves hypothesis' cost."""
    parse = Tally("network config")
    chained = Tally("backend options of accepted configs")
    direct = Tally("backend options")

    @given(raw=documents, btype=_OPTION_TYPES, opts=backend())
    @settings(max_examples=MIN_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(raw: bytes | str, btype: str, opts: dict[str, Any]) -> None:
        check_backend(_with_options(btype, opts), direct)
        try:
            doc: Any = json.loads(raw)
        except (ValueError, RecursionError):
            doc = None
        try:
            cfg = parse_network_config(raw)
        except NetworkConfigError as exc:
            check_rejected(exc, doc)
            parse.reject(exc.field)
            return
        check_accepted(cfg)
        parse.accept()
        check_backend(cfg, chained)

    run()
    for tally in (parse, chained, direct):
        tally.report()
    assert parse.cases >= MIN_CASES and direct.cases >= MIN_CASES
    # the generators reach acceptance and every kind of rejection worth having
    assert parse.accepted > 300 and chained.accepted > 100 and direct.accepted > 1000
    for reason in ("(document)", "Network", "SubnetLen", "SubnetMin", "SubnetMax", "Backend",
                   "Backend.Type", "EnableIPv4", "EnableIPv6"):
        assert parse.reasons[reason] > 0, reason
    for reason in ("UnknownBackend", "Backend.VNI", "Backend.Port", "Backend.MTU", "Backend.GBP",
                   "Backend.Learning", "Backend.DirectRouting", "Backend.Offload"):
        assert direct.reasons[reason] > 0, reason


def test_deeply_nested_config_is_a_document_error() -> None:
    raw = '{"Network": ' + "[" * 100_000 + "}"
    with pytest.raises(NetworkConfigError) as info:
        parse_network_config(raw)
    assert info.value.field in ("(document)", "Network")


@pytest.mark.parametrize("network", ["10.244.0.0/255.255.0.0", "10.244.0.0/0.0.255.255"])
def test_network_in_netmask_form_is_refused_as_go_flannel_does(network: str) -> None:
    with pytest.raises(NetworkConfigError) as info:
        parse_network_config(json.dumps({"Network": network}))
    assert info.value.field == "Network"
