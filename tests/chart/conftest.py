"""Fixtures for the chart's tests; the helpers live in `chart_support`."""

from __future__ import annotations

import sys
from pathlib import Path

# The helpers module sits beside this file (and the README's install commands are parsed by the
# e2e suite's helpers): make both importable under every import mode.
sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "e2e"))
