"""Daemon config: precedence flag > env > file > default, conversions, clear errors."""

from __future__ import annotations

import pytest

from flanneld.config import DaemonConfig, build_config
from flanneld.errors import ConfigError

pytestmark = pytest.mark.unit


def files(mapping: dict[str, str]):  # type: ignore[no-untyped-def]
    def read(path: str) -> str:
        if path not in mapping:
            raise FileNotFoundError(2, "No such file or directory")
        return mapping[path]

    return read


def test_defaults_follow_go_flanneld() -> None:
    cfg = build_config([], {})
    assert cfg == DaemonConfig()
    assert cfg.etcd_endpoints == "http://127.0.0.1:2379"
    assert cfg.etcd_prefix == "/coreos.com/network"
    assert cfg.subnet_file == "/run/flannel/subnet.env"
    assert cfg.subnet_lease_renew_margin == 60
    assert cfg.healthz_ip == "127.0.0.1"


def test_precedence_flag_over_env_over_file_over_default() -> None:
    yaml_text = "etcd-prefix: /file/prefix\nsubnet_file: /file/subnet.env\nip-masq: true\nhealthz-port: 1\n"
    env = {
        "FLANNELD_CONFIG": "/etc/flanneld.yaml",
        "FLANNELD_SUBNET_FILE": "/env/subnet.env",
        "FLANNELD_HEALTHZ_PORT": "2",
    }
    cfg = build_config(["--healthz-port", "3"], env, files({"/etc/flanneld.yaml": yaml_text}))
    assert cfg.healthz_port == 3  # flag
    assert cfg.subnet_file == "/env/subnet.env"  # env beats file
    assert cfg.etcd_prefix == "/file/prefix"  # file beats default
    assert cfg.ip_masq is True
    assert cfg.etcd_endpoints == "http://127.0.0.1:2379"  # default


def test_bools_lists_and_repeatable_flags() -> None:
    cfg = build_config(["--ip-masq", "--iface", "eth0", "--iface", "eth1,198.18.0.1"], {})
    assert cfg.ip_masq is True
    assert cfg.iface == ("eth0", "eth1", "198.18.0.1")
    cfg = build_config(["--ip-masq=false"], {"FLANNELD_IFACE_REGEX": "^en,^eth"})
    assert cfg.ip_masq is False
    assert cfg.iface_regex == ("^en", "^eth")


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        (["--ip-masq=maybe"], {}, "expected true or false"),
        ([], {"FLANNELD_HEALTHZ_PORT": "http"}, "env healthz-port: expected an integer"),
        (["--etcd-cafile", "/ca.pem"], {}, "missing: --etcd-certfile, --etcd-keyfile"),
        (["--etcd-username", "u"], {}, "go together"),
        (["--public-ip", "1.2.3"], {}, "--public-ip"),
        (["--log-format", "xml"], {}, "--log-format"),
        (["--healthz-port", "70000"], {}, "out of range"),
        ([], {"FLANNELD_HEALTHZ_IP": "1.2.3.4.5"}, "--healthz-ip: not an IP address"),
        ([], {"FLANNELD_IFACE_REGEX": "^en,["}, "--iface-regex: not a valid regular expression '\\['"),
        ([], {"FLANNELD_ETCD_TIMEOUT": "abc"}, "env etcd-timeout: expected a number"),
        ([], {"FLANNELD_IPTABLES_RESYNC": "0"}, "--iptables-resync: must be at least 1"),
        ([], {"FLANNELD_PUBLIC_IPV6": "fe80::1::2"}, "--public-ipv6: not an IPv6 address"),
        ([], {"FLANNELD_V": "two"}, "env FLANNELD_V: expected an integer"),
    ],
)
def test_errors_are_specific(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config(argv, env)


def test_ca_without_client_cert_never_falls_back_to_plain_http() -> None:
    with pytest.raises(ConfigError, match="refusing to fall back to plain http"):
        build_config([], {"FLANNELD_ETCD_CAFILE": "/ca.pem"})


def test_config_file_errors() -> None:
    with pytest.raises(ConfigError, match="No such file"):
        build_config(["--config", "/nope.yaml"], {}, files({}))
    with pytest.raises(ConfigError, match="unknown setting 'etcd-endpoint'"):
        build_config(["--config", "/c"], {}, files({"/c": "etcd-endpoint: x\n"}))
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(["--config", "/c"], {}, files({"/c": "a: [\n"}))
    with pytest.raises(ConfigError, match="mapping"):
        build_config(["--config", "/c"], {}, files({"/c": "- a\n"}))


def test_go_only_settings_from_the_file() -> None:
    text = "ip-blackhole-route: true\nnet_config_path: /n.json\nkube-subnet-mgr: false\n"
    cfg = build_config(["--config", "/c"], {}, files({"/c": text}))
    assert cfg.ip_blackhole_route is True and cfg.net_config_path == "/n.json"
    assert cfg.ignored_flags == ("--ip-blackhole-route (not implemented yet)",
                                 "--net-config-path (Kubernetes mode only)")
    kube = build_config(["--config", "/c"], {},
                        files({"/c": "kube-subnet-mgr: true\nnet-config-path: /n.json\n"}))
    assert kube.kube_subnet_mgr is True and kube.ignored_flags == ()  # honoured in kube mode
    with pytest.raises(ConfigError, match="unknown setting 'ignored-flags'"):
        build_config(["--config", "/c"], {}, files({"/c": "ignored-flags: []\n"}))


def test_public_ipv6_from_flag_env_or_file_is_used_not_ignored() -> None:
    # dual stack: the PublicIPv6 of our lease; once "validated, ignored" (no IPv6), now honoured
    assert build_config(["--public-ipv6", "2001:db8:18::5"], {}).public_ipv6 == "2001:db8:18::5"
    env = build_config([], {"FLANNELD_PUBLIC_IPV6": "2001:db8:18::6"})
    from_file = build_config(["--config", "/c"], {}, files({"/c": "public-ipv6: 2001:db8:18::7\n"}))
    assert (env.public_ipv6, from_file.public_ipv6) == ("2001:db8:18::6", "2001:db8:18::7")
    for cfg in (env, from_file):
        assert cfg.ignored_flags == (), cfg.ignored_flags


def test_usage_errors_exit_2() -> None:
    with pytest.raises(SystemExit) as info:
        build_config(["--no-such-flag"], {})
    assert info.value.code == 2
