"""The iptables fallback of ``--ip-masq``: flannel's own FLANNEL-POSTRTG / FLANNEL-FWD chains.

Used when nft is unavailable or chosen by flag. The rules are exactly Go flannel's (same chain
names, same ``flanneld masq`` / ``flanneld forward`` comments), so a node switching between Go
flanneld and us finds its own rules. The chain contents are written with one
``iptables-restore --noflush`` (the declared chains are flushed and refilled in one commit, other
chains untouched); the jump from POSTROUTING / FORWARD is inserted at position 1 when missing.

``check`` compares the lines of ``iptables-save`` that mention our chains with what they were
right after applying; ``remove`` deletes the jumps, then flushes and deletes the chains.
"""

from __future__ import annotations

from flanneld.masq import KUBE_PROXY_MARK, MasqConfig, RulesBase, Runner, command_runner, run_checked

POSTRTG = "FLANNEL-POSTRTG"
FWD = "FLANNEL-FWD"
MASQ_COMMENT = "flanneld masq"
FWD_COMMENT = "flanneld forward"

# (table, hook chain, our chain, comment)
_PARTS = (("nat", "POSTROUTING", POSTRTG, MASQ_COMMENT), ("filter", "FORWARD", FWD, FWD_COMMENT))


def jump_rule(chain: str) -> list[str]:
    comment = MASQ_COMMENT if chain == POSTRTG else FWD_COMMENT
    return ["-m", "comment", "--comment", comment, "-j", chain]


def render_restore(config: MasqConfig) -> str:
    """The ``iptables-restore --noflush`` input for the enabled parts of ``config``."""
    n, p, mc = config.network, config.subnet, config.multicast
    masq = f'-m comment --comment "{MASQ_COMMENT}"'
    fwd = f'-m comment --comment "{FWD_COMMENT}"'
    fully = " --random-fully" if config.random_fully else ""
    mark = f"0x{KUBE_PROXY_MARK:x}/0x{KUBE_PROXY_MARK:x}"
    out: list[str] = []
    if config.ip_masq:
        out += [
            "*nat",
            f":{POSTRTG} - [0:0]",
            f"-F {POSTRTG}",
            f"-A {POSTRTG} -m mark --mark {mark} {masq} -j RETURN",
            f"-A {POSTRTG} -s {p} -d {n} {masq} -j RETURN",
            f"-A {POSTRTG} -s {n} -d {p} {masq} -j RETURN",
            f"-A {POSTRTG} ! -s {n} -d {p} {masq} -j RETURN",
            f"-A {POSTRTG} -s {n} ! -d {mc} {masq} -j MASQUERADE{fully}",
            f"-A {POSTRTG} ! -s {n} -d {n} {masq} -j MASQUERADE{fully}",
            "COMMIT",
        ]
    if config.forward_rules:
        out += [
            "*filter",
            f":{FWD} - [0:0]",
            f"-F {FWD}",
            f"-A {FWD} -s {n} {fwd} -j ACCEPT",
            f"-A {FWD} -d {n} {fwd} -j ACCEPT",
            "COMMIT",
        ]
    return "\n".join(out) + "\n" if out else ""


class IptablesMasq(RulesBase):
    """``--ip-masq`` rules as flannel's iptables chains. See the module docstring."""

    name = "iptables"

    def __init__(self, config: MasqConfig, run: Runner | None = None, *, iptables: str = "iptables") -> None:
        self.config = config
        self._run = run or command_runner()
        self._iptables = iptables
        self._applied: str | None = None

    @property
    def _bin(self) -> str:
        if self.config.family == 6:
            return self._iptables.replace("iptables", "ip6tables", 1)
        return self._iptables

    def _enabled(self, chain: str) -> bool:
        return self.config.ip_masq if chain == POSTRTG else self.config.forward_rules

    def _ours(self) -> str:
        """The iptables-save lines that concern our chains (counters stripped)."""
        lines: list[str] = []
        for table, _hook, chain, _comment in _PARTS:
            proc = self._run([f"{self._bin}-save", "-t", table], None)
            if proc.returncode != 0:
                continue  # table not there (nothing of ours either)
            for line in proc.stdout.decode().splitlines():
                if chain in line:
                    lines.append(f"{table} {line.split(' [', 1)[0]}")
        return "\n".join(lines)

    def _has_jump(self, table: str, hook: str, chain: str) -> bool:
        argv = [self._bin, "-w", "5", "-t", table, "-C", hook, *jump_rule(chain)]
        return self._run(argv, None).returncode == 0

    def apply(self) -> None:
        script = render_restore(self.config)
        if script:
            run_checked(self._run, [f"{self._bin}-restore", "-w", "5", "--noflush"], script.encode())
        for table, hook, chain, _comment in _PARTS:
            if self._enabled(chain):
                if not self._has_jump(table, hook, chain):
                    run_checked(
                        self._run,
                        [self._bin, "-w", "5", "-t", table, "-I", hook, "1", *jump_rule(chain)],
                    )
            else:
                self._remove_part(table, hook, chain)
        self._applied = self._ours()
        self._remove_stale()

    def check(self) -> bool:
        if self.config.empty:
            return self._ours() == ""
        return self._applied is not None and self._ours() == self._applied

    def _remove_part(self, table: str, hook: str, chain: str) -> None:
        base = [self._bin, "-w", "5", "-t", table]
        for _ in range(100):  # every copy of the jump, however many someone added
            if self._run([*base, "-D", hook, *jump_rule(chain)], None).returncode != 0:
                break
        if self._run([*base, "-F", chain], None).returncode == 0:
            run_checked(self._run, [*base, "-X", chain])

    def remove(self) -> None:
        for table, hook, chain, _comment in _PARTS:
            self._remove_part(table, hook, chain)
        self._applied = None
