"""Read flanneld's subnet.env exactly as the reference plugin's loadFlannelSubnetEnv does.

Why its own module: both ADD (render the delegate config) and STATUS (is flanneld ready?) read
it, and the parse rules are the reference's: last assignment wins, FLANNEL_NETWORK may be a
comma-separated list (duplicates dropped), subnets are masked to their network, FLANNEL_IPMASQ
is true only when it says exactly "true", and the file is refused if NETWORK, SUBNET, MTU or
IPMASQ (IPv4 or IPv6 flavour) is missing. A value that does not parse fails with the reference's
own text (Go's `invalid CIDR address: X`, `strconv.ParseUint: parsing "X": ...`, unprefixed, as
flannel.go's loadFlannelSubnetEnv returns it); which file and variable go in `details`.
"""

from __future__ import annotations

import posix

from flanneld.cni import cidr


class SubnetEnvError(Exception):
    """`incomplete` is True when the file is absent or lacks a variable (flanneld not ready);
    `details` names the file and variable of a value that does not parse."""

    def __init__(self, msg: str, incomplete: bool, details: str = "") -> None:
        super().__init__(msg)
        self.incomplete = incomplete
        self.details = details


class SubnetEnv:
    """The four (six with IPv6) facts the plugin takes from flanneld."""

    __slots__ = ("ip6_networks", "ip6_subnet", "ipmasq", "mtu", "networks", "subnet")

    def __init__(self) -> None:
        self.networks: list[str] = []
        self.subnet: str | None = None
        self.ip6_networks: list[str] = []
        self.ip6_subnet: str | None = None
        self.mtu: int | None = None
        self.ipmasq: bool | None = None

    def missing(self) -> list[str]:
        names: list[str] = []
        if not self.networks and not self.ip6_networks:
            names += ["FLANNEL_NETWORK", "FLANNEL_IPV6_NETWORK"]
        if self.subnet is None and self.ip6_subnet is None:
            names += ["FLANNEL_SUBNET", "FLANNEL_IPV6_SUBNET"]
        if self.mtu is None:
            names.append("FLANNEL_MTU")
        if self.ipmasq is None:
            names.append("FLANNEL_IPMASQ")
        return names


def _networks(value: str) -> list[str]:
    out: list[str] = []
    for item in value.split(","):
        net = cidr.network(item)
        if net not in out:
            out.append(net)
    return out


def parse(text: str, filename: str) -> SubnetEnv:
    env = SubnetEnv()
    for line in text.split("\n"):
        key, sep, value = line.removesuffix("\r").partition("=")
        if key not in _KNOWN:
            continue
        try:
            if not sep:
                raise ValueError(f"{key} has no value")
            if key == "FLANNEL_NETWORK":
                env.networks = _networks(value)
            elif key == "FLANNEL_IPV6_NETWORK":
                env.ip6_networks = _networks(value)
            elif key == "FLANNEL_SUBNET":
                env.subnet = cidr.network(value)
            elif key == "FLANNEL_IPV6_SUBNET":
                env.ip6_subnet = cidr.network(value)
            elif key == "FLANNEL_MTU":
                if not (value.isdigit() and value.isascii()):
                    raise ValueError(f'strconv.ParseUint: parsing "{value}": invalid syntax')
                digits = value.lstrip("0")
                if len(digits) > 10 or int(digits or "0") >= 1 << 32:
                    raise ValueError(f'strconv.ParseUint: parsing "{value}": value out of range')
                env.mtu = int(value)
            else:
                env.ipmasq = value == "true"
        except ValueError as exc:
            raise SubnetEnvError(
                str(exc), incomplete=False, details=f"{filename}: {key}"
            ) from None
    missing = env.missing()
    if missing:
        raise SubnetEnvError(f"{filename} is missing {', '.join(missing)}", incomplete=True)
    return env


_KNOWN = frozenset(
    {
        "FLANNEL_NETWORK",
        "FLANNEL_SUBNET",
        "FLANNEL_IPV6_NETWORK",
        "FLANNEL_IPV6_SUBNET",
        "FLANNEL_MTU",
        "FLANNEL_IPMASQ",
    }
)


def read_file(path: str) -> bytes:
    fd = posix.open(path, posix.O_RDONLY | posix.O_CLOEXEC)
    try:
        chunks: list[bytes] = []
        while chunk := posix.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        posix.close(fd)


def load(path: str) -> SubnetEnv:
    try:
        data = read_file(path)
    except FileNotFoundError:
        raise SubnetEnvError(f"open {path}: no such file or directory", incomplete=True) from None
    except OSError as exc:
        raise SubnetEnvError(f"open {path}: {exc.strerror}", incomplete=False) from None
    return parse(data.decode("utf-8", "replace"), path)
