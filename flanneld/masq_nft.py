"""The nftables implementation of ``--ip-masq``: one table of ours, replaced atomically.

Table ``ip flannel-ipv4`` (``ip6 flannel-ipv6``), flannel's names, with base chains ``postrtg``
(nat, postrouting, srcnat) and ``forward`` (filter, forward). The whole table is rewritten in
one ``nft -f -`` transaction: ``add table`` (so the next command cannot fail), ``delete table``,
then the full table. A subnet change therefore leaves no stale rule behind, and no packet ever
sees half a ruleset.

Detecting tampering: right after applying, the kernel's listing of the table is kept; ``check``
lists it again and compares. A deleted table, a flushed chain or an edited rule all differ.

Caveat (documented in docs/operations.md): an nft ``accept`` ends evaluation in *this* base
chain only. If another table (e.g. iptables-nft with docker's FORWARD policy DROP) drops, the
packet is dropped anyway; on such hosts use the iptables implementation for forward rules.
"""

from __future__ import annotations

from flanneld.masq import KUBE_PROXY_MARK, MasqConfig, RulesBase, Runner, command_runner, run_checked


def table_ref(config: MasqConfig) -> tuple[str, str]:
    """(nft family, table name)."""
    return ("ip", "flannel-ipv4") if config.family == 4 else ("ip6", "flannel-ipv6")


def render_table(config: MasqConfig) -> str:
    """The table definition (nft syntax), without the replace preamble."""
    family, name = table_ref(config)
    a = "ip" if config.family == 4 else "ip6"
    n, p, mc = config.network, config.subnet, config.multicast
    fully = " fully-random" if config.random_fully else ""
    lines = [f"table {family} {name} {{"]
    if config.ip_masq:
        lines += [
            "\tchain postrtg {",
            "\t\ttype nat hook postrouting priority srcnat; policy accept;",
            f"\t\tmeta mark & 0x{KUBE_PROXY_MARK:08x} == 0x{KUBE_PROXY_MARK:08x} return",
            f"\t\t{a} saddr {p} {a} daddr {n} return",
            f"\t\t{a} saddr {n} {a} daddr {p} return",
            f"\t\t{a} saddr != {n} {a} daddr {p} return",
            f"\t\t{a} saddr {n} {a} daddr != {mc} masquerade{fully}",
            f"\t\t{a} saddr != {n} {a} daddr {n} masquerade{fully}",
            "\t}",
        ]
    if config.forward_rules:
        lines += [
            "\tchain forward {",
            "\t\ttype filter hook forward priority filter; policy accept;",
            f"\t\t{a} saddr {n} accept",
            f"\t\t{a} daddr {n} accept",
            "\t}",
        ]
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_replace(config: MasqConfig) -> str:
    """The whole ``nft -f -`` script: replace our table atomically (or just delete it when
    nothing is enabled). ``add`` first makes ``delete`` valid when the table is absent."""
    family, name = table_ref(config)
    script = f"add table {family} {name}\ndelete table {family} {name}\n"
    if not config.empty:
        script += render_table(config)
    return script


class NftMasq(RulesBase):
    """``--ip-masq`` rules in our own nftables table. See the module docstring."""

    name = "nft"

    def __init__(self, config: MasqConfig, run: Runner | None = None) -> None:
        self.config = config
        self._run = run or command_runner()
        self._applied: str | None = None

    def _list(self) -> str | None:
        family, name = table_ref(self.config)
        proc = self._run(["nft", "list", "table", family, name], None)
        return proc.stdout.decode() if proc.returncode == 0 else None

    def apply(self) -> None:
        """Replace the table with the rules for the current config, in one transaction."""
        run_checked(self._run, ["nft", "-f", "-"], render_replace(self.config).encode())
        self._applied = self._list()
        self._remove_stale()

    def check(self) -> bool:
        """True if the kernel still has exactly what :meth:`apply` installed."""
        if self.config.empty:
            return self._list() is None
        if self._applied is None:
            return False
        return self._list() == self._applied

    def remove(self) -> None:
        family, name = table_ref(self.config)
        run_checked(
            self._run,
            ["nft", "-f", "-"],
            f"add table {family} {name}\ndelete table {family} {name}\n".encode(),
        )
        self._applied = None
