"""subnet.env and docker options: what flannel tells the rest of the node about its lease.

``/run/flannel/subnet.env`` is read by the flannel CNI plugin (which refuses to run without
FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ) and by mk-docker-opts.sh;
the docker options file reproduces what mk-docker-opts.sh writes.  Rendering is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network, IPv6Network

from flanneld.atomic import write_atomic


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network
    subnet: IPv4Network
    mtu: int
    ipmasq: bool
    ipv6_network: IPv6Network | None = None
    ipv6_subnet: IPv6Network | None = None

    @property
    def gateway(self) -> IPv4Interface:
        """The subnet's first host address with its prefix, e.g. 10.5.72.1/24."""
        return IPv4Interface((int(self.subnet.network_address) + 1, self.subnet.prefixlen))


def render_subnet_env(env: SubnetEnv) -> str:
    lines = [
        f"FLANNEL_NETWORK={env.network}",
        f"FLANNEL_SUBNET={env.gateway}",
    ]
    if env.ipv6_network is not None and env.ipv6_subnet is not None:
        first6 = env.ipv6_subnet.network_address + 1
        lines.append(f"FLANNEL_IPV6_NETWORK={env.ipv6_network}")
        lines.append(f"FLANNEL_IPV6_SUBNET={first6}/{env.ipv6_subnet.prefixlen}")
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


def previous_subnet(path: str) -> IPv4Network | None:
    """The subnet recorded by a previous run (FLANNEL_SUBNET), if the file is readable."""
    try:
        with open(path, encoding="utf-8") as fh:
            values = parse_subnet_env(fh.read())
    except OSError:
        return None
    raw = values.get("FLANNEL_SUBNET", "")
    try:
        return IPv4Interface(raw).network if raw else None
    except ValueError:
        return None


def render_docker_opts(env: SubnetEnv) -> str:
    """mk-docker-opts.sh output: docker masquerades only when flannel does not."""
    bip = f"--bip={env.gateway}"
    ipmasq = f"--ip-masq={'false' if env.ipmasq else 'true'}"
    mtu = f"--mtu={env.mtu}"
    return (
        f'DOCKER_OPT_BIP="{bip}"\n'
        f'DOCKER_OPT_IPMASQ="{ipmasq}"\n'
        f'DOCKER_OPT_MTU="{mtu}"\n'
        f'DOCKER_OPTS=" {bip} {ipmasq} {mtu}"\n'
    )


def write_subnet_env(path: str, env: SubnetEnv) -> None:
    write_atomic(path, render_subnet_env(env), mode=0o644)


def write_docker_opts(path: str, env: SubnetEnv) -> None:
    write_atomic(path, render_docker_opts(env), mode=0o644)
