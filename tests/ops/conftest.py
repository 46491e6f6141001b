"""Fixtures of the ops tests live in ops_netns (a unique module name, importable by tests)."""

from __future__ import annotations

from ops_netns import make_netns, masq_lab

__all__ = ["make_netns", "masq_lab"]
