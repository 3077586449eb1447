"""What the end-to-end suite runs: the README's install commands, and the tools they need.

The README's "Install on Kubernetes" section has three bash blocks — install, upgrade,
uninstall — and the suite runs them verbatim (a chart test checks that they parse and that the
install command renders), so the README cannot drift from what is tested.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
SECTION = "## Install on Kubernetes"
KIND_VALUES = "charts/avatar-operator/ci/kind-values.yaml"
MY_VALUES = "my-values.yaml"  # the README's placeholder for the user's own values file
TOOLS = ("docker", "kind", "kubectl", "helm")


class InstallCommands(NamedTuple):
    install: list[str]
    upgrade: list[str]
    uninstall: list[str]


def install_commands(readme: Path = README) -> InstallCommands:
    """The first three bash blocks of the README's install section, one command per line."""
    text = readme.read_text()
    start = text.index(SECTION)
    end = text.find("\n## ", start + len(SECTION))
    section = text[start : end if end != -1 else len(text)]
    blocks = re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL)
    if len(blocks) < 3:
        raise ValueError(f"{SECTION}: expected install, upgrade and uninstall blocks")
    lines = [
        [line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#")]
        for block in blocks[:3]
    ]
    return InstallCommands(*lines)


def unavailable_reason() -> str | None:
    """Why the suite cannot run here, or None: a tool missing, or Docker not answering."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on the PATH (and a running Docker daemon)"
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError):
        return "the Docker daemon does not answer (`docker info` failed): kind needs it"
    return None
