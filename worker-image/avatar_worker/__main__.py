"""`python -m avatar_worker` is `avatar-worker`."""

from __future__ import annotations

import sys

from avatar_worker.cli import main

sys.exit(main())
