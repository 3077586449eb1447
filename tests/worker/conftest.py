"""Fixtures for the worker's tests; the builders live in `worker_support`."""

from __future__ import annotations

import sys
from pathlib import Path

# The helpers module sits beside this file; make it importable under every import mode.
sys.path.insert(0, str(Path(__file__).parent))
