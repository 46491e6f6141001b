"""Go flanneld's command line: every form Go's `flag` package accepts, klog's flags, Go-only
flags, operator typos as one-line usage errors, and what -v / -vv log.

Nothing here starts a daemon: ``flanneld.cli._run`` is replaced by a stub, so a command line
that unexpectedly passes validation fails the test instead of running flanneld on this host.
"""

from __future__ import annotations

import io
import logging

import pytest

import flanneld.cli as cli
from flanneld.config import (
    IGNORED_KLOG_FLAGS,
    DaemonConfig,
    build_config,
    build_parser,
    klog_verbosity,
    normalize_argv,
)
from flanneld.errors import ConfigError
from flanneld.logging_setup import setup_logging, warn_ignored_flags

pytestmark = pytest.mark.unit

EP = "http://198.51.100.7:2379"


@pytest.fixture(autouse=True)
def _no_flanneld_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in [k for k in os.environ if k.startswith("FLANNELD_")]:
        monkeypatch.delenv(key)


@pytest.fixture
def no_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    async def refuse(config: DaemonConfig) -> int:
        return 99  # the command line was accepted: the test expected a usage error

    monkeypatch.setattr(cli, "_run", refuse)
    monkeypatch.setattr(cli, "setup_logging", lambda config: None)


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``flanneld.cli.main(argv)`` in-process: exit code, stdout, stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def cfg(*argv: str, env: dict[str, str] | None = None) -> DaemonConfig:
    return build_config(list(argv), env or {})


# ---------------------------------------------------------------- the pre-pass (pure)


@pytest.mark.parametrize(
    "argv",
    [
        [f"-etcd-endpoints={EP}"],
        [f"--etcd-endpoints={EP}"],
        ["-etcd-endpoints", EP],
        ["--etcd-endpoints", EP],
    ],
)
def test_every_go_form_of_a_string_flag_normalises_alike(argv: list[str]) -> None:
    assert normalize_argv(argv).argv == (f"--etcd-endpoints={EP}",)
    assert cfg(*argv).etcd_endpoints == EP


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-ip-masq"], True),
        (["--ip-masq"], True),
        (["-ip-masq=false"], False),
        (["--ip-masq=true"], True),
        (["-ip-masq=true", "-ip-masq=false"], False),  # last one wins, as in Go
        (["-ip-masq=1"], True),
        (["-ip-masq=0"], False),
        (["-ip-masq=T"], True),
        (["-ip-masq=F"], False),
        (["--ip-masq=FALSE"], False),
        (["-iptables-forward-rules=false"], False),
    ],
)
def test_every_go_form_of_a_bool_flag(argv: list[str], expected: bool) -> None:
    config = cfg(*argv)
    flag = argv[-1].lstrip("-").split("=")[0]
    assert getattr(config, flag.replace("-", "_")) is expected


def test_values_that_look_like_flags_are_taken_as_values() -> None:
    # Go gives a non-bool flag the next argument, whatever it looks like.
    assert cfg("-etcd-prefix", "-odd").etcd_prefix == "-odd"
    assert cfg("--subnet-file", "--x").subnet_file == "--x"
    assert normalize_argv(["--etcd-password", "-v"]).argv == ("--etcd-password=-v",)


def test_a_value_with_equals_signs_is_kept_whole() -> None:
    assert cfg("-etcd-password=a=b=c", "-etcd-username=u").etcd_password == "a=b=c"


def test_repeatable_and_mixed_forms() -> None:
    config = cfg("-iface", "eth0", "--iface=eth1", "-iface-regex=^en", "--iface-regex", "^wl",
                 "-public-ip=198.51.100.1", "-subnet-lease-renew-margin", "30", "-healthz-port=8471")
    assert config.iface == ("eth0", "eth1")
    assert config.iface_regex == ("^en", "^wl")
    assert config.public_ip == "198.51.100.1"
    assert config.subnet_lease_renew_margin == 30
    assert config.healthz_port == 8471


SAMPLES = {"str": "x", "int": "7", "float": "7", "list": "eth0"}
VALID = {
    "public-ip": "198.51.100.1", "iface-can-reach": "198.51.100.1", "masq-mode": "nftables",
    "log-format": "json", "healthz-ip": "127.0.0.1", "public-ipv6": "2001:db8::1",
    "kube-subnet-mgr": "true", "wireguard-driver": "userspace",
}


COMPANIONS = {  # flags that are only valid together with others
    "etcd-cafile": ["--etcd-certfile=c", "--etcd-keyfile=k"],
    "etcd-certfile": ["--etcd-cafile=a", "--etcd-keyfile=k"],
    "etcd-keyfile": ["--etcd-cafile=a", "--etcd-certfile=c"],
    "etcd-username": ["--etcd-password=p"],
    "etcd-password": ["--etcd-username=u"],
}


def _sample(flag: str, kind: str) -> str:
    return VALID.get(flag, "true" if kind == "bool" else SAMPLES[kind])


def _flag_table() -> list[tuple[str, str]]:
    from flanneld.config import _FLAGS

    return [(flag, kind) for flag, (kind, _) in _FLAGS.items()]


@pytest.mark.parametrize(("flag", "kind"), _flag_table())
def test_every_flag_takes_every_go_form(flag: str, kind: str) -> None:
    value = _sample(flag, kind)
    forms = [[f"-{flag}={value}"], [f"--{flag}={value}"]]
    if kind != "bool":
        forms += [[f"-{flag}", value], [f"--{flag}", value]]
    else:
        forms += [[f"-{flag}"], [f"--{flag}"]]
    extra = COMPANIONS.get(flag, [])
    configs = {cfg(*extra, *form) for form in forms}
    assert len(configs) == 1, forms


def test_config_file_flag_in_go_form() -> None:
    seen: list[str] = []

    def read(path: str) -> str:
        seen.append(path)
        return "ip-masq: true\n"

    assert build_config(["-config=/etc/f.yaml"], {}, read).ip_masq is True
    assert build_config(["-config", "/etc/g.yaml"], {}, read).ip_masq is True
    assert seen == ["/etc/f.yaml", "/etc/g.yaml"]


def test_precedence_is_unchanged_with_go_forms() -> None:
    env = {"FLANNELD_ETCD_PREFIX": "/env", "FLANNELD_IP_MASQ": "true", "FLANNELD_SUBNET_FILE": "/env.env"}
    config = cfg("-etcd-prefix=/flag", "-ip-masq=false", env=env)
    assert config.etcd_prefix == "/flag"  # flag beats env
    assert config.ip_masq is False
    assert config.subnet_file == "/env.env"  # env beats default


def test_bare_bool_never_takes_the_next_argument(no_daemon: None, capsys: pytest.CaptureFixture[str]) -> None:
    # Go: `-ip-masq false` is -ip-masq (true) and a positional "false".  We refuse it.
    with pytest.raises(ConfigError, match=r"-ip-masq=false"):
        normalize_argv(["-ip-masq", "false"])
    code, _, err = run_main(["--etcd-endpoints", EP, "--ip-masq", "false"], capsys)
    assert code == 2
    assert "'false'" in err and "--ip-masq=false" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.parametrize("argv", [["stray"], ["--ip-masq", "--", "x"], ["-"]])
def test_positional_arguments_are_usage_errors(
    argv: list[str], no_daemon: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2 and "positional" in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("argv", [["-etcd-endpoints"], ["--iface"], ["-vmodule"]])
def test_missing_value(argv: list[str], no_daemon: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2
    assert "flag needs an argument" in err and argv[0] in err


# ---------------------------------------------------------------- -h, -v, -vv, klog's -v


@pytest.mark.parametrize("argv", [["-h"], ["--help"], ["-help"], ["--h"]])
def test_help_forms(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(argv, capsys)
    assert code == 0
    assert "usage: flanneld" in out
    for word in ("-etcd-endpoints=URL", "-vv", "--v=N", "klog", "--kube-subnet-mgr"):
        assert word in out, word


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        ([], 0), (["-v"], 1), (["-vv"], 2), (["-v", "-v"], 2), (["--verbose"], 1),
        (["--v=0"], 0), (["--v=1"], 0), (["--v=2"], 1), (["-v=4"], 1), (["-v=5"], 2),
        (["--v", "2"], 1), (["-v", "3"], 1), (["-v", "10"], 2), (["-v", "0"], 0),
        (["--v=2", "-vv"], 2), (["-v", "-etcd-prefix=/p"], 1),
    ],
)
def test_verbosity_forms(argv: list[str], verbose: int) -> None:
    assert cfg(*argv).verbose == verbose


def test_klog_mapping_is_documented_and_monotonic() -> None:
    assert [klog_verbosity(n) for n in range(8)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert klog_verbosity(-1) == 0


def test_verbosity_precedence() -> None:
    assert cfg("--v=0", env={"FLANNELD_VERBOSE": "2"}).verbose == 0  # flag beats env
    assert cfg(env={"FLANNELD_V": "5"}).verbose == 2  # Go reads FLANNELD_V too
    assert cfg(env={"FLANNELD_V": "5", "FLANNELD_VERBOSE": "1"}).verbose == 1


def test_bad_klog_level(no_daemon: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["--v=abc"], capsys)
    assert code == 2 and "--v" in err and "integer" in err
    assert len(err.strip().splitlines()) == 1


def test_klog_flags_are_accepted_and_reported_as_ignored() -> None:
    argv = ["--vmodule=daemon=3", "--log_backtrace_at", "main.go:12", "--logtostderr",
            "-logtostderr=false", "--alsologtostderr", "--stderrthreshold", "INFO",
            "-log_dir=/var/log", "--log_file", "/var/log/f.log", "-ip-masq"]
    norm = normalize_argv(argv)
    assert norm.argv == ("--ip-masq=true",)  # every klog value was consumed
    config = cfg(*argv)
    assert config.ip_masq is True
    names = [entry.split()[0] for entry in config.ignored_flags]
    assert names == ["--vmodule", "--log_backtrace_at", "--logtostderr", "--alsologtostderr",
                     "--stderrthreshold", "--log_dir", "--log_file"]
    assert set(names) <= {f"--{n}" for n in IGNORED_KLOG_FLAGS}
    assert cfg().ignored_flags == ()


def test_bad_bool_of_a_klog_flag(no_daemon: None, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_main(["--logtostderr=maybe"], capsys)
    assert code == 2 and "--logtostderr" in err


# ---------------------------------------------------------------- Go flags new here


def test_go_only_flags_have_go_defaults() -> None:
    config = cfg()
    assert config.ip_blackhole_route is False
    assert config.ip_masq_fully_random_disable is False
    assert config.net_config_path == "/etc/kube-flannel/net-conf.json"
    assert config.public_ipv6 == ""
    assert config.kube_subnet_mgr is False
    assert config.kube_api_url == "" and config.kubeconfig_file == ""
    assert config.kube_annotation_prefix == "flannel.alpha.coreos.com"
    assert config.set_node_network_unavailable is True


def test_go_only_flags_are_stored() -> None:
    config = cfg("--ip-blackhole-route", "-ip-masq-fully-random-disable", "-net-config-path=/n.json",
                 "--public-ipv6", "2001:db8::5", "-kube-api-url=https://k:6443",
                 "-kubeconfig-file", "/k.conf", "-kube-annotation-prefix=x.io",
                 "-set-node-network-unavailable=false")
    assert config.ip_blackhole_route is True
    assert config.ip_masq_fully_random_disable is True
    assert config.net_config_path == "/n.json"
    assert config.public_ipv6 == "2001:db8::5"
    assert config.kube_api_url == "https://k:6443" and config.kubeconfig_file == "/k.conf"
    assert config.kube_annotation_prefix == "x.io"
    assert config.set_node_network_unavailable is False
    ignored = " ".join(config.ignored_flags)
    for flag in ("--ip-blackhole-route",
                 "--kube-api-url", "--kubeconfig-file", "--net-config-path"):
        assert flag in ignored, flag
    assert "--ip-masq-fully-random-disable" not in ignored  # honoured: MASQUERADE without random-fully
    assert "--public-ipv6" not in ignored  # honoured: the PublicIPv6 of a dual-stack lease
    assert cfg("--ip-blackhole-route=false").ignored_flags == ()
    assert cfg(env={"FLANNELD_IP_BLACKHOLE_ROUTE": "true"}).ip_blackhole_route is True


@pytest.mark.parametrize(
    ("argv", "env"),
    [
        (["--kube-subnet-mgr"], {}), (["-kube-subnet-mgr=true"], {}),
        ([], {"FLANNELD_KUBE_SUBNET_MGR": "true"}),
    ],
)
def test_kube_subnet_mgr_turns_the_kube_flags_on(argv: list[str], env: dict[str, str]) -> None:
    config = cfg(*argv, "--kubeconfig-file=/k", "--net-config-path=/n.json", env=env)
    assert config.kube_subnet_mgr is True
    assert config.ignored_flags == ()  # the kube flags are honoured, not ignored
    assert cfg("-kube-subnet-mgr=false").kube_subnet_mgr is False
    assert cfg("--kubeconfig-file=/k").ignored_flags == ("--kubeconfig-file (Kubernetes mode only)",)


# ---------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("argv", "flag", "words"),
    [
        (["--healthz-ip", "1.2.3.4.5"], "--healthz-ip", "not an IP address"),
        (["-healthz-ip=localhost"], "--healthz-ip", "not an IP address"),
        (["--iface-regex", "["], "--iface-regex", "regular expression"),
        (["--public-ip", "notanip"], "--public-ip", "not an IPv4 address"),
        (["--public-ipv6", "198.51.100.1"], "--public-ipv6", "not an IPv6 address"),
        (["--etcd-timeout", "abc"], "--etcd-timeout", "expected a number"),
        (["--etcd-timeout=nan"], "--etcd-timeout", "positive"),
        (["--etcd-timeout=0"], "--etcd-timeout", "positive"),
        (["--subnet-lease-renew-margin", "-5"], "--subnet-lease-renew-margin", "at least 1"),
        (["--subnet-lease-renew-margin", "0"], "--subnet-lease-renew-margin", "at least 1"),
        (["--healthz-port", "70000"], "--healthz-port", "out of range"),
        (["-healthz-port=-1"], "--healthz-port", "out of range"),
        (["--healthz-port", "http"], "--healthz-port", "expected an integer"),
        (["--iptables-resync", "0"], "--iptables-resync", "at least 1"),
        (["--drift-interval=-1"], "--drift-interval", "positive"),
        (["--resync-interval=inf"], "--resync-interval", "positive"),
        (["--etcd-unreachable-not-ready=-3"], "--etcd-unreachable-not-ready", "negative"),
        (["--subnet-lease-ttl", "1"], "--subnet-lease-ttl", "at least 5"),
        (["-ip-masq=maybe"], "--ip-masq", "expected true or false"),
    ],
)
def test_operator_typos_are_one_line_usage_errors(
    argv: list[str], flag: str, words: str, no_daemon: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["--etcd-endpoints", EP, *argv], capsys)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert flag in lines[0] and words in lines[0], lines[0]


@pytest.mark.parametrize(
    "argv",
    [["--no-such-flag"], ["-foo"], ["-foo=1"], ["--etcd-end=http://x"], ["-etcd-endpointz", "x"],
     ["--verbose=2"], ["---ip-masq"]],
)
def test_unknown_flags_exit_2_in_one_line(
    argv: list[str], no_daemon: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(argv, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and argv[0].split("=")[0] in lines[0], err
    assert "--help" in lines[0]


def test_parser_knows_every_flag() -> None:
    text = build_parser().format_help()
    from flanneld.config import _FLAGS

    for flag in _FLAGS:
        assert f"--{flag}" in text, flag


def test_public_ipv6_is_a_flag_of_this_daemon_not_a_go_only_one() -> None:
    text = " ".join(build_parser().format_help().split())  # argparse wraps the help lines
    go_only = text.index("Go flanneld flags whose feature is not here yet")
    where = text.index("--public-ipv6 PUBLIC_IPV6", text.index("options:"))  # not the usage line
    assert where < go_only, "--public-ipv6 is listed with the flags whose feature is not here"
    help_text = text[where:text.index("--", where + 2)]
    assert "dual stack" in help_text and "not supported" not in help_text, help_text


# ---------------------------------------------------------------- -v vs -vv, ignored-flags line


def _emit_all() -> None:
    # pyroute2 resets its logger to NOTSET when it is imported after our set-up (it is, lazily).
    logging.getLogger("pyroute2").setLevel(logging.NOTSET)
    logging.getLogger("flanneld").debug("daemon debug")
    logging.getLogger("flanneld.backends.vxlan").debug("backend debug")
    logging.getLogger("flanneld").info("daemon info")
    logging.getLogger("pyroute2.netlink.nlsocket").debug("library debug")
    logging.getLogger("pyroute2.ndb").info("library info")
    logging.getLogger("aetcd").debug("etcd client debug")
    logging.getLogger("somelib").debug("other library debug")
    logging.getLogger("pyroute2").warning("library warning")


@pytest.mark.parametrize(
    ("verbosity", "expected"),
    [
        (0, ["daemon info", "library warning"]),
        (1, ["daemon debug", "backend debug", "daemon info", "library warning"]),
        (2, ["daemon debug", "backend debug", "daemon info", "library debug", "library info",
             "etcd client debug", "other library debug", "library warning"]),
    ],
)
def test_v_is_daemon_debug_and_vv_adds_libraries(
    verbosity: int, expected: list[str], restore_logging: None
) -> None:
    buf = io.StringIO()
    setup_logging(verbosity, stream=buf, timestamps=False)
    _emit_all()
    msgs = [line.split('msg="', 1)[1].split('"', 1)[0] for line in buf.getvalue().splitlines()]
    assert msgs == expected
    assert logging.getLogger("flanneld").getEffectiveLevel() == (
        logging.DEBUG if verbosity else logging.INFO)


def test_ignored_flags_make_one_warning_line(restore_logging: None) -> None:
    buf = io.StringIO()
    setup_logging(0, stream=buf, timestamps=False)
    config = cfg("--vmodule=x", "--logtostderr", "--ip-blackhole-route")
    warn_ignored_flags(config.ignored_flags)
    warn_ignored_flags(())  # nothing ignored: nothing logged
    (line,) = buf.getvalue().splitlines()
    assert line.startswith("level=warning logger=flanneld ")
    for flag in ("--vmodule", "--logtostderr", "--ip-blackhole-route", "not implemented yet"):
        assert flag in line
