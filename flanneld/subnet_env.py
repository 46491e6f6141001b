"""subnet.env and docker options: what flannel tells the rest of the node about its lease.

``/run/flannel/subnet.env`` is read by the flannel CNI plugin (which refuses to run without
FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ, or their IPv6 twins) and by
mk-docker-opts.sh; the docker options file reproduces what mk-docker-opts.sh writes.  Rendering
is pure.

subnet.env follows Go's ``WriteSubnetFile`` (pkg/subnet/subnet.go): FLANNEL_NETWORK and
FLANNEL_SUBNET when IPv4 is enabled, FLANNEL_IPV6_NETWORK and FLANNEL_IPV6_SUBNET when IPv6 is,
then FLANNEL_MTU and FLANNEL_IPMASQ; each subnet is written as its first address with the
prefix length.  Go's mk-docker-opts.sh ignores IPv6; ours adds ``--ipv6`` and
``--fixed-cidr-v6`` when there is an IPv6 subnet, in the script's (sorted) variable order.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Interface, IPv6Network

from flanneld.atomic import write_atomic


@dataclass(frozen=True)
class SubnetEnv:
    """``network``/``subnet`` None: an IPv6-only node; ``ipv6_*`` None: no IPv6 (the two of
    each family are given together)."""

    network: IPv4Network | None
    subnet: IPv4Network | None
    mtu: int
    ipmasq: bool
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None

    def __post_init__(self) -> None:
        if (self.network is None) != (self.subnet is None):
            raise ValueError("SubnetEnv: network and subnet go together")
        if (self.ipv6_network is None) != (self.ipv6_subnet is None):
            raise ValueError("SubnetEnv: ipv6_network and ipv6_subnet go together")
        if self.subnet is None and self.ipv6_subnet is None:
            raise ValueError("SubnetEnv: needs an IPv4 or an IPv6 subnet")

    @property
    def gateway(self) -> IPv4Interface | None:
        """The subnet's first host address with its prefix, e.g. 10.5.72.1/24."""
        if self.subnet is None:
            return None
        return IPv4Interface((int(self.subnet.network_address) + 1, self.subnet.prefixlen))

    @property
    def ipv6_gateway(self) -> IPv6Interface | None:
        """The IPv6 subnet's first address after the network address, e.g. fc00:0:0:5::1/64."""
        if self.ipv6_subnet is None:
            return None
        return IPv6Interface((int(self.ipv6_subnet.network_address) + 1, self.ipv6_subnet.prefixlen))


def render_subnet_env(env: SubnetEnv) -> str:
    lines = []
    if env.network is not None:
        lines.append(f"FLANNEL_NETWORK={env.network}")
        lines.append(f"FLANNEL_SUBNET={env.gateway}")
    if env.ipv6_network is not None:
        lines.append(f"FLANNEL_IPV6_NETWORK={env.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={env.ipv6_gateway}")
    lines.append(f"FLANNEL_MTU={env.mtu}")
    lines.append(f"FLANNEL_IPMASQ={'true' if env.ipmasq else 'false'}")
    return "\n".join(lines) + "\n"


def parse_subnet_env(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        values[key.strip()] = value.strip().strip('"')
    return values


def _read(path: str) -> dict[str, str] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return parse_subnet_env(fh.read())
    except (OSError, UnicodeDecodeError):
        return None


def _v4(raw: str) -> IPv4Network | None:
    try:
        return IPv4Interface(raw).network if raw else None
    except ValueError:
        return None


def _v6(raw: str) -> IPv6Network | None:
    """Like Go's ReadIP6CIDRFromSubnetFile: one CIDR (net.ParseCIDR: with a prefix length, no
    zone; host bits dropped), else nothing."""
    try:
        return IPv6Interface(raw).network if "/" in raw and "%" not in raw else None
    except ValueError:
        return None


def previous_subnet(path: str) -> IPv4Network | None:
    """The subnet recorded by a previous run (FLANNEL_SUBNET), if the file is readable."""
    values = _read(path)
    return _v4(values.get("FLANNEL_SUBNET", "")) if values is not None else None


def previous_subnets(path: str) -> tuple[IPv4Network | None, IPv6Network | None]:
    """Both subnets recorded by a previous run: FLANNEL_SUBNET and FLANNEL_IPV6_SUBNET (each
    None when absent or unreadable), what Go's main.go passes to its subnet manager."""
    values = _read(path)
    if values is None:
        return None, None
    return _v4(values.get("FLANNEL_SUBNET", "")), _v6(values.get("FLANNEL_IPV6_SUBNET", ""))


def render_docker_opts(env: SubnetEnv) -> str:
    """mk-docker-opts.sh output: docker masquerades only when flannel does not.  The options
    come in the script's order, its variables sorted by name (LC_ALL=C)."""
    opts: list[tuple[str, str]] = []
    if env.gateway is not None:
        opts.append(("DOCKER_OPT_BIP", f"--bip={env.gateway}"))
    if env.ipv6_subnet is not None:
        opts.append(("DOCKER_OPT_FIXED_CIDR_V6", f"--fixed-cidr-v6={env.ipv6_subnet}"))
    opts.append(("DOCKER_OPT_IPMASQ", f"--ip-masq={'false' if env.ipmasq else 'true'}"))
    if env.ipv6_subnet is not None:
        opts.append(("DOCKER_OPT_IPV6", "--ipv6"))
    opts.append(("DOCKER_OPT_MTU", f"--mtu={env.mtu}"))
    lines = [f'{name}="{value}"\n' for name, value in opts]
    lines.append('DOCKER_OPTS="' + "".join(f" {value}" for _, value in opts) + '"\n')
    return "".join(lines)


def write_subnet_env(path: str, env: SubnetEnv) -> None:
    write_atomic(path, render_subnet_env(env), mode=0o644)


def write_docker_opts(path: str, env: SubnetEnv) -> None:
    write_atomic(path, render_docker_opts(env), mode=0o644)
