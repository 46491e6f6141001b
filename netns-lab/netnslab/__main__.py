"""Entry point for ``python -m netnslab`` (what netns-lab/lab runs)."""

from __future__ import annotations

import sys

from netnslab.cli import main

sys.exit(main())
