"""`import avatar_sdk` and its contract modules must not drag in the heavy stacks."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("kopf", "torch", "av", "videosdk", "kubernetes", "numpy", "aiohttp", "yaml")


def test_contract_imports_pull_only_pydantic_and_pyjwt() -> None:
    code = (
        "import sys\n"
        "import avatar_sdk, avatar_sdk.api, avatar_sdk.protocol, avatar_sdk.credentials\n"
        "import avatar_sdk.workerenv, avatar_sdk.crd, avatar_sdk.pools\n"
        f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "", f"imported: {result.stdout.strip()}"
