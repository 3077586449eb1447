"""`python -m avatar_devtools.demo`; see `avatar_devtools.demo.cli`."""

from __future__ import annotations

import sys

from avatar_devtools.demo import cli

sys.exit(cli.main())
