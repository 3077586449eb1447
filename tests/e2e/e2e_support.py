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


def kind_unavailable_reason() -> str | None:
    """Why the suite cannot run on kind here, or None: a tool missing, or Docker not answering."""
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"needs {', '.join(missing)} on the PATH (and a running Docker daemon)"
    try:
        subprocess.run(["docker", "info"], capture_output=True, timeout=20, check=True)
    except (subprocess.SubprocessError, OSError):
        return "the Docker daemon does not answer (`docker info` failed): kind needs it"
    return None


def real_control_plane_reason() -> str | None:
    """Why the suite cannot run on the project's real control plane with Pods as processes
    (`avatar_devtools.realcluster`, process mode), or None."""
    from avatar_devtools.realcluster import fixtures, podnet

    reason = fixtures.skip_reason()
    if reason is not None:
        return reason
    network = podnet.available()
    return None if network.ok else f"Pods need their own network namespaces: {network.reason}"


def real_fleet(name: str) -> dict[str, object]:
    """`kind-config.yaml`'s nodes for the node agent, under kind's names: a control-plane node
    without GPUs and two workers with the same GPU Feature Discovery labels; the images the
    chart names run as this environment's processes."""
    gpu_node = {"gpus": 2, "product": "NVIDIA-H100-80GB-HBM3", "memoryMiB": 81559}
    return {
        "kubelet": {
            "mode": "process",
            "startSeconds": 0.05,
            "podGCSeconds": 5,
            "images": {
                "ghcr.io/avatar-operator/operator": ["python", "-m", "avatar_operator"],
                "ghcr.io/avatar-operator/worker": ["python", "-m", "avatar_worker"],
            },
        },
        "nodes": [
            {"name": f"{name}-control-plane", "gpus": 0, "cpu": "8", "memory": "16Gi"},
            {"name": f"{name}-worker", **gpu_node, "cpu": "8", "memory": "32Gi"},
            {"name": f"{name}-worker2", **gpu_node, "cpu": "8", "memory": "32Gi"},
        ],
    }
