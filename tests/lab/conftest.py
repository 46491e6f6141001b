"""Lab-test fixtures: every lab test needs root; labs come from labkit.lab_running."""

from __future__ import annotations

import pytest
from labkit import require_root


@pytest.fixture(scope="session", autouse=True)
def _lab_suite_checks() -> None:
    require_root()
