"""Fuzz the `flannel` CNI plugin through its real entry point: environment and stdin.

Property: the plugin never crashes; it either succeeds (VERSION, or a DEL/STATUS/GC with
nothing to do) or exits non-zero with exactly one JSON error object on stdout, an integer
``code`` of the right CNI class (4 env, 6 undecodable stdin, 7 invalid config, 1 versions,
3 unknown container, 11/50/100 subnet.env, 101 delegate) and a ``msg`` naming the variable or
field at fault. Runs in-process (``cni_inprocess``) for the 10,000 cases, and a 200-case sample
through the real ``.venv/bin/flannel`` proves the in-process harness behaves the same.

Safety: CNI_PATH is only ever unset, empty, or an empty temp dir (plus a missing one), and
``dataDir``/``subnetFile`` always point into the test's temp dir, so no delegate ever runs and
nothing is written outside it; the test asserts the data dir stayed empty.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flanneld.cni import versions

from .cni_inprocess import Outcome, run_plugin
from .strategies import (
    CASE_STYLE,
    DEEP,
    chance,
    junk,
    mutated,
    presence,
    raw_junk,
    scalars,
    styled,
    weighted,
)
from .tally import MIN_CASES, Tally

pytestmark = pytest.mark.unit

FLANNEL = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "flannel"
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}
ENV_VARS = ("CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS", "CNI_PATH")
NETCONF_TAGS = ("cniVersion", "name", "type", "subnetFile", "dataDir", "delegate", "ipam",
                "runtimeConfig", "prevResult", "capabilities", "dns", "cni.dev/valid-attachments")
BIGNUM = "__fz_bignum__"  # replaced by the JSON number 1e999 (beyond float64) in the text
SUBNET_ENV = (b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
              b"FLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")


class Sandbox:
    """The temp paths every case is confined to."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cni_path = root / "cni-bin"  # stays empty: no delegate can ever be found
        self.cni_path.mkdir()
        self.data_dir = root / "data"
        self.subnet_files = {
            "good": root / "subnet.env", "missing": root / "absent.env",
            "partial": root / "partial.env", "bad": root / "bad.env",
        }
        self.subnet_files["good"].write_bytes(SUBNET_ENV)
        self.subnet_files["partial"].write_bytes(b"FLANNEL_NETWORK=10.244.0.0/16\n")
        self.subnet_files["bad"].write_bytes(SUBNET_ENV + b"FLANNEL_MTU=big\n")


# ---------------------------------------------------------------------------------------------
# environment

def _text_bytes(s: str) -> bytes:
    return s.encode("utf-8", "surrogatepass").replace(b"\0", b"")


_JUNK_TEXT = st.text(max_size=20).map(_text_bytes)
_BAD_UTF8 = st.sampled_from([b"\xff", b"ADD\xff", b"\xc3", b"a\xed\xa0\x80"])
_COMMAND = weighted(
    (85, st.sampled_from([c.encode() for c in COMMANDS])),
    (4, st.sampled_from([b"add", b"Del", b"ADD ", b" VERSION", b"CHECK\n", b"GET"])),
    (3, st.none()), (2, st.just(b"")), (5, _JUNK_TEXT), (1, _BAD_UTF8),
)
_CID = weighted(
    (75, st.sampled_from([b"c1", b"0", b"abc-DEF_1.2", b"f" * 64, b"9.x", b"a_", b"Z-"])),
    (3, st.none()), (2, st.just(b"")), (8, _JUNK_TEXT), (2, _BAD_UTF8),
)
_NETNS = weighted((90, st.just(b"/var/run/netns/fz-none")), (4, st.none()), (6, _JUNK_TEXT))
_IFNAME = weighted(
    (85, st.sampled_from([b"eth0", b"net1", b"e"])), (3, st.none()),
    (12, st.sampled_from([b"", b".", b"..", b"eth/0", b"eth:0", b"eth 0", b"eth\t0",
                          b"abcdefghijklmnop", "\u00e9th0123456789".encode(), b"0123456789abcde"])),
)
_ARGS = weighted((50, st.none()), (25, st.just(b"IgnoreUnknown=1;K8S_POD_NAMESPACE=default")),
                 (25, _JUNK_TEXT))
_CNI_PATH = weighted((3, st.just("unset")), (2, st.just("empty")), (65, st.just("dir")),
                     (30, st.just("dir:missing")))
_EXTRA_ENV = weighted((80, st.just({})), (20, st.builds(
    lambda name, value: {name: value}, st.sampled_from([b"FZ_X", b"CNI_FOO", b"CNI_ARGS2"]),
    _JUNK_TEXT)))


@st.composite
def environments(draw: st.DrawFn, box: Sandbox) -> dict[bytes, bytes]:
    env: dict[bytes, bytes] = dict(draw(_EXTRA_ENV))
    for name, strategy in ((b"CNI_COMMAND", _COMMAND), (b"CNI_CONTAINERID", _CID),
                           (b"CNI_NETNS", _NETNS), (b"CNI_IFNAME", _IFNAME), (b"CNI_ARGS", _ARGS)):
        value = draw(strategy)
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    path = draw(_CNI_PATH)
    env.pop(b"CNI_PATH", None)
    if path != "unset":
        env[b"CNI_PATH"] = {"empty": b"", "dir": str(box.cni_path).encode(),
                            "dir:missing": f"{box.cni_path}:{box.root}/missing".encode()}[path]
    return env


# ---------------------------------------------------------------------------------------------
# stdin

_NUMBERS = weighted((70, st.integers(-10, 70_000)), (15, st.floats(allow_nan=False,
                                                                   allow_infinity=False)),
                    (10, st.just(BIGNUM)), (5, junk))
_VERSION = weighted(
    (75, st.sampled_from(versions.SUPPORTED)),
    (15, st.sampled_from(["0.1.0", "0.2.0", "1.2.0", "2.0.0", "1.0", "1", "v1.0.0", "",
                          "1.0.0.0", "01.0.0", "1.0.0 ", "\uff11.0.0", "\ud800"])),
    (10, junk),
)
_NAME = weighted((80, st.sampled_from(["cbr0", "cbr0.x_y-z", "0net"])),
                 (20, st.one_of(st.sampled_from(["", "-net", ".net", "net work", "n\u00e9t",
                                                 "\ud800"]), junk)))
_ROUTE_DST = weighted((80, st.sampled_from(["10.96.0.0/12", "0.0.0.0/0", "fd00::/64"])),
                      (20, st.one_of(st.sampled_from(["10.0.0.0", "10.0.0.0/33", "x/8", ""]),
                                     junk)))
_ROUTE_EXTRA = st.sampled_from(["gw", "mtu", "advmss", "priority", "table", "scope", "none",
                                "none"])
_GATEWAY = weighted((70, st.sampled_from(["10.244.1.1", "", "fd00::1"])),
                    (30, st.one_of(st.just("10.244.1.1%eth0"), junk)))


@st.composite
def _route(draw: st.DrawFn) -> dict[str, Any]:
    """A route: dst (mostly) and at most one other field (few draws: hypothesis is the cost)."""
    route: dict[str, Any] = {} if chance(draw, 10) else {"dst": draw(_ROUTE_DST)}
    extra = draw(_ROUTE_EXTRA)
    if extra != "none":
        route[extra] = draw(_GATEWAY if extra == "gw" else _NUMBERS)
    return route


_ROUTE = _route()
_IPAM = weighted(
    (60, st.builds(lambda routes: {"type": "host-local", "routes": routes},
                   st.lists(_ROUTE, max_size=2))),
    (20, st.just({"type": "host-local"})),
    (10, st.builds(lambda routes: {"routes": routes}, junk)),
    (10, junk),
)
_DELEGATE_TYPE = weighted((70, st.sampled_from(["bridge", "ptp", "a/b", ""])), (30, scalars))
_DELEGATE_EXTRA = st.sampled_from(["type", "type", "type", "name", "ipam", "mtu", "extra",
                                   "none", "none", "none"])


@st.composite
def _delegate(draw: st.DrawFn) -> Any:
    if chance(draw, 5):
        return draw(junk)
    delegate: dict[str, Any] = {"hairpinMode": True, "isDefaultGateway": True}
    extra = draw(_DELEGATE_EXTRA)
    if extra != "none":
        delegate[extra] = draw({"type": _DELEGATE_TYPE, "name": st.just("x"),
                                "ipam": st.just({}), "mtu": _NUMBERS}.get(extra, junk))
    return delegate


_DELEGATE = _delegate()
_FIELD_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "cniVersion": _VERSION,
    "name": _NAME,
    "type": weighted((90, st.just("flannel")), (10, junk)),
    "delegate": _DELEGATE,
    "ipam": _IPAM,
    "runtimeConfig": weighted((80, st.just({"portMappings": []})), (20, junk)),
    "prevResult": weighted((70, st.fixed_dictionaries({"cniVersion": st.just("1.0.0")})),
                           (30, junk)),
    "capabilities": weighted((70, st.just({"portMappings": True})), (30, junk)),
    "dns": weighted((70, st.just({"nameservers": ["10.96.0.10"], "domain": "cluster.local"})),
                    (30, junk)),
    "cni.dev/valid-attachments": weighted(
        (70, st.just([{"containerID": "c1", "ifname": "eth0"}])), (30, junk)),
}
# how likely each field is present, in percent
_PRESENT = {"cniVersion": 92, "name": 92, "type": 90, "delegate": 60, "ipam": 50,
            "runtimeConfig": 15, "prevResult": 30, "capabilities": 10, "dns": 10,
            "cni.dev/valid-attachments": 15}
_NOT_STRING = st.sampled_from([0, 1.5, True, False, [], {}, ["x"], {"a": "b"}])
_SUBNET_FILE = st.sampled_from(["good"] * 7 + ["missing", "partial", "bad"])
_PATH_FIELDS = ("datadir", "subnetfile")


_PROFILE = presence(_PRESENT)


@st.composite
def netconfs(draw: st.DrawFn, box: Sandbox) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    style = draw(CASE_STYLE)
    for name in draw(_PROFILE):
        doc[styled(name, style)] = draw(_FIELD_VALUES[name])
    if chance(draw, 10):
        doc.update(draw(st.dictionaries(st.text(max_size=8), junk, max_size=2)))
    # confinement: only wrong-typed dataDir/subnetFile (rejected before any IO) are kept
    for key in [k for k in doc if k.lower() in _PATH_FIELDS]:
        if isinstance(doc[key], str) or doc[key] is None:
            del doc[key]
    if chance(draw, 12):
        doc[styled("dataDir", style)] = draw(_NOT_STRING)
    doc["subnetFile"] = str(box.subnet_files[draw(_SUBNET_FILE)])
    doc["dataDir"] = str(box.data_dir)
    if chance(draw, 30):
        doc[draw(st.sampled_from(["subnetFile", "dataDir"]))] = ""  # refused: "must not be empty"
    return doc


def encode(doc: Any) -> bytes:
    return json.dumps(doc).replace(f'"{BIGNUM}"', "1e999").encode()


def stdins(box: Sandbox) -> st.SearchStrategy[bytes]:
    valid = encode({"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                    "subnetFile": str(box.subnet_files["good"]), "dataDir": str(box.data_dir)})
    return weighted(
        (72, netconfs(box).map(encode)),
        (8, raw_junk),
        (8, junk.map(encode)),
        (10, mutated(valid).filter(lambda b: b"dataDir" in b and b"subnetFile" in b
                                   and str(box.data_dir).encode() in b)),
        (2, st.sampled_from([b"[" * DEEP, b'{"name":' + b"[" * DEEP])),
    )


# ---------------------------------------------------------------------------------------------
# judging one outcome

_MESSAGES: list[tuple[int, re.Pattern[str], str]] = [
    (4, re.compile(r"required env variables \[([A-Z_,]+)\] missing"), "env"),
    (4, re.compile(r"unknown CNI_COMMAND: .*", re.S), "CNI_COMMAND"),
    (4, re.compile(r"invalid characters in containerID"), "CNI_CONTAINERID"),
    (4, re.compile(r"interface name (is too long|is \. or \.\.|contains / or : or whitespace "
                   r"characters)"), "CNI_IFNAME"),
    (6, re.compile(r"error unmarshall network config: json: cannot unmarshal into Go struct "
                   r"field \.name of type string"), "name"),
    (6, re.compile(r"error unmarshall network config: .*", re.S), "(stdin)"),
    (6, re.compile(r"decoding version from network config: .* field \.cniVersion of type "
                   r"string"), "cniVersion"),
    (7, re.compile(r"missing network name"), "name"),
    (7, re.compile(r"invalid characters found in network name"), "name"),
    (7, re.compile(r"failed to load netconf: json: cannot unmarshal \w+ into Go struct field "
                   r"NetConf\.(\S+)"), "tag"),
    (7, re.compile(r"(dataDir|subnetFile) must not be empty"), "tag"),
    (7, re.compile(r"failed to parse ipam\.routes: .*", re.S), "ipam.routes"),
    (7, re.compile(r"'delegate' dictionary.*"), "delegate"),
    (7, re.compile(r"required prevResult missing"), "prevResult"),
    (7, re.compile(r"cni\.dev/valid-attachments: bad entry"), "cni.dev/valid-attachments"),
    (1, re.compile(r"incompatible CNI versions"), "cniVersion"),
    (1, re.compile(r"config version does not allow (CHECK|GC|STATUS)"), "cniVersion"),
    (3, re.compile(r"no saved state for container .*", re.S), "CNI_CONTAINERID"),
    (11, re.compile(r"loadFlannelSubnetEnv failed: .*", re.S), "subnetFile"),
    (50, re.compile(r"loadFlannelSubnetEnv failed: .*", re.S), "subnetFile"),
    # a value that does not parse: the reference's text (Go's parse error); which file and
    # variable is in the error's details
    (100, re.compile(r"loadFlannelSubnetEnv failed: (invalid (CIDR|IP) address: |strconv\.ParseUint: "
                     r"|FLANNEL_\w+ has no value).*", re.S), "subnetFile"),
    (101, re.compile(r'failed to find plugin ".*" in path \[.*\]', re.S), "delegate.type"),
    (101, re.compile(r"no plugin name provided"), "delegate.type"),
    (101, re.compile(r"invalid plugin name: .*", re.S), "delegate.type"),
]


def _env_text(env: Mapping[bytes, bytes], name: str) -> str:
    return env.get(name.encode(), b"").decode("utf-8", "surrogateescape")


def _stdin_doc(stdin: bytes) -> Any:
    """What the plugin should see, or None when stdin is not one JSON value (Go's rules)."""
    def refuse(name: str) -> Any:
        raise ValueError(name)

    def float64(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"{text} out of range of float64")
        return value
    try:
        return json.loads(stdin.decode("utf-8", "replace"), parse_constant=refuse,
                          parse_float=float64, parse_int=float64)
    except (ValueError, RecursionError):
        return None


def judge(env: Mapping[bytes, bytes], stdin: bytes, out: Outcome) -> str:
    """Check one outcome against the contract; returns the histogram label."""
    assert out.crash is None, out.crash
    command = _env_text(env, "CNI_COMMAND")
    if out.rc == 0:
        if command == "VERSION":
            doc = json.loads(out.stdout)
            assert doc["supportedVersions"] == list(versions.SUPPORTED)
            return "ok VERSION"
        assert command in ("DEL", "STATUS", "GC") and out.stdout == b"", out
        return f"ok {command}"
    assert out.rc == 1, out
    doc = json.loads(out.stdout)  # exactly one JSON value, nothing else on stdout
    assert isinstance(doc, dict) and set(doc) <= {"cniVersion", "code", "msg", "details"}, doc
    code, msg = doc["code"], doc["msg"]
    assert isinstance(code, int) and not isinstance(code, bool) and isinstance(msg, str) and msg
    matches = [(c, m, what) for c, pattern, what in _MESSAGES
               if (m := pattern.fullmatch(msg)) is not None]
    assert matches, f"unclear or unexpected error message: {doc}"
    assert code in {c for c, _, _ in matches}, f"wrong code for {msg!r}: {code}"
    what = next(w for c, m, w in matches if c == code)
    match = next(m for c, m, w in matches if c == code)

    # the environment is checked first, then stdin: those codes are fully predictable
    if command not in COMMANDS:
        assert (code, what) == (4, "CNI_COMMAND") or (not command and "CNI_COMMAND" in msg), doc
        return "4 CNI_COMMAND"
    missing = [v for v in ENV_VARS if v in REQUIRED[command] and not _env_text(env, v)]
    if missing:
        assert code == 4 and match.group(1).split(",") == missing, doc
        return "4 missing env"
    parsed = _stdin_doc(stdin)
    if not isinstance(parsed, dict):
        assert code == 6 and what == "(stdin)", doc
        return "6 stdin"
    if what == "tag":
        tag = match.group(1)
        assert tag in NETCONF_TAGS and any(k.lower() == tag.lower() for k in parsed), doc
        return f"{code} {tag}"
    if what == "CNI_CONTAINERID" and code == 4:
        cid = _env_text(env, "CNI_CONTAINERID")  # undecodable bytes come back as U+FFFD
        assert "containerID" in msg and doc.get("details") == "".join(
            "\ufffd" if "\ud800" <= c <= "\udfff" else c for c in cid)
    if what == "CNI_IFNAME":
        assert "interface name" in msg
    if code == 1 and msg == "incompatible CNI versions":
        assert '"' in doc.get("details", ""), doc  # quotes the config's version
    return f"{code} {what}"


def _tally_summary(tally: Tally) -> None:
    tally.report()
    assert tally.cases >= MIN_CASES
    # every stage of the plugin is reached (the rarer labels are only printed: a fixed count
    # would make the test flaky, the generator is random on every run)
    for label in ("ok VERSION", "ok DEL", "4 CNI_COMMAND", "4 missing env", "4 CNI_CONTAINERID",
                  "4 CNI_IFNAME", "6 stdin", "7 name", "7 delegate", "1 cniVersion",
                  "101 delegate.type"):
        assert tally.reasons[label] > 0, label
    assert any(r.startswith("7 ") and r.split()[1] in NETCONF_TAGS for r in tally.reasons)
    assert sum(n for r, n in tally.reasons.items() if r.endswith("subnetFile")) > 0


def test_fuzz_cni_plugin_in_process(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    tally = Tally("CNI env+stdin (in-process)")

    @given(env=environments(box), stdin=stdins(box))
    @settings(max_examples=MIN_CASES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(env: dict[bytes, bytes], stdin: bytes) -> None:
        out = run_plugin(env, stdin)
        label = judge(env, stdin, out)
        if label.startswith("ok"):
            tally.cases += 1
            tally.accepted += 1
            tally.reasons[label] += 1
        else:
            tally.reject(label)

    run()
    _tally_summary(tally)
    # confinement held: nothing was saved, no delegate was found
    assert not box.data_dir.exists() or not any(box.data_dir.iterdir())
    assert not any(box.cni_path.iterdir())


def _subprocess(env: Mapping[bytes, bytes], stdin: bytes) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([str(FLANNEL)], input=stdin, env=dict(env), capture_output=True,
                          timeout=30, check=False)
    return proc.returncode, proc.stdout, proc.stderr


def test_in_process_harness_matches_the_real_executable(tmp_path: Path) -> None:
    """~200 cases through .venv/bin/flannel: same exit code, same stdout, same crashes."""
    if not FLANNEL.exists():
        pytest.skip(f"{FLANNEL} not installed")
    box = Sandbox(tmp_path)
    tally = Tally("CNI subprocess parity (accepted = same rc, stdout and stderr)")

    @given(env=environments(box), stdin=stdins(box))
    @settings(max_examples=200, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    def run(env: dict[bytes, bytes], stdin: bytes) -> None:
        inproc = run_plugin(env, stdin)
        rc, stdout, stderr = _subprocess(env, stdin)
        assert (inproc.crash is not None) == (b"Traceback" in stderr), (inproc, stderr)
        assert rc == inproc.rc and stdout == inproc.stdout, (rc, stdout, inproc)
        if inproc.crash is None:
            assert stderr == inproc.stderr, (stderr, inproc.stderr)
        tally.accept()
        tally.reasons[judge(env, stdin, inproc)] += 1

    run()
    tally.report()
    assert tally.cases >= 200


# ---------------------------------------------------------------------------------------------
# regressions: the first inputs the fuzzers broke (fixed in bfe29c1)

def _valid_env(box: Sandbox, command: bytes = b"ADD", **extra: bytes) -> dict[bytes, bytes]:
    env = {b"CNI_COMMAND": command, b"CNI_CONTAINERID": b"c1", b"CNI_NETNS": b"/x",
           b"CNI_IFNAME": b"eth0", b"CNI_PATH": str(box.cni_path).encode()}
    env.update({k.encode(): v for k, v in extra.items()})
    return env


@pytest.mark.parametrize("case", ["command", "containerid", "name"])
def test_error_json_survives_undecodable_text(tmp_path: Path, case: str) -> None:
    box = Sandbox(tmp_path)
    conf: dict[str, Any] = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                            "subnetFile": str(box.subnet_files["good"]),
                            "dataDir": str(box.data_dir)}
    env = _valid_env(box, b"DEL")
    if case == "command":
        env[b"CNI_COMMAND"] = b"\xff"
    elif case == "containerid":
        env[b"CNI_CONTAINERID"] = b"a\xff"
    else:
        conf["name"] = "\ud800"
    out = run_plugin(env, encode(conf))
    assert out.crash is None, out.crash
    assert json.loads(out.stdout)["code"] in (4, 7)


@pytest.mark.parametrize("extra", [{"ipam": {"routes": [{"dst": "10.96.0.0/12",
                                                         "mtu": BIGNUM}]}},
                                   {"delegate": {"mtu": BIGNUM}}])
def test_number_beyond_float64_is_a_config_error(tmp_path: Path, extra: dict[str, Any]) -> None:
    box = Sandbox(tmp_path)
    conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": str(box.subnet_files["good"]), "dataDir": str(box.data_dir), **extra}
    out = run_plugin(_valid_env(box), encode(conf))
    assert json.loads(out.stdout)["code"] in (6, 7), out.stdout
