"""Masquerade and forward rules for ``--ip-masq``: flannel's semantics, our own tables.

With P = this node's subnet and N = the Network, flannel's postrouting rules are, in order:
return for packets marked 0x4000/0x4000 (kube-proxy's masquerade mark: kube-proxy handles them);
return P->N; return N->P; return !N->P; masquerade (random-fully) N -> !224.0.0.0/4;
masquerade (random-fully) !N -> N. Forward rules accept -s N and -d N (on by default, for hosts
whose FORWARD policy is DROP).

Two implementations share :class:`MasqConfig` and the :class:`MasqRules` interface:

* :mod:`flanneld.masq_nft`: table ``flannel-ipv4`` / ``flannel-ipv6`` with chains
  ``postrtg`` (nat, srcnat) and ``forward`` (filter), replaced as a whole in one ``nft -f -``
  transaction, so there is never a moment with half the rules.
* :mod:`flanneld.masq_iptables`: flannel's own FLANNEL-POSTRTG / FLANNEL-FWD chains written
  with ``iptables-restore --noflush`` and jumped to from POSTROUTING / FORWARD.

Which one (:func:`choose_masq_backend`): as Go flanneld decides, the network config's
``EnableNFTables`` (absent or false: iptables; true: nftables), so every node of a mixed Go/Python
cluster uses the same firewall; ``--masq-mode=nftables|iptables`` overrides it.  With
``--masq-mode=auto`` only, a node where the configured firewall's tool does not work but the
other one does uses the other one (with a warning) rather than none.  The first ``apply()`` of
what :func:`make_masq_rules` returns also removes the other firewall's flannel rules (left by an
earlier run with the other choice: with an older subnet they would masquerade pod-to-pod
traffic of the new one).

Both are idempotent. ``apply()`` writes the rules for the current config (a new subnet simply
replaces the old rules); ``check()`` compares what the kernel has with what was applied (rules
deleted or edited by someone else are detected); ``ensure()`` is the periodic pass: check, and
re-apply when needed; ``remove()`` deletes everything of ours. Calls are synchronous subprocess
runs of a few milliseconds: from asyncio, use ``await asyncio.to_thread(rules.ensure)``.

The renderers are pure (config -> script text) and covered by golden files.
"""

from __future__ import annotations

import ipaddress
import logging
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from flanneld.errors import FlannelError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
MasqBackend = Literal["auto", "nft", "nftables", "iptables"]
MasqKind = Literal["nft", "iptables"]

log = logging.getLogger("flanneld")

KUBE_PROXY_MARK = 0x4000
MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}


class MasqError(FlannelError):
    """A rule program (nft, iptables-restore) failed; carries its stderr."""


@dataclass(frozen=True, slots=True)
class MasqConfig:
    """What to program for one address family.

    ``ip_masq``: flannel's ``--ip-masq`` postrouting rules; ``forward_rules``: the FORWARD
    accepts for the Network (``--iptables-forward-rules``, default on).
    """

    network: IPNetwork
    subnet: IPNetwork
    ip_masq: bool = True
    forward_rules: bool = True
    random_fully: bool = True

    def __post_init__(self) -> None:
        if self.network.version != self.subnet.version:
            raise ValueError("network and subnet must be of the same address family")
        if not self.subnet.subnet_of(self.network):  # type: ignore[arg-type]
            raise ValueError(f"subnet {self.subnet} is not inside network {self.network}")

    @classmethod
    def parse(
        cls, network: str, subnet: str, *, ip_masq: bool = True, forward_rules: bool = True
    ) -> MasqConfig:
        """From strings; ``subnet`` may be FLANNEL_SUBNET's host form (10.244.1.1/24)."""
        return cls(
            ipaddress.ip_network(network, strict=True),
            ipaddress.ip_interface(subnet).network,
            ip_masq=ip_masq,
            forward_rules=forward_rules,
        )

    @property
    def family(self) -> int:
        return self.network.version

    @property
    def multicast(self) -> IPNetwork:
        return MULTICAST[self.family]

    @property
    def empty(self) -> bool:
        return not (self.ip_masq or self.forward_rules)


class MasqRules(Protocol):
    """The operations the daemon calls, whatever the implementation."""

    name: str

    def apply(self) -> None: ...
    def check(self) -> bool: ...
    def ensure(self) -> bool: ...
    def remove(self) -> None: ...
    def update(self, config: MasqConfig) -> None: ...


Runner = Callable[[Sequence[str], bytes | None], "subprocess.CompletedProcess[bytes]"]


class RulesBase:
    """What both firewalls share: repair by re-applying, and replacement on a config change.

    Subclasses provide ``config``, ``apply()``, ``check()`` and ``remove()``.
    """

    config: MasqConfig
    # The other firewall's rules of ours, removed once after the first successful apply()
    # (set by make_masq_rules).
    stale: MasqRules | None = None

    def apply(self) -> None:
        raise NotImplementedError

    def _remove_stale(self) -> None:
        """Called by apply() once the new rules are in: drop the other firewall's leftovers."""
        stale, self.stale = self.stale, None
        if stale is None:
            return
        try:
            stale.remove()
        except MasqError as exc:
            log.warning("removing the %s masquerade rules of an earlier run failed: %s", stale.name, exc)

    def check(self) -> bool:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError

    def ensure(self) -> bool:
        """Periodic pass: re-apply when rules are missing or changed. True if it repaired."""
        if self.check():
            return False
        self.apply()
        return True

    def update(self, config: MasqConfig) -> None:
        """New subnet or network: the re-rendered rules replace the old ones."""
        if config.family != self.config.family:
            self.remove()
        self.config = config
        self.apply()


def command_runner(netns: str | None = None, timeout: float = 30.0) -> Runner:
    """Runs rule programs, in named network namespace ``netns`` (``ip netns exec``) if given.

    The daemon itself already runs in its node's namespace and passes None.
    """
    prefix: list[str] = ["ip", "netns", "exec", netns] if netns else []

    def run(argv: Sequence[str], stdin: bytes | None) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                [*prefix, *argv],
                input=stdin,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except FileNotFoundError:  # like a shell: exit 127, so run_checked says MasqError
            return subprocess.CompletedProcess([*prefix, *argv], 127, b"", f"{argv[0]}: not found".encode())

    return run


def run_checked(run: Runner, argv: Sequence[str], stdin: bytes | None = None) -> bytes:
    proc = run(argv, stdin)
    if proc.returncode != 0:
        raise MasqError(f"{' '.join(argv)} failed ({proc.returncode}): {proc.stderr.decode().strip()}")
    return proc.stdout


def nft_available(run: Runner) -> bool:
    """nft is installed and the kernel answers nf_tables requests."""
    if shutil.which("nft") is None:
        return False
    try:
        return run(["nft", "list", "tables"], None).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def iptables_available(family: int = 4) -> bool:
    """iptables-restore and iptables (ip6tables-* for IPv6) are installed."""
    name = "iptables" if family == 4 else "ip6tables"
    return shutil.which(f"{name}-restore") is not None and shutil.which(name) is not None


_TOOL = {"nft": "nftables", "iptables": "iptables"}


@dataclass(frozen=True, slots=True)
class MasqChoice:
    """The firewall for ``--ip-masq`` and why (``reason`` is logged)."""

    kind: MasqKind
    reason: str
    fallback: bool = False  # auto, and the configured firewall's tool does not work here


def choose_masq_backend(
    mode: str, enable_nftables: bool, usable: Callable[[MasqKind], bool] = lambda kind: True
) -> MasqChoice:
    """``--masq-mode`` and the network config's ``EnableNFTables`` -> the firewall.

    ``auto``: nftables when EnableNFTables is true, iptables when it is false or absent (Go
    flanneld's rule); if that one is not ``usable`` here but the other is, the other, marked
    ``fallback``.  ``nftables`` (``nft``) / ``iptables``: that one, whatever the config says.
    """
    said = f"EnableNFTables={'true' if enable_nftables else 'false'}"
    if mode in ("nft", "nftables", "iptables"):
        kind: MasqKind = "iptables" if mode == "iptables" else "nft"
        reason = f"--masq-mode={_TOOL[kind]}"
        if (kind == "nft") != enable_nftables:
            reason += f" overrides {said}"
        return MasqChoice(kind, reason)
    if mode != "auto":
        raise ValueError(f"--masq-mode: expected auto, nftables or iptables, got {mode!r}")
    wanted: MasqKind = "nft" if enable_nftables else "iptables"
    other: MasqKind = "iptables" if enable_nftables else "nft"
    if not usable(wanted) and usable(other):
        return MasqChoice(
            other,
            f"{said} asks for {_TOOL[wanted]}, which does not work here: using {_TOOL[other]}",
            fallback=True,
        )
    return MasqChoice(wanted, said)


def make_masq_rules(
    config: MasqConfig,
    backend: MasqBackend = "auto",
    netns: str | None = None,
    *,
    enable_nftables: bool = False,
) -> MasqRules:
    """The rules object for ``config``, firewall by :func:`choose_masq_backend`.

    ``backend`` is ``--masq-mode`` (auto, nftables or nft, iptables); ``enable_nftables`` the
    network config's ``EnableNFTables`` (``NetworkConfig.enable_nftables``; False when absent).
    The choice is logged.  The returned object's first successful ``apply()`` removes the
    other firewall's flannel rules, if any.
    """
    from flanneld.masq_iptables import IptablesMasq
    from flanneld.masq_nft import NftMasq

    run = command_runner(netns)

    def usable(kind: MasqKind) -> bool:
        return nft_available(run) if kind == "nft" else iptables_available(config.family)

    choice = choose_masq_backend(backend, enable_nftables, usable)
    (log.warning if choice.fallback else log.info)(
        "masquerade rules: %s (%s)", _TOOL[choice.kind], choice.reason
    )
    rules: RulesBase
    if choice.kind == "nft":
        rules = NftMasq(config, run)
        if usable("iptables"):
            rules.stale = IptablesMasq(config, run)
    else:
        rules = IptablesMasq(config, run)
        if usable("nft"):
            rules.stale = NftMasq(config, run)
    return rules
