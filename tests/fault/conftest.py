"""Fault tests drive netns labs through tests/lab/labkit.py: make it importable here."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "lab"))
