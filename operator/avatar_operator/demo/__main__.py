"""`python -m avatar_operator.demo`; see `avatar_operator.demo.cli`."""

from __future__ import annotations

import sys

from avatar_operator.demo import cli

sys.exit(cli.main())
